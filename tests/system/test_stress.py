"""Hostile clients against a real server while legitimate ones keep receiving everything.

For the length of a run, messages are published at a steady pace to a
channel that WebSocket, long-poll and SSE clients follow, while other
clients throw at the same port what the internet throws at a server:
random bytes, truncated and oversized frames, garbage after the upgrade,
oversized headers, slowloris heads, bodies that never come, connections
dropped half-way. Every legitimate client must get every message once and
in order; afterwards the server still serves, holds only the legitimate
subscribers, and its memory is back near where it started.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import time
from collections import Counter

import gevent
import pytest
import requests
from gevent.event import Event

from tests.support import (
    client_frame,
    handshake_request,
    read_http_head,
    server_frames,
    wait_until,
)

pytestmark = pytest.mark.e2e  # its tests start processes (servers, manage.py) themselves

MESSAGES = 300
PACE = 0.03  # seconds between messages: a run of about 10 s
WS_SUBSCRIBERS = 4
IDLE_TIMEOUT = 2.0
RSS_MARGIN = 16 << 20  # bytes; allocator arenas need not shrink back exactly


def connect(server, timeout: float = 5) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def upgrade(server, channel: str) -> socket.socket:
    sock = connect(server)
    sock.sendall(handshake_request(f"/ws/{channel}", server.port))
    status, _rest = read_http_head(sock)
    assert status == 101, status
    return sock


def drain_until_closed(sock: socket.socket, limit: float = 5) -> bytes:
    """Read until the server closes the connection (at most ``limit`` seconds)."""
    sock.settimeout(limit)
    data = b""
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def reset(sock: socket.socket) -> None:
    """Drop a connection the rude way: RST, no FIN, no close frame."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- hostile clients: each returns after one attempt --------------------------------------

def random_bytes(server, channel, rng):
    with connect(server) as sock:
        try:
            sock.sendall(os.urandom(rng.randint(1, 4096)))
        except OSError:
            return  # answered 400 and closed before all of it was sent
        drain_until_closed(sock)


def truncated_frame(server, channel, rng):
    sock = upgrade(server, channel)
    frame = client_frame(rng.choice([0x1, 0x2, 0x9]), os.urandom(rng.randint(0, 300)))
    sock.sendall(frame[: rng.randint(1, len(frame) - 1)])
    gevent.sleep(rng.random() * 0.2)
    reset(sock) if rng.random() < 0.5 else sock.close()


def garbage_after_upgrade(server, channel, rng):
    """Random bytes may happen to be a valid frame: on a channel no legit client follows."""
    with upgrade(server, f"{channel}-garbage") as sock:
        try:
            sock.sendall(os.urandom(rng.randint(1, 2048)))
        except OSError:
            return
        drain_until_closed(sock)


def oversized_frame(server, channel, rng):
    with upgrade(server, channel) as sock:
        sock.sendall(bytes([0x82, 0xFF]) + struct.pack("!Q", rng.choice([2**63, 2**40])) + b"mask")
        frames = server_frames(drain_until_closed(sock))  # relayed messages, then the close
        assert frames and frames[-1][0] == 0x8 and frames[-1][1][:2] == b"\x03\xf1", frames


def oversized_headers(server, channel, rng):
    with connect(server) as sock:
        with contextlib.suppress(OSError):  # closed on us mid-way: the answer still counts
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
                         + b"x" * 80_000
                         + b"\r\n\r\n")
        assert drain_until_closed(sock).startswith(b"HTTP/1.1 431 ")


def endless_body(server, channel, rng):
    with connect(server) as sock:
        sock.sendall(f"POST /publish/{channel} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Content-Type: text/plain"
                     "\r\nContent-Length: 10000000000\r\n\r\n".encode() + b"x" * 1000)
        assert drain_until_closed(sock).startswith(b"HTTP/1.1 413 ")


def connect_and_drop(server, channel, rng):
    sock = connect(server)
    request = handshake_request(f"/ws/{channel}", server.port)
    sock.sendall(request[: rng.randint(0, len(request))])
    reset(sock)


def silent_subscriber(server, channel, rng):
    """Upgrades, never reads, then vanishes: the hub must prune it."""
    sock = upgrade(server, channel)
    gevent.sleep(rng.random())
    reset(sock)


ATTACKS = [random_bytes, truncated_frame, garbage_after_upgrade, oversized_frame,
           oversized_headers, endless_body, connect_and_drop, silent_subscriber]


def slowloris(server, cut: list[float], stop: Event) -> None:
    """Send request heads one header line every half second, never finishing; record how
    long the server let each one go on."""
    while not stop.is_set():
        with connect(server) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            sock.settimeout(0.5)
            while not stop.is_set():
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                    answer = sock.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    answer = b""
                assert answer in (b"",) or answer.startswith(b"HTTP/1.1 408 "), answer
                cut.append(time.monotonic() - started)
                break


# -- legitimate clients -------------------------------------------------------------------

def ws_subscriber(server, channel, release: Event) -> list[str]:
    with server.ws(f"/ws/{channel}") as client:
        got = [client.recv(timeout=20) for _ in range(MESSAGES)]
        release.wait(30)  # stay subscribed until the server's state is checked
    return got


