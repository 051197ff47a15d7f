"""Write batching seen from outside: steady traffic reaches each socket in few writes, a lone
message and control frames are not held back, and ``WSRELAY_WRITE_DELAY=0`` writes each message.

Subscribers are raw sockets that count their reads and time each frame; the
server's ``writes`` counter (``/dashboard/stats``) counts its ``send`` calls.
Timing assertions are wide (a window of seconds against a deadline of one),
so a busy machine does not fail them.
"""

from __future__ import annotations

import contextlib
import socket
import time

import gevent
import pytest
import requests

from tests.support import ServerProcess, client_frame, publish, raw_websocket, wait_until

pytestmark = pytest.mark.e2e


class Reader:
    """A raw WebSocket subscriber reading in a greenlet: its frames, when each arrived, and how
    many reads brought them (frames here are short: a two-byte header)."""

    def __init__(self, sock: socket.socket, rest: bytes) -> None:
        self.sock = sock
        self.frames: list[tuple[int, bytes]] = []
        self.arrived: list[float] = []
        self.reads = 0
        self._buffer = b""
        self._take(rest)
        self._greenlet = gevent.spawn(self._read)

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.sock.recv(65536):
                self.reads += 1
                self._take(data)

    def _take(self, data: bytes) -> None:
        now = time.monotonic()
        buffer = self._buffer + data
        while len(buffer) >= 2 and len(buffer) >= 2 + (length := buffer[1] & 0x7F):
            assert length < 126, "keep test frames short"
            self.frames.append((buffer[0] & 0x0F, buffer[2 : 2 + length]))
            self.arrived.append(now)
            buffer = buffer[2 + length :]
        self._buffer = buffer

    def payloads(self) -> list[bytes]:
        return [payload for opcode, payload in self.frames if opcode == 0x1]

    def wait_for(self, count: int, timeout: float = 10) -> None:
        wait_until(lambda: len(self.payloads()) >= count, timeout,
                   message=f"{len(self.payloads())} of {count} messages arrived")

    def stop(self) -> None:
        self._greenlet.kill()


def process_stats(server: ServerProcess) -> dict:
    return requests.get(f"{server.url}/dashboard/stats", timeout=5).json()["process"]


def steady_stream(server: ServerProcess, channel: str, *, subscribers: int, messages: int,
                  rate: float) -> tuple[list[Reader], int, int]:
    """Publish ``messages`` at ``rate`` per second over a WebSocket to ``subscribers`` raw
    sockets; return the readers once all arrived, the server's writes and deliveries."""
    with contextlib.ExitStack() as stack:
        readers = [Reader(*stack.enter_context(raw_websocket(server.port, f"/ws/{channel}")))
                   for _ in range(subscribers)]
        publisher, _ = stack.enter_context(raw_websocket(server.port, f"/ws/{channel}?echo=0"))
        before = process_stats(server)
        start = time.monotonic()
        for n in range(messages):
            gevent.sleep(max(0.0, start + n / rate - time.monotonic()))
            publisher.sendall(client_frame(0x1, b"%d" % n))
        for reader in readers:
            reader.wait_for(messages)
        after = process_stats(server)
        for reader in readers:
            reader.stop()
            assert reader.payloads() == [b"%d" % n for n in range(messages)]
    return readers, after["writes"] - before["writes"], after["delivered"] - before["delivered"]


def test_a_steady_stream_reaches_each_socket_in_few_writes(make_server, channel):
    """150 messages/s with the default window (30 ms): several messages per write, counted
    by the server and seen in the subscribers' reads; nothing lost, nothing late."""
    server = make_server()
    readers, writes, delivered = steady_stream(server, channel, subscribers=5, messages=150,
                                               rate=150)
    assert delivered == 5 * 150
    assert writes <= delivered / 2, f"{writes} writes for {delivered} deliveries"
    frames = sum(len(reader.frames) for reader in readers)
    reads = sum(reader.reads for reader in readers)
    assert reads <= frames / 2, f"{reads} reads for {frames} frames"


