"""A deploy is a reconnect storm: every client of a restarted worker comes back at once,
each with its ``since`` cursor, and each must get exactly what it missed."""

import collections
import os
import random
import resource
import signal
import socket
import time

import gevent
import gevent.pool
import pytest

from tests.support import ServerProcess, handshake_request, publish, read_http_head, server_frames

pytestmark = pytest.mark.e2e  # its test starts processes (servers on one Redis) itself

#: A worker's worth of clients, all back at once (`docs/deployment.md` tells how long it takes);
#: STORM_CLIENTS sets another number.
CLIENTS = int(os.environ.get("STORM_CLIENTS", "10000"))
MISSED = 20
#: Handshakes the clients have in flight while they first connect.
CONNECTING = 500


def frames_until(sock: socket.socket, data: bytes, done) -> list[tuple[int, bytes]]:
    """Read until ``done(frames)``; the frames read, but the server's pings."""
    def frames():
        return [frame for frame in server_frames(data) if frame[0] != 0x9]

    while not done(frames()):
        chunk = sock.recv(65536)
        assert chunk, f"closed after {frames()[-3:]}"
        data += chunk
    return frames()


def connect(port: int, path: str) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    sock.sendall(handshake_request(path, port))
    status, rest = read_http_head(sock)
    assert status == 101, status
    return sock, rest


class Client:
    """A client that, like ``wsrelay.js``, tries again after 0.25-0.5 s when its connection
    fails before the 101 (a storm's handshakes wait in the accept queue of a loaded machine)
    or is closed with 1013 (the broker did not confirm its subscription in time); it counts
    why it had to."""

    retries: collections.Counter[str] = collections.Counter()

    def __init__(self, port: int, path: str) -> None:
        self.port, self.path = port, path

    def open_and_read(self, count: int) -> tuple[socket.socket, list[tuple[int, bytes]]]:
        """Connect; read until ``count`` text frames came, or a close frame that is not 1013."""
        while True:
            try:
                sock, rest = connect(self.port, self.path)
            except (OSError, IndexError) as exc:  # IndexError: closed before any answer
                Client.retries[type(exc).__name__] += 1
                gevent.sleep(random.uniform(0.25, 0.5))
                continue
            frames = frames_until(sock, rest, lambda f: sum(op == 0x1 for op, _ in f) >= count
                                  or (f and f[-1][0] == 0x8))
            if frames[-1][0] == 0x8 and frames[-1][1][:2] == (1013).to_bytes(2, "big"):
                sock.close()
                Client.retries["1013"] += 1
                gevent.sleep(random.uniform(0.25, 0.5))
                continue
            return sock, frames


@pytest.fixture
def many_files():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = CLIENTS + 1000  # the clients' sockets, the servers' are their own
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.fail(f"this test needs {needed} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.timeout(max(600, CLIENTS // 8))
def test_every_client_of_a_restarted_server_resumes_at_once_without_loss(
        redis_server, channel, many_files):
    # the clients read nothing until the server stops, so they answer no ping meanwhile:
    # pings would drop the first of them while the last are still connecting
    env = {"WSRELAY_BROKER_URL": redis_server.url, "WSRELAY_PING_INTERVAL": "600"}
    going, publisher = ServerProcess.serve(env=env), ServerProcess.serve(env=env)
    restarted = None
    pool = gevent.pool.Pool(CONNECTING)
    try:
        started = time.monotonic()
        clients = pool.map(lambda _: connect(going.port, f"/ws/{channel}"), range(CLIENTS))
        connected = time.monotonic() - started
        # one more client of the stopping server: once it has "before", the server has queued
        # it on every socket of the channel, and its drain lets queued messages out before
        # the 1001 (a message still on its way from Redis when the drain starts is not the
        # drain's: a real client resumes from the last id it saw and gets it from history)
        probe, probe_rest = connect(going.port, f"/ws/{channel}")
        first = publish(publisher, channel, "before")
        frames_until(probe, probe_rest, lambda f: any(op == 0x1 for op, _ in f))
        probe.close()
        opening_1013 = []

        def sent_away(client: tuple[socket.socket, bytes]) -> None:
            """Read until the close: 1001 after "before", or a 1013 at once (it resumes too)."""
            sock, rest = client
            frames = frames_until(sock, rest, lambda f: f and f[-1][0] == 0x8)
            code = frames[-1][1][:2]
            if code == (1013).to_bytes(2, "big"):
                opening_1013.append(1)
            else:
                assert frames == [(0x1, b"before"), (0x8, frames[-1][1])]
                assert code == (1001).to_bytes(2, "big")
            sock.close()

        going.signal(signal.SIGTERM)
        gevent.joinall([gevent.spawn(sent_away, client) for client in clients], raise_error=True)
        assert going.proc.wait(30) == 0
        missed = [f"missed {i}".encode() for i in range(MISSED)]
        for data in missed:
            publish(publisher, channel, data.decode())

        restarted = ServerProcess.serve(env=env, port=going.port)  # the deploy's new process
        started = time.monotonic()

        def resume(_: int) -> list[tuple[int, bytes]]:
            sock, frames = Client(restarted.port, f"/ws/{channel}?since={first}").open_and_read(
                MISSED)
            sock.close()
            return frames

        try:
            got = gevent.pool.Pool(CLIENTS).map(resume, range(CLIENTS))  # all at once
        except Exception:
            print(restarted.log()[-6000:])
            raise
        elapsed = time.monotonic() - started
        print(f"\n{CLIENTS} clients connected in {connected:.1f} s, {CONNECTING} at a time; "
              f"all resumed {MISSED} missed messages each in {elapsed:.1f} s "
              f"(tried again: {dict(Client.retries)}; {len(opening_1013)} 1013 while opening)")
        wrong = [frames for frames in got if [p for op, p in frames if op == 0x1] != missed]
        assert not wrong, f"{len(wrong)} clients did not get what they missed: {wrong[0][-3:]}"
        assert elapsed < 0.012 * CLIENTS, "12 ms a client (10,000 took 30 s on a loaded machine)"
    finally:
        for server in (going, publisher, restarted):
            if server is not None:
                server.stop()