def poll_subscriber(server, channel, ready: Event) -> list[str]:
    url = f"{server.url}/poll/{channel}"
    cursor = requests.get(url, params={"timeout": 0}, timeout=10).json()["cursor"]
    ready.set()
    got: list[str] = []
    with requests.Session() as session:
        while len(got) < MESSAGES:
            page = session.get(url, params={"since": cursor, "timeout": 5}, timeout=10).json()
            assert not page.get("reset"), "the poll client missed messages"
            got += [item["data"] for item in page["messages"]]
            cursor = page["cursor"]
    return got


def sse_subscriber(server, channel, ready: Event) -> list[str]:
    response = requests.get(f"{server.url}/sse/{channel}", stream=True, timeout=(5, 20))
    got: list[str] = []
    try:
        for line in response.iter_lines(chunk_size=None, decode_unicode=True):
            if line == ": connected":
                ready.set()
            elif line.startswith("data: "):
                got.append(line[6:])
                if len(got) == MESSAGES:
                    break
    finally:
        response.close()
    return got


def test_legit_clients_get_everything_while_hostile_ones_attack(make_server, channel):
    server = make_server(env={
        "WSRELAY_HTTP_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
        "WSRELAY_CLOSE_TIMEOUT": "1",
        "WSRELAY_SSE_KEEPALIVE": "1",
    })
    rng = random.Random(6455)
    for attack in ATTACKS:  # warm-up: every code path once before the baseline
        attack(server, f"{channel}-warmup", rng)
    wait_until(lambda: server.health()["subscribers"] == 0)
    gevent.sleep(1)
    baseline, baseline_files = server.rss(), server.open_files()

    ready, release = [Event(), Event()], Event()
    subscribers = [gevent.spawn(ws_subscriber, server, channel, release)
                   for _ in range(WS_SUBSCRIBERS)]
    poller = gevent.spawn(poll_subscriber, server, channel, ready[0])
    streamer = gevent.spawn(sse_subscriber, server, channel, ready[1])
    wait_until(lambda: server.health()["subscribers"] == WS_SUBSCRIBERS)
    assert all(event.wait(10) for event in ready)

    stop = Event()
    done: Counter[str] = Counter()
    failed: list[str] = []

    def attacker(seed: int) -> None:
        local = random.Random(seed)
        while not stop.is_set():
            attack = local.choice(ATTACKS)
            try:
                attack(server, channel, local)
                done[attack.__name__] += 1
            except (AssertionError, OSError) as exc:
                failed.append(f"{attack.__name__}: {exc!r}")

    slow_cut: list[float] = []
    slow = [gevent.spawn(slowloris, server, slow_cut, stop) for _ in range(20)]
    attackers = [gevent.spawn(attacker, seed) for seed in range(8)]
    with requests.Session() as publisher:
        for i in range(MESSAGES):
            response = publisher.post(f"{server.url}/publish/{channel}", data=f"m{i:04d}",
                                      headers={"Content-Type": "text/plain"}, timeout=10)
            assert response.status_code == 200, response.text
            gevent.sleep(PACE)
    stop.set()
    gevent.joinall(attackers + slow, timeout=15, raise_error=True)

    expected = [f"m{i:04d}" for i in range(MESSAGES)]
    for task in [poller, streamer]:
        assert task.get(timeout=30) == expected
    print(f"\nattacks: {sum(done.values())} {dict(done)}; {len(slow_cut)} slowloris heads "
          f"cut after {min(slow_cut, default=0):.1f}-{max(slow_cut, default=0):.1f} s")
    assert not failed, failed[:5]
    assert all(done[attack.__name__] for attack in ATTACKS)
    assert len(slow_cut) >= len(slow), "slowloris heads kept open"
    assert max(slow_cut) < IDLE_TIMEOUT + 1

    # Afterwards: still serving, only legitimate state left, memory back near the start.
    wait_until(lambda: server.health()["subscribers"] == WS_SUBSCRIBERS, timeout=10,
               message="hostile subscribers were not pruned")
    with server.ws(f"/ws/{channel}-after") as client:
        client.send("after the storm")
        assert client.recv(timeout=5) == "after the storm"
    release.set()
    for task in subscribers:
        assert task.get(timeout=30) == expected
    wait_until(lambda: server.health()["subscribers"] == 0, timeout=10)
    wait_until(lambda: server.health()["waiters"] == 0, timeout=10)
    wait_until(lambda: server.open_files() <= baseline_files, timeout=10,
               message=f"sockets left open: {server.open_files()} fds, {baseline_files} before")
    gevent.sleep(2)
    after = server.rss()
    print(f"server RSS: baseline {baseline / 2**20:.1f} MiB, after {after / 2**20:.1f} MiB "
          f"({(after - baseline) / 2**20:+.1f} MiB); open files {baseline_files} before, "
          f"{server.open_files()} after; {MESSAGES} messages to each of {WS_SUBSCRIBERS} "
          "WebSocket, 1 long-poll and 1 SSE client")
    assert server.proc.poll() is None
    assert after - baseline < RSS_MARGIN