def test_no_write_delay_writes_each_message_on_its_own(make_server, channel):
    """``WSRELAY_WRITE_DELAY=0``: the behaviour before the window, one write per delivery
    (a few may still share one when the publisher's frames arrive together)."""
    server = make_server(env={"WSRELAY_WRITE_DELAY": "0"})
    _readers, writes, delivered = steady_stream(server, channel, subscribers=5, messages=100,
                                                rate=100)
    assert delivered == 5 * 100
    assert writes >= 0.6 * delivered, f"{writes} writes for {delivered} deliveries"


@pytest.fixture
def slow_window_server(make_server) -> ServerProcess:
    """A window of 2 s: whatever it holds back is late by a second or more."""
    return make_server(env={"WSRELAY_WRITE_DELAY": "2"})


def test_a_lone_message_on_an_idle_server_is_not_held_back(slow_window_server, channel):
    server = slow_window_server
    with raw_websocket(server.port, f"/ws/{channel}") as (sock, rest):
        reader = Reader(sock, rest)
        sent = time.monotonic()
        publish(server, channel, "lone")
        reader.wait_for(1)
        assert reader.arrived[0] - sent < 1.0, "the first message after a pause waits for nothing"
        second = time.monotonic()
        publish(server, channel, "next")
        reader.wait_for(2, timeout=10)
        assert reader.arrived[1] - second >= 1.0, "one written just before it: the window holds"
        assert reader.payloads() == [b"lone", b"next"]
        reader.stop()


def test_pongs_and_the_close_frame_are_not_held_back(slow_window_server, channel):
    """While a message waits for the end of its window, a ping is answered at once (the
    waiting message goes with the pong), and so is a close."""
    server = slow_window_server
    with raw_websocket(server.port, f"/ws/{channel}") as (sock, rest):
        reader = Reader(sock, rest)
        publish(server, channel, "first")
        reader.wait_for(1)
        publish(server, channel, "held")
        gevent.sleep(0.2)
        assert reader.payloads() == [b"first"], "held for the window"
        pinged = time.monotonic()
        sock.sendall(client_frame(0x9, b"are you there"))
        wait_until(lambda: (0xA, b"are you there") in reader.frames, 10)
        assert reader.arrived[reader.frames.index((0xA, b"are you there"))] - pinged < 1.0
        publish(server, channel, "held again")
        gevent.sleep(0.2)
        closing = time.monotonic()
        sock.sendall(client_frame(0x8, b"\x03\xe8"))
        wait_until(lambda: any(opcode == 0x8 for opcode, _ in reader.frames), 10)
        closed = next(i for i, (opcode, _) in enumerate(reader.frames) if opcode == 0x8)
        assert reader.arrived[closed] - closing < 1.0
        reader.stop()


def test_a_burst_from_a_websocket_reaches_long_polls_and_sockets_whole_and_in_order(server,
                                                                                    channel):
    """A client's burst is fanned out in runs (one joined piece per WebSocket subscriber); a
    held long-poll, whose answer is JSON with one member per message, gets each message as
    an item of its own: every answer parses and, poll after poll, holds each message once,
    in order."""
    with contextlib.ExitStack() as stack:
        reader = Reader(*stack.enter_context(raw_websocket(server.port, f"/ws/{channel}")))
        publisher, _ = stack.enter_context(raw_websocket(server.port, f"/ws/{channel}?echo=0"))
        since = publish(server, channel, "start")
        held = server.health()["waiters"]
        poll = gevent.spawn(requests.get, f"{server.url}/poll/{channel}",
                            params={"since": since, "timeout": 30}, timeout=40)
        wait_until(lambda: server.health()["waiters"] > held, 10, message="the poll is not held")
        burst = [b"b%03d" % n for n in range(200)]
        publisher.sendall(b"".join(client_frame(0x1, text) for text in burst))
        got: list[str] = []
        answer = poll.get(timeout=40).json()
        while True:
            got += [item["data"] for item in answer["messages"]]
            if len(got) >= len(burst):
                break
            answer = requests.get(f"{server.url}/poll/{channel}", timeout=40,
                                  params={"since": answer["cursor"], "timeout": 10}).json()
        assert got == [text.decode() for text in burst]
        reader.wait_for(1 + len(burst))
        reader.stop()
        assert reader.payloads() == [b"start", *burst]
