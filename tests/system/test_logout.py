"""Logout across workers: a host app wsrelay did not write, under ``gunicorn -w 2 -c
python:wsrelay.gunicorn_conf`` on a real Redis named only in the host's own ``app.config``.
A user connected to both workers over every transport is logged out by a view that runs on
one of them; a bystander on both stays connected and served."""

from __future__ import annotations

import os
import subprocess
import textwrap
import time
from collections import Counter
from pathlib import Path

import gevent
import pytest
import requests

from tests.support import (
    PYTHON,
    EventStream,
    Refused,
    ServerProcess,
    WSClient,
    free_port,
    wait_until,
)

pytestmark = pytest.mark.e2e

STOCK_WORKER = "geventwebsocket.gunicorn.workers.GeventWebSocketWorker"

HOST_APP = textwrap.dedent('''
    """A host app: its users say who they are in ?user= (a page: in its cookie); ?pid=
    asks for one worker (a request, or WebSocket, that reached the other is answered 409)."""
    import os
    from collections import Counter

    import gevent
    from flask import Flask, request

    from wsrelay import Relay

    relay = Relay()


    @relay.identity_hook
    def who(req, claims):
        return req.args.get("user") or req.cookies.get("user")


    def create_app():
        app = Flask(__name__)
        app.config["WSRELAY_BROKER_URL"] = os.environ["HOST_BROKER_URL"]
        relay.init_app(app)
        state = app.extensions["wsrelay"]

        @relay.disconnect_hook
        def left(identity):  # told on the worker that served the connection
            if identity is not None:
                gevent.spawn(state.publish, "audit", f"{identity} left {os.getpid()}")

        @app.before_request
        def on_this_worker():
            if request.args.get("pid", str(os.getpid())) != str(os.getpid()):
                return "another worker", 409

        @app.get("/pid")
        def pid():
            return str(os.getpid())

        @app.get("/clients/<user>")
        def clients(user):
            kinds = Counter(type(client.connection).__name__
                            for client in state.identities.values() if client.identity == user)
            return dict(kinds)

        @app.post("/logout/<user>")
        def logout(user):
            return {"ended": relay.disconnect(user, "logged out")}

        @app.post("/leave/<user>/<channel>")
        def leave(user, channel):
            return {"ended": relay.unsubscribe(user, channel, "left the room")}

        return app
''')


def start(tmp_path: Path, *args: str, env: dict[str, str]) -> ServerProcess:
    """The host app under ``gunicorn -c python:wsrelay.gunicorn_conf ARGS``; no WSRELAY_*
    variable names its broker: its own app.config does."""
    (tmp_path / "host.py").write_text(HOST_APP)
    port = free_port()
    return ServerProcess.start(
        [PYTHON, "-m", "gunicorn", "-c", "python:wsrelay.gunicorn_conf", "-b",
         f"127.0.0.1:{port}", "--chdir", str(tmp_path), *args, "host:create_app()"],
        port, env)


@pytest.fixture
def host(tmp_path, redis_server):
    server = start(tmp_path, "-w", "2", env={"HOST_BROKER_URL": redis_server.url})
    server.pids = worker_pids(server)
    yield server
    server.stop()


def worker_pids(server) -> list[str]:
    """Both workers' pids, each asked on a connection of its own until both answered."""
    seen: set[str] = set()
    wait_until(lambda: seen.add(requests.get(server.url + "/pid", timeout=5).text) or
               len(seen) == 2, 20, interval=0.01, message="one worker answers every request")
    return sorted(seen)


