"""The WebSocket connection over a real socketpair, with the hub and a memory broker."""

import socket
import time

import gevent
import gevent.event
import gevent.lock
import gevent.socket
import pytest

from tests.support import (
    FakeConnection,
    client_frame,
    live_greenlets,
    server_frames,
    wait_until,
)
from wsrelay.broker import MemoryBroker
from wsrelay.hub import MessageServer, Subscription
from wsrelay.websocket import connection as connection_module
from wsrelay.websocket.connection import State, WebSocketConnection
from wsrelay.websocket.encoders import RAW
from wsrelay.websocket.modes import RawMode
from wsrelay.websocket.protocol import encode_frame
from wsrelay.websocket.upgrade import take_buffered


@pytest.fixture
def hub():
    hub = MessageServer(MemoryBroker(history_size=100, history_ttl=60))
    hub.start()
    yield hub
    for connection in list(hub.connections):
        connection.abort()  # its greenlet ends: the socket is closed under it
    hub.stop()


def raw_mode(channel: str) -> RawMode:
    """Raw relay of ``channel`` with every right and no rate limit."""
    return RawMode(channel, None, may_publish=True, rate=None)


def connect(hub, *, buffer_limit=1 << 20, close_timeout=5.0, rcvbuf=None, channel="c"):
    ours, theirs = socket.socketpair()
    if rcvbuf:
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, rcvbuf)
    connection = WebSocketConnection(
        ours, hub, max_message_size=65536,
        buffer_limit=buffer_limit, close_timeout=close_timeout,
    )
    runner = gevent.spawn(connection.run, raw_mode(channel))
    gevent.sleep(0)
    return connection, theirs, runner


def read_until_close(sock: socket.socket) -> list[tuple[int, bytes]]:
    sock.settimeout(5)
    data = b""
    while not server_frames(data) or server_frames(data)[-1][0] != 0x8:
        chunk = sock.recv(65536)
        assert chunk, "ended without a close frame"
        data += chunk
    return server_frames(data)


def test_messages_in_and_out(hub):
    _connection, peer, runner = connect(hub)
    peer.sendall(client_frame(0x1, b"hello"))
    peer.settimeout(5)
    assert server_frames(peer.recv(100)) == [(0x1, b"hello")]
    peer.sendall(client_frame(0x8, (1000).to_bytes(2, "big")))
    assert read_until_close(peer)[-1] == (0x8, (1000).to_bytes(2, "big"))
    runner.join(5)
    assert runner.dead
    assert hub.counts()["subscribers"] == 0


class OwnSendSocket(gevent.socket.socket):
    """A socket of another kind than gevent's plain one, as a TLS socket is: the bytes it
    wraps are not the stream, so only its own ``send`` may write."""

    sends = 0

    def send(self, data, flags=0, timeout=None):
        OwnSendSocket.sends += 1
        return super().send(data, flags, timeout)


def test_a_socket_of_another_kind_is_written_through_its_own_send(hub):
    ours, peer = socket.socketpair()
    own = OwnSendSocket(fileno=ours.detach())
    connection = WebSocketConnection(own, hub, max_message_size=65536, buffer_limit=1 << 20,
                                     close_timeout=5.0)
    runner = gevent.spawn(connection.run, raw_mode("c"))
    gevent.sleep(0)
    hub.publish("c", "through its own send")
    peer.settimeout(5)
    assert server_frames(peer.recv(100)) == [(0x1, b"through its own send")]
    assert OwnSendSocket.sends >= 1
    connection.abort()
    runner.join(5)


def test_overflow_sends_1013_after_the_frames_that_fit(hub):
    connection, peer, runner = connect(hub, buffer_limit=100_000, rcvbuf=4096)
    sent = [bytes([i]) * 20_000 for i in range(40)]
    for data in sent:
        hub.publish("c", data)
    assert connection.state is State.CLOSING
    assert hub.counts()["subscribers"] == 0, "unsubscribed at once"
    frames = read_until_close(peer)
    data_frames, (opcode, body) = frames[:-1], frames[-1]
    assert data_frames == [(0x2, d) for d in sent[: len(data_frames)]], "whole frames, in order"
    assert len(data_frames) < len(sent)
    assert (opcode, body[:2]) == (0x8, (1013).to_bytes(2, "big"))
    peer.sendall(client_frame(0x8, (1013).to_bytes(2, "big")))
    runner.join(5)
    assert runner.dead


def test_peer_that_never_answers_the_close_is_aborted(hub):
    connection, peer, runner = connect(hub, close_timeout=0.2)
    connection.close(1001, "going away")
    runner.join(5)
    assert runner.dead
    assert connection.state is State.CLOSED
    assert read_until_close(peer)[-1][1][:2] == (1001).to_bytes(2, "big")


