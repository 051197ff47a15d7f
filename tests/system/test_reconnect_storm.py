"""A deploy is a reconnect storm: every client of a restarted worker comes back at once,
each with its ``since`` cursor, and each must get exactly what it missed."""

import resource
import signal
import socket
import time

import gevent
import gevent.pool
import pytest

from tests.support import ServerProcess, handshake_request, publish, read_http_head, server_frames

pytestmark = pytest.mark.e2e  # its test starts processes (servers on one Redis) itself

#: Scaled to a shared 2-core machine; `docs/deployment.md` tells of a 10,000-client run.
CLIENTS = 1000
MISSED = 20


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
    """A client that, like ``wsrelay.js``, tries again after a 1013 (the broker did not confirm
    its subscription in time: a loaded machine) and counts how often it had to."""

    retries = 0

    def __init__(self, port: int, path: str) -> None:
        self.port, self.path = port, path

    def open_and_read(self, count: int) -> tuple[socket.socket, list[tuple[int, bytes]]]:
        """Connect; read until ``count`` text frames came, or a close frame that is not 1013."""
        while True:
            sock, rest = connect(self.port, self.path)
            frames = frames_until(sock, rest, lambda f: sum(op == 0x1 for op, _ in f) >= count
                                  or (f and f[-1][0] == 0x8))
            if frames[-1][0] == 0x8 and frames[-1][1][:2] == (1013).to_bytes(2, "big"):
                sock.close()
                Client.retries += 1
                gevent.sleep(0.5)
                continue
            return sock, frames


@pytest.fixture
def many_files():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 3 * CLIENTS:
        pytest.fail(f"this test needs {3 * CLIENTS} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.timeout(600)
def test_every_client_of_a_restarted_server_resumes_at_once_without_loss(
        redis_server, channel, many_files):
    env = {"WSRELAY_BROKER_URL": redis_server.url}
    going, publisher = ServerProcess.serve(env=env), ServerProcess.serve(env=env)
    restarted = None
    pool = gevent.pool.Pool(200)  # as many handshakes in flight as a browser fleet sends
    try:
        clients = pool.map(lambda _: connect(going.port, f"/ws/{channel}"), range(CLIENTS))
        first = publish(publisher, channel, "before")
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

        def resume(_: int) -> list[bytes]:
            sock, frames = Client(restarted.port, f"/ws/{channel}?since={first}").open_and_read(
                MISSED)
            sock.close()
            return [payload for opcode, payload in frames if opcode == 0x1]

        try:
            got = gevent.pool.Pool(CLIENTS).map(resume, range(CLIENTS))  # all at once
        except Exception:
            print(restarted.log()[-6000:])
            raise
        elapsed = time.monotonic() - started
        print(f"\n{CLIENTS} clients resumed {MISSED} missed messages each in {elapsed:.1f} s "
              f"({Client.retries} tries again after a 1013; {len(opening_1013)} while opening)")
        assert all(messages == missed for messages in got), "every client got what it missed"
        assert elapsed < 60
    finally:
        for server in (going, publisher, restarted):
            if server is not None:
                server.stop()
