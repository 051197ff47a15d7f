"""Graceful shutdown: clients are sent away with what was queued, and resume elsewhere."""

import http.client
import signal
import socket
import time

import gevent
import pytest
import requests

from tests.support import Closed, EventStream, ServerProcess, publish, wait_until
from wsrelay import create_app
from wsrelay.ids import MessageId

pytestmark = pytest.mark.e2e  # its tests start processes (servers, manage.py) themselves


def ended_cleanly(stream: EventStream, timeout: float = 10) -> bool:
    with gevent.Timeout(timeout, AssertionError("the SSE stream did not end")):
        try:
            while True:
                stream.next(timeout)
        except StopIteration:
            return True




def test_sigterm_closes_websockets_with_1001_after_their_queue(make_server, channel):
    server = make_server()
    client = server.ws(f"/ws/{channel}")
    ids = [publish(server, channel, f"m{i}") for i in range(50)]
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    got = []
    with pytest.raises(Closed) as closed:
        while True:
            got.append(client.recv(timeout=5))
    assert got == [f"m{i}" for i in range(50)], "queued messages go out before the close"
    assert closed.value.code == 1001
    assert server.proc.wait(10) == 0
    assert time.monotonic() - started < 5
    assert len(ids) == 50


@pytest.mark.parametrize("broker", ["memory", "redis"])
def test_sigterm_answers_held_long_polls_and_ends_sse_streams(make_server, channel, broker,
                                                              request):
    """On Redis too: the broker is closed only once they are answered (no 500, no stream
    cut without its end)."""
    env = ({"WSRELAY_BROKER_URL": request.getfixturevalue("redis_server").url}
           if broker == "redis" else {})
    server = make_server(env=env)
    cursor = requests.get(f"{server.url}/poll/{channel}", params={"timeout": 0},
                          timeout=5).json()["cursor"]
    held = gevent.spawn(requests.get, f"{server.url}/poll/{channel}",
                        params={"since": cursor, "timeout": 30}, timeout=30)
    stream = EventStream(f"{server.url}/sse/{channel}")
    stream.wait_connected()
    wait_until(lambda: server.health()["waiters"] == 2)
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    answer = held.get(timeout=10)
    assert answer.status_code == 200
    assert answer.json()["messages"] == [] and "reset" not in answer.json()
    # Still before any message: a channel without one has a cursor of the time it was read.
    assert MessageId.parse(answer.json()["cursor"]) >= MessageId.parse(cursor)
    assert MessageId.parse(answer.json()["cursor"]).seq == 0
    assert ended_cleanly(stream), "the SSE stream ended with its chunked terminator"
    assert server.proc.wait(10) == 0
    assert time.monotonic() - started < 5


def test_clients_resume_on_another_process_without_loss(redis_server, channel):
    env = {"WSRELAY_BROKER_URL": redis_server.url}
    going, staying = ServerProcess.serve(env=env), ServerProcess.serve(env=env)
    try:
        client = going.ws(f"/ws/{channel}")
        first = publish(staying, channel, "before")
        assert client.recv(timeout=5) == "before"
        going.signal(signal.SIGTERM)
        with pytest.raises(Closed) as closed:
            client.recv(timeout=10)
        assert closed.value.code == 1001
        published = [publish(staying, channel, f"while away {i}") for i in range(5)]
        with staying.ws(f"/ws/{channel}?since={first}") as resumed:
            assert [resumed.recv(timeout=5) for _ in range(5)] == [
                f"while away {i}" for i in range(5)]
        assert len(published) == 5
        going.proc.wait(10)
    finally:
        going.stop()
        staying.stop()


def test_gunicorn_graceful_stop_drains_instead_of_waiting(channel):
    server = ServerProcess.gunicorn()  # graceful_timeout is 10 s in gunicorn.conf.py
    try:
        client = server.ws(f"/ws/{channel}")
        publish(server, channel, "last words")
        assert client.recv(timeout=5) == "last words"
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        with pytest.raises(Closed) as closed:
            client.recv(timeout=10)
        assert closed.value.code == 1001
        assert time.monotonic() - started < 5, "drained, not cut at the graceful timeout"
        server.proc.wait(15)
    finally:
        server.stop()


def test_a_draining_relay_refuses_new_clients_and_is_not_ready():
    app = create_app()
    relay = app.extensions["wsrelay"]
    try:
        web = app.test_client()
        assert web.get("/readyz").status_code == 200
        relay.hub.draining = True
        assert web.get("/readyz").status_code == 503
        assert web.get("/readyz").json["status"] == "draining"
        refused = web.get("/poll/x?timeout=0")
        assert refused.status_code == 503 and refused.json["error"] == "shutting_down"
    finally:
        relay.close()


def test_a_peer_that_ignores_the_close_is_cut_at_the_drain_timeout(make_server, channel):
    server = make_server(env={"WSRELAY_DRAIN_TIMEOUT": "1", "WSRELAY_CLOSE_TIMEOUT": "30"})
    from tests.support import handshake_request, read_http_head

    silent = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    silent.sendall(handshake_request(f"/ws/{channel}", server.port))
    assert read_http_head(silent)[0] == 101
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0
    assert time.monotonic() - started < 5
    silent.close()


def idle_keep_alive(server) -> http.client.HTTPConnection:
    """A keep-alive connection that has had its answer and waits for its next request."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", "/healthz")
    response = connection.getresponse()
    assert response.status == 200 and response.read()
    assert response.getheader("Connection") != "close"
    return connection


def test_draining_closes_idle_keep_alive_connections_and_ends_busy_ones(make_server, channel):
    """An idle connection is closed at once; one holding a long-poll gets its answer with
    ``Connection: close``, then is closed too, instead of waiting for a further request."""
    server = make_server(env={"WSRELAY_HTTP_IDLE_TIMEOUT": "30"})
    idle = idle_keep_alive(server)
    busy = idle_keep_alive(server)
    busy.request("GET", f"/poll/{channel}?timeout=30")
    wait_until(lambda: server.health()["waiters"] == 1)
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    answer = busy.getresponse()
    assert answer.status == 200 and answer.getheader("Connection") == "close"
    assert answer.read()
    assert idle.sock.recv(1) == b""
    assert time.monotonic() - started < 2
    assert server.proc.wait(10) == 0
    idle.close()
    busy.close()


def test_a_gunicorn_worker_holding_only_idle_keep_alive_connections_exits_at_once(channel):
    """gunicorn waits for every connection its stopping worker holds: an idle keep-alive
    one used to keep it until the graceful timeout (10 s in gunicorn.conf.py)."""
    server = ServerProcess.gunicorn()
    try:
        connections = [idle_keep_alive(server) for _ in range(3)]
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        for connection in connections:
            assert connection.sock.recv(1) == b""
        closed = time.monotonic() - started
        server.proc.wait(15)
        exited = time.monotonic() - started
        # the unfixed worker waited for the graceful timeout, 10 s
        assert closed < 3, f"idle connections closed after {closed:.2f}s"
        assert exited < 5, f"gunicorn exited after {exited:.2f}s"
        print(f"idle connections closed after {closed * 1000:.0f} ms, gunicorn exited after "
              f"{exited * 1000:.0f} ms")
    finally:
        server.stop()