def test_reset_peer_is_pruned(hub):
    _connection, peer, runner = connect(hub)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    peer.close()
    runner.join(5)
    assert runner.dead
    assert hub.counts()["subscribers"] == 0
    hub.publish("c", "nobody listens")  # must not raise


def test_frames_the_request_reader_already_buffered_are_read_first(hub):
    """A client may send frames right behind its handshake; the request's reader holds them."""
    ours, peer = socket.socketpair()
    peer.sendall(client_frame(0x1, b"early") + client_frame(0x1, b"bird"))
    rfile = ours.makefile("rb")
    assert rfile.peek(1), "the frames wait in the reader's buffer, not in the socket"
    pending = take_buffered(ours, rfile)
    connection = WebSocketConnection(
        ours, hub, max_message_size=65536, buffer_limit=1 << 20, close_timeout=5.0,
    )
    runner = gevent.spawn(connection.run, raw_mode("c"), None, pending)
    peer.settimeout(5)
    data = b""
    while len(server_frames(data)) < 2:
        data += peer.recv(100)
    assert server_frames(data) == [(0x1, b"early"), (0x1, b"bird")]
    peer.sendall(client_frame(0x1, b"later"))  # and then from the socket itself
    assert server_frames(peer.recv(100)) == [(0x1, b"later")]
    connection.close(1000, "")
    runner.kill()


def test_pongs_a_client_never_reads_are_coalesced_not_queued(hub):
    """A client pinging at full speed without reading costs the server one batch of pongs,
    and the pong to its latest ping still arrives once it reads."""
    connection, peer, runner = connect(hub, rcvbuf=4096)
    pings = b"".join(client_frame(0x9, b"%05d" % n + b"p" * 120) for n in range(3000))
    writer = gevent.spawn(peer.sendall, pings)
    queued = []
    while not writer.dead:
        queued.append(connection.outbox.size)
        gevent.sleep(0.001)
    assert max(queued) < 16 * 1024, "pongs are not queued up"
    peer.settimeout(5)
    data = b""
    while not server_frames(data) or not server_frames(data)[-1][1].startswith(b"02999"):
        data += peer.recv(65536)
    pongs = server_frames(data)
    assert all(opcode == 0xA for opcode, _ in pongs)
    assert len(pongs) < 3000, "pongs still unwritten were replaced by newer ones"
    connection.close(1000, "")
    runner.kill()


def test_the_hubs_heartbeat_reaches_the_client_as_a_ping_frame(hub):
    """The hub only asks; the connection frames the ping (the hub knows no WebSocket)."""
    connection, peer, runner = connect(hub)
    hub.ping_all(time.monotonic())
    peer.settimeout(5)
    assert server_frames(peer.recv(100)) == [(0x9, b"wsrelay")]
    connection.last_seen -= hub.ping_interval + hub.ping_timeout + 1  # silent since
    hub.ping_all(time.monotonic())
    runner.join(5)
    assert runner.dead and connection.state is State.CLOSED


# -- a connection waiting for input in its watcher, with no greenlet ----------------------


def watched(hub, *, close_timeout=5.0, expires=None, channel="c"):
    """A connection as a detached request leaves it: ``run`` returns once it waits for
    input; ``ended`` is set once it has ended."""
    ours, theirs = socket.socketpair()
    ended = gevent.event.Event()
    connection = WebSocketConnection(
        ours, hub, max_message_size=65536, buffer_limit=1 << 20,
        close_timeout=close_timeout, expires=expires,
    )
    connection.run(raw_mode(channel), on_end=ended.set, watch=True)
    theirs.settimeout(5)
    return connection, theirs, ended


def test_idle_connections_hold_no_greenlet_nor_parser_and_still_answer(hub):
    before = live_greenlets()
    pairs = [watched(hub) for _ in range(200)]
    assert live_greenlets() - before < 5, "no greenlet per idle connection"
    for n, (_, peer, _) in enumerate(pairs[:20]):
        peer.sendall(client_frame(0x1, b"%d" % n))
    for _, peer, _ in pairs[:20]:
        frames = []
        while len(frames) < 20:
            frames += server_frames(peer.recv(65536))
        assert sorted(frames) == sorted((0x1, b"%d" % i) for i in range(20))
    wait_until(lambda: live_greenlets() - before < 5, timeout=5,
               message="readers end once the input is answered")
    assert all(connection.session._protocol is None for connection, _, _ in pairs), (
        "once answered, a connection gives its parser back")


def test_an_idle_connection_is_woken_by_a_message(hub):
    connection, peer, ended = watched(hub)
    peer.sendall(client_frame(0x1, b"hello"))
    assert server_frames(peer.recv(100)) == [(0x1, b"hello")]
    assert connection.received == 1 and not ended.is_set()


