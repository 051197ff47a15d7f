"""Channel names come and go without a trace.

A client may name any number of channels, one after another: subscribe and
unsubscribe over ``wsrelay.v1``, long-poll with ``timeout=0``, open and drop
streams. Nothing in a worker, nor in Redis, may grow with the number of
distinct names ever used: once a name's last subscriber or waiter has left,
and the broker's sweep has run, the server is back where it started, while
a bystander is served on time throughout.
"""

from __future__ import annotations

import json
import socket
import struct
import time
import uuid

import gevent
import pytest
import redis
import requests

from tests.support import (
    Bystander,
    handshake_request,
    read_http_head,
    server_frames,
    wait_until,
)

pytestmark = pytest.mark.e2e  # its tests start processes (servers, manage.py) themselves

V1_NAMES = 190_000  # subscribed and unsubscribed over one wsrelay.v1 WebSocket
POLL_NAMES = 10_000  # long-polls with timeout=0 over one keep-alive connection, meanwhile
#: wsrelay.v1 requests sent at once: a worker handles what one socket has sent before it
#: serves another, so the batch bounds the bystander's wait (on a busy 2-core machine).
BATCH = 100
#: Long-polls sent at once. A worker answers pipelined requests of one connection back to
#: back without serving anyone else in between, so a realistic client sends few at once.
PIPELINED = 20
RSS_MARGIN = 16 << 20  # bytes; allocator arenas need not shrink back exactly


def _text_frame(data: bytes) -> bytes:
    """A client text frame masked with the zero key: valid, and no bytes to flip."""
    length = len(data)
    head = bytes([0x81]) + (bytes([0x80 | length]) if length < 126
                            else bytes([0x80 | 126]) + struct.pack("!H", length))
    return head + b"\0\0\0\0" + data


def _request(**fields) -> bytes:
    return _text_frame(json.dumps(fields).encode())


def v1_churn(server, prefix: str, count: int) -> None:
    """Subscribe to and unsubscribe from ``count`` new channels over one wsrelay.v1 socket,
    in batches, each ended by a presence request whose answer says the batch was done."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(handshake_request("/ws", server.port,
                                       **{"Sec-WebSocket-Protocol": "wsrelay.v1"}))
        status, data = read_http_head(sock)
        assert status == 101, status
        for start in range(0, count, BATCH):
            names = [f"{prefix}-{n}" for n in range(start, min(count, start + BATCH))]
            sock.sendall(b"".join(
                _request(type="subscribe", channel=name) + _request(type="unsubscribe",
                                                                    channel=name)
                for name in names
            ) + _request(type="presence", channel=names[-1], ack=start))
            while True:
                envelopes = [json.loads(payload) for opcode, payload in server_frames(data)
                             if opcode == 0x1]
                if any(envelope.get("ack") == start for envelope in envelopes):
                    break
                chunk = sock.recv(65536)
                assert chunk, "the server closed the connection"
                data += chunk
            assert all(envelope["type"] == "ack" for envelope in envelopes), envelopes[:3]
            data = b""


def poll_churn(server, prefix: str, count: int) -> None:
    """Long-poll ``count`` new channels with timeout=0, pipelined over one connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        for start in range(0, count, PIPELINED):
            batch = range(start, min(count, start + PIPELINED))
            sock.sendall(b"".join(
                f"GET /poll/{prefix}-{n}?timeout=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
                for n in batch
            ))
            data = b""
            while data.count(b'"messages":[]') < len(batch):
                chunk = sock.recv(65536)
                assert chunk, "the server closed the connection"
                data += chunk
            assert data.count(b"HTTP/1.1 200 ") == len(batch), data[:300]


def churn(server, prefix: str, v1_names: int, poll_names: int) -> None:
    tasks = [gevent.spawn(v1_churn, server, f"{prefix}-v", v1_names),
             gevent.spawn(poll_churn, server, f"{prefix}-p", poll_names)]
    gevent.joinall(tasks, raise_error=True)


def settled(server) -> dict:
    """/healthz once nothing of the churn is left (the sweep forgets idle channels)."""
    def empty():
        health = server.health()
        return health if (health["subscribers"], health["waiters"], health["channels"],
                          health.get("watched", 0)) == (0, 0, 0, 0) else None

    return wait_until(empty, timeout=10, message=f"state left: {server.health()}")


@pytest.mark.timeout(300)  # about a minute alone on 2 cores; more on a shared machine
def test_two_hundred_thousand_channel_names_leave_nothing_behind(make_server, channel):
    server = make_server(env={"WSRELAY_HISTORY_TTL": "2", "WSRELAY_PING_INTERVAL": "1"},
                         options=("--no-ticker",))
    churn(server, f"{channel}-warmup", 4000, 1000)  # every code path once before the baseline
    settled(server)
    gevent.sleep(2.5)  # the sweep forgets what the warm-up published
    baseline = server.rss()

    with Bystander(server, f"{channel}-bystander") as bystander:
        started = time.monotonic()
        churn(server, channel, V1_NAMES, POLL_NAMES)
        elapsed = time.monotonic() - started
    settled(server)
    gevent.sleep(2.5)
    after = server.rss()
    print(f"\n{V1_NAMES} wsrelay.v1 and {POLL_NAMES} long-poll channel names in {elapsed:.1f} s; "
          f"server RSS: baseline {baseline / 2**20:.1f} MiB, after {after / 2**20:.1f} MiB "
          f"({(after - baseline) / 2**20:+.1f} MiB); bystander: {len(bystander.latencies)} "
          f"messages, p99 {bystander.p99():.3f} s")
    assert after - baseline < RSS_MARGIN
    bystander.assert_served(p99=1.0)
    assert settled(server)["connections"] == 0


def test_unknown_channels_leave_no_key_in_redis(make_server, redis_server, channel):
    """Long-polls, SSE streams and subscriptions of channels that never had a message write
    nothing of them to Redis (presence reports withdraw themselves); only a message does."""
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    server = make_server(env={"WSRELAY_BROKER_URL": redis_server.url,
                              "WSRELAY_REDIS_PREFIX": prefix}, options=("--no-ticker",))
    churn(server, channel, 400, 200)
    for n in range(5):
        with requests.get(f"{server.url}/sse/{channel}-sse-{n}", stream=True,
                          timeout=10) as stream:
            assert next(stream.iter_lines()) == b"retry: 2000"
        with server.ws(f"/ws/{channel}-ws-{n}") as client:
            client.close()
    client = redis.Redis.from_url(redis_server.url)
    try:
        def keys() -> set[bytes]:
            return set(client.scan_iter(f"{prefix}:*"))

        gevent.sleep(2.5)  # presence is reported once a second
        # the relay's own keys, of no channel: its clock and the master it writes to
        own = {f"{prefix}:origin", f"{prefix}:master"}
        wait_until(lambda: {key.decode() for key in keys()} <= own, timeout=5,
                   message=f"keys left: {sorted(keys())[:5]}")
        requests.post(f"{server.url}/publish/{channel}-kept", data="x", timeout=5)
        assert {key.decode() for key in keys()} == own | {
            f"{prefix}:{{{channel}-kept}}:state", f"{prefix}:{{{channel}-kept}}:log"}
    finally:
        client.close()