def on(server, pid, attempt, within: float = 30.0):
    """``attempt()`` until it reaches the worker ``pid`` (the other answers 409). The kernel
    may hand many connections in a row to one worker, so try for a while, with pauses that
    let the workers' turns change."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            return attempt()
        except (Refused, Elsewhere):
            gevent.sleep(0.02)
    raise AssertionError(f"never reached worker {pid}")


class Elsewhere(Exception):
    pass


def raw(server, pid, user, channel):
    return on(server, pid, lambda: WSClient(f"{server.ws_url}/ws/{channel}?user={user}&pid={pid}"))


def v1(server, pid, user, *channels):
    def attempt():
        ws = WSClient(f"{server.ws_url}/ws?user={user}&pid={pid}", subprotocols=["wsrelay.v1"])
        for number, channel in enumerate(channels, 1):
            if ws.ask(type="subscribe", channel=channel, ack=number)["type"] != "ack":
                ws.close()
                raise Elsewhere
        return ws
    return on(server, pid, attempt)


def sse(server, pid, user, channel):
    def attempt():
        stream = EventStream(f"{server.url}/sse/{channel}?user={user}&pid={pid}")
        if stream.response.status_code != 200:
            stream.close()
            raise Elsewhere
        stream.wait_connected()
        return stream
    return on(server, pid, attempt)


def poll(server, pid, user, channel):
    """A long-poll held on worker ``pid``: a greenlet, whose value is the answer."""
    def attempt():
        while True:
            answer = requests.get(f"{server.url}/poll/{channel}",
                                  params={"user": user, "pid": pid, "timeout": 60}, timeout=70)
            if answer.status_code != 409:
                return answer
    return gevent.spawn(attempt)


def view(server, pid, method, path):
    """A view of the host run on worker ``pid``."""
    def attempt():
        answer = requests.request(method, f"{server.url}{path}?pid={pid}", timeout=10)
        if answer.status_code == 409:
            raise Elsewhere
        assert answer.ok, answer.text
        return answer.json()
    return on(server, pid, attempt)


def publish(server, channel, data):
    assert requests.post(f"{server.url}/publish/{channel}", data=data, timeout=5).ok


def test_logout_on_one_worker_ends_the_users_connections_on_both(host):
    here, there = host.pids
    audit = v1(host, here, "auditor", "audit")
    ada, bob = {}, {}
    for pid in host.pids:
        ada[pid] = [raw(host, pid, "ada", "user-ada"), v1(host, pid, "ada", "user-ada", "lobby"),
                    sse(host, pid, "ada", "user-ada"), poll(host, pid, "ada", "user-ada")]
        bob[pid] = [raw(host, pid, "bob", "lobby"), v1(host, pid, "bob", "lobby"),
                    sse(host, pid, "bob", "lobby")]
    everything = {"WebSocketConnection": 2, "EventStream": 1, "PollWaiter": 1}
    for pid in host.pids:  # each worker holds every kind of ada's connections
        wait_until(lambda pid=pid: view(host, pid, "GET", "/clients/ada") == everything, 10)

    assert view(host, here, "POST", "/logout/ada") == {"ended": 4}  # this worker's

    for pid in host.pids:
        ws_raw, ws_v1, stream, held = ada[pid]
        assert ws_raw.until_closed() == (1008, "logged out")
        assert ws_v1.until_closed() == (1008, "logged out")
        event = stream.next_event()
        assert (event.type, event.data) == ("error", "logged out")
        with pytest.raises(StopIteration):
            stream.next_event()
        answer = held.get(timeout=10)
        assert (answer.status_code, answer.json()["message"]) == (403, "logged out")
        assert view(host, pid, "GET", "/clients/ada") == {}
    # Each worker's disconnect hook heard of its two WebSockets and its SSE stream.
    left = Counter(audit.envelope("message")["data"] for _ in range(6))
    assert left == {f"ada left {pid}": 3 for pid in host.pids}

    publish(host, "lobby", "bob is still here")
    for pid in host.pids:
        ws_raw, ws_v1, stream = bob[pid]
        assert ws_raw.recv() == "bob is still here"
        assert ws_v1.envelope("message")["data"] == "bob is still here"
        assert stream.next_event().data == "bob is still here"
    for client in [audit, *bob[here], *bob[there]]:
        client.close()


def test_unsubscribe_on_one_worker_ends_that_channel_on_both(host):
    here, _ = host.pids
    ada = {pid: (v1(host, pid, "ada", "user-ada", "lobby"), raw(host, pid, "ada", "user-ada"),
                 raw(host, pid, "ada", "lobby")) for pid in host.pids}

    assert view(host, here, "POST", "/leave/ada/user-ada") == {"ended": 2}

    for pid in host.pids:
        ws_v1, private, lobby = ada[pid]
        assert ws_v1.envelope("unsubscribed") == {
            "type": "unsubscribed", "channel": "user-ada", "reason": "left the room"}
        assert private.until_closed() == (1008, "left the room")
    publish(host, "user-ada", "private")
    publish(host, "lobby", "public")
    for pid in host.pids:
        ws_v1, _, lobby = ada[pid]
        assert ws_v1.envelope("message")["data"] == "public"  # "private" never came
        assert lobby.recv() == "public"
        assert ws_v1.ask(type="subscribe", channel="user-ada", ack=7)["code"] == "refused"
        ws_v1.close()
        lobby.close()


def test_two_stock_workers_of_a_host_app_on_its_own_memory_broker_are_refused(
    tmp_path, redis_server
):
    """The environment names Redis, but the host's own app.config says memory: the workers
    check, once they have loaded the app, reads the app's."""
    (tmp_path / "host.py").write_text(HOST_APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSRELAY_")}
    env.update(WSRELAY_BROKER_URL=redis_server.url, HOST_BROKER_URL="memory://",
               PYTHONUNBUFFERED="1")
    port = free_port()
    result = subprocess.run(
        [PYTHON, "-m", "gunicorn", "-c", "python:wsrelay.gunicorn_conf", "-w", "2",
         "-k", STOCK_WORKER, "-b", f"127.0.0.1:{port}", "--chdir", str(tmp_path),
         "host:create_app()"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 3, output  # gunicorn's "worker failed to boot"
    assert "2 workers on the in-memory broker" in output, output
    assert "Traceback" not in output, output