def test_an_idle_connection_is_woken_by_a_pong_and_kept(hub):
    connection, peer, ended = watched(hub)
    connection.last_seen -= hub.ping_interval + hub.ping_timeout + 1  # silent for too long
    connection.ping()
    hub.flush_pending()
    assert server_frames(peer.recv(100)) == [(0x9, b"wsrelay")]
    peer.sendall(client_frame(0xA, b"wsrelay"))
    wait_until(lambda: connection.last_seen > time.monotonic() - 1, timeout=5)
    hub.ping_all(time.monotonic())
    assert connection.state is State.OPEN and not ended.is_set()


def test_an_idle_connection_is_woken_by_a_close(hub):
    connection, peer, ended = watched(hub)
    peer.sendall(client_frame(0x8, (1000).to_bytes(2, "big")))
    assert read_until_close(peer)[-1] == (0x8, (1000).to_bytes(2, "big"))
    assert ended.wait(5)
    assert connection.state is State.CLOSED and hub.counts() == {
        "connections": 0, "channels": 0, "subscribers": 0, "waiters": 0}
    assert peer.recv(100) == b"", "the server closed TCP"


def test_an_idle_connection_is_closed_when_its_token_expires(hub):
    connection, peer, ended = watched(hub, expires=time.time() + 0.2)
    opcode, body = read_until_close(peer)[-1]
    assert (opcode, body[:2], body[2:]) == (0x8, (1008).to_bytes(2, "big"), b"token expired")
    peer.sendall(client_frame(0x8, (1008).to_bytes(2, "big")))
    assert ended.wait(5) and connection.state is State.CLOSED


def test_an_idle_peer_that_never_answers_the_close_is_aborted(hub):
    connection, peer, ended = watched(hub, close_timeout=0.2)
    connection.close(1001, "going away")
    assert read_until_close(peer)[-1][1][:2] == (1001).to_bytes(2, "big")
    assert ended.wait(5) and connection.state is State.CLOSED
    assert peer.recv(100) == b""


def test_an_idle_peer_that_resets_is_released(hub):
    _connection, peer, ended = watched(hub)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    peer.close()
    assert ended.wait(5)
    assert hub.counts()["subscribers"] == 0


def test_an_idle_connection_dropped_by_the_heartbeat_is_released(hub):
    connection, _peer, ended = watched(hub)
    connection.last_seen -= hub.ping_interval + hub.ping_timeout + 1
    hub.ping_all(time.monotonic())
    assert ended.wait(5) and connection.state is State.CLOSED


class BlockingMode:
    """Raw mode whose subscribing waits for ``go``, as a history read on a busy broker does."""

    def __init__(self, go: gevent.event.Event) -> None:
        self.go, self.started = go, 0
        self.raw = raw_mode("c")

    def start(self, connection):
        self.started += 1
        self.go.wait()
        self.raw.start(connection)

    def receive(self, connection, message):
        self.raw.receive(connection, message)


def test_connections_subscribe_a_few_at_a_time_and_the_rest_wait_their_turn(hub, monkeypatch):
    monkeypatch.setattr(connection_module, "_opening", gevent.lock.BoundedSemaphore(2))
    go = gevent.event.Event()
    mode = BlockingMode(go)
    pairs = [socket.socketpair() for _ in range(5)]
    connections = [WebSocketConnection(ours, hub, max_message_size=65536, buffer_limit=1 << 20,
                                       close_timeout=5.0) for ours, _ in pairs]
    runners = [gevent.spawn(c.run, mode, lambda: None, watch=True) for c in connections]
    gevent.sleep(0.1)
    assert mode.started == 2, "the others wait before reading their history"
    go.set()
    gevent.joinall(runners, timeout=5, raise_error=True)
    assert mode.started == 5 and all(c.state is State.OPEN for c in connections)
    assert hub.counts()["subscribers"] == 5


def test_a_connection_that_waits_too_long_for_its_turn_is_told_to_try_again(hub, monkeypatch):
    monkeypatch.setattr(connection_module, "_opening", gevent.lock.BoundedSemaphore(1))
    monkeypatch.setattr(connection_module, "OPENING_WAIT", 0.1)
    go = gevent.event.Event()
    (first_ours, _first_theirs), (ours, theirs) = socket.socketpair(), socket.socketpair()
    first, late = (WebSocketConnection(sock, hub, max_message_size=65536, buffer_limit=1 << 20,
                                       close_timeout=5.0) for sock in (first_ours, ours))
    blocked = gevent.spawn(first.run, BlockingMode(go), lambda: None, watch=True)
    gevent.sleep(0.01)
    late.run(raw_mode("c"), lambda: ours.sendall(b"101\r\n"), watch=True)
    theirs.settimeout(5)
    assert theirs.recv(5) == b"101\r\n"
    opcode, body = read_until_close(theirs)[-1]
    assert (opcode, body[:2]) == (0x8, (1013).to_bytes(2, "big"))
    go.set()
    blocked.join(5)


def read_frames(sock: socket.socket, count: int, timeout: float) -> list[tuple[int, bytes]]:
    """The first ``count`` frames the server sends on ``sock``, waiting ``timeout`` at most."""
    sock.settimeout(timeout)
    data = b""
    while len(server_frames(data)) < count:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    return server_frames(data)


def test_a_burst_from_one_client_reaches_an_idle_subscriber_in_one_write():
    """A client's burst is fanned out before the next write pass: each idle subscriber gets
    all of it in one write once it is handled, not its first frames at once and the rest a
    window later (here the window is a second; the burst takes milliseconds)."""
    hub = MessageServer(MemoryBroker(history_size=1000, history_ttl=60), write_delay=1.0)
    hub.start()
    try:
        subscribers = [connect(hub) for _ in range(20)]
        _publisher, peer, _runner = subscribers[0]
        burst = [b"m%03d" % n for n in range(300)]
        writes = hub.stats.writes
        started = time.monotonic()
        peer.sendall(b"".join(client_frame(0x1, text) for text in burst))
        for _connection, theirs, _runner in subscribers:
            assert read_frames(theirs, 300, 5) == [(0x1, text) for text in burst]
        assert time.monotonic() - started < 0.6, "the rest did not wait for the window"
        assert hub.stats.writes - writes == len(subscribers), "one write each"
    finally:
        for connection, _peer, runner in subscribers:
            connection.abort()
            runner.join(5)
        hub.stop()


def test_a_burst_read_at_once_is_queued_on_each_subscriber_in_a_few_pieces(hub, monkeypatch):
    """What one read of a client holds is fanned out in pieces of many messages: each
    subscriber is handed a few joined pieces, not one per message (that was most of a
    burst's cost), and they hold every message in order. (A turn of 0.1 s: on a busy
    machine a turn of 1 ms could end after a few messages.)"""
    monkeypatch.setattr(connection_module, "TURN", 0.1)
    _publisher, peer, _runner = connect(hub)
    subscribers = [FakeConnection(f"s{n}") for n in range(20)]
    for subscriber in subscribers:
        hub.subscribe(Subscription(subscriber, "c", RAW), None)
    burst = [b"m%03d" % n for n in range(300)]
    peer.sendall(b"".join(client_frame(0x1, text) for text in burst))
    expected = b"".join(encode_frame(text, binary=False) for text in burst)
    wait_until(lambda: all(len(b"".join(s.frames)) == len(expected) for s in subscribers), 5)
    for subscriber in subscribers:
        assert b"".join(subscriber.frames) == expected
        assert len(subscriber.frames) <= 10, "at least 30 messages a piece, not one each"
        assert subscriber.sent == 300


def test_what_a_client_publishes_before_its_close_is_echoed_before_the_close_frame(hub):
    _connection, peer, runner = connect(hub)
    texts = [b"last words %d" % n for n in range(20)]
    peer.sendall(b"".join(client_frame(0x1, text) for text in texts)
                 + client_frame(0x8, (1000).to_bytes(2, "big")))
    frames = read_until_close(peer)
    assert frames[:-1] == [(0x1, text) for text in texts]
    assert frames[-1] == (0x8, (1000).to_bytes(2, "big"))
    runner.join(5)


def test_pings_are_answered_at_once_while_a_flood_holds_the_writes():
    """While one client floods (its input always pending, so the hub holds its writes for up to
    a second more), another subscriber's ping is still answered at once."""
    hub = MessageServer(MemoryBroker(history_size=1000, history_ttl=60), write_delay=1.0)
    hub.start()
    try:
        flooder, flood_peer, flood_runner = connect(hub)
        other, peer, other_runner = connect(hub)
        frames = b"".join(client_frame(0x1, b"f%05d" % n) for n in range(500))
        stop = gevent.event.Event()

        def flood() -> None:
            while not stop.is_set():
                flood_peer.sendall(frames)
                gevent.sleep(0)

        flooding = [gevent.spawn(flood), gevent.spawn(_drain_forever, flood_peer)]
        gevent.sleep(0.3)  # the flood is under way: the hub holds its write passes
        peer.settimeout(5)
        pinged = time.monotonic()
        peer.sendall(client_frame(0x9, b"are you there"))
        data = b""
        while (0xA, b"are you there") not in server_frames(data):
            data += peer.recv(1 << 20)
        assert time.monotonic() - pinged < 0.5, "the pong waited for the held pass"
        stop.set()
        flooding[0].join(5)
    finally:
        for connection, runner in ((flooder, flood_runner), (other, other_runner)):
            connection.abort()
            runner.join(5)
        hub.stop()


def _drain_forever(sock: socket.socket) -> None:
    """Read and forget what the server sends, until the socket closes."""
    try:
        while sock.recv(1 << 20):
            pass
    except OSError:
        pass
