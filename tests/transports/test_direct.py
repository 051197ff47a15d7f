"""The direct path (long-polls and upgrades without Flask): which requests it takes, and that
its answers are Flask's, byte for byte but the date and the ids."""

from __future__ import annotations

import base64
import re
import socket

import pytest
from flask import Flask

from tests.support import ServerProcess, publish
from wsrelay import Relay
from wsrelay.app import create_app
from wsrelay.websocket.upgrade import DeferredWebSocket


def environ(path: str, method: str = "GET", upgrade: bool = False) -> dict:
    env = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "",
           "HTTP_HOST": "127.0.0.1"}
    if upgrade:
        env["wsgi.websocket"] = DeferredWebSocket(object())  # type: ignore[arg-type]
    return env


def direct(app: Flask, path: str, method: str = "GET", upgrade: bool = False) -> bool:
    """Whether wsrelay's handler would answer this request without Flask."""
    return app.wsrelay_direct(environ(path, method, upgrade)) is not None


@pytest.fixture
def demo():
    app = create_app({"WSRELAY_BROKER_URL": "memory://"})
    yield app
    app.extensions["wsrelay"].close()


@pytest.fixture
def host_app():
    """An application with wsrelay under a prefix, as the extension is used."""
    apps = []

    def make(**config) -> Flask:
        app = Flask("host")
        app.config.update({"WSRELAY_URL_PREFIX": "/rt", **config})
        relay = Relay(app)
        apps.append((app, relay))
        return app

    yield make
    for app, _ in apps:
        app.extensions["wsrelay"].close()


# -- what it takes ---------------------------------------------------------------------------

def test_the_demo_app_answers_polls_and_upgrades_directly(demo):
    assert direct(demo, "/poll/news")
    assert direct(demo, "/ws/news", upgrade=True)
    assert direct(demo, "/ws", upgrade=True)


def test_everything_else_goes_through_flask(demo):
    assert not direct(demo, "/sse/news")
    assert not direct(demo, "/publish/news", "POST")
    assert not direct(demo, "/poll/news", "HEAD")
    assert not direct(demo, "/poll/news", "POST")
    assert not direct(demo, "/ws/news")  # not an upgrade: Flask answers 426
    assert not direct(demo, "/poll/news", upgrade=True)  # werkzeug answers 400
    assert not direct(demo, "/poll/bad name")  # Flask's routing and checks answer it
    assert not direct(demo, "/poll/a/b")
    assert not direct(demo, "/healthz")


def test_the_extension_answers_directly_under_its_prefix(host_app):
    app = host_app()
    assert direct(app, "/rt/poll/news")
    assert direct(app, "/rt/ws/news", upgrade=True)
    assert not direct(app, "/poll/news")
    assert not direct(app, "/ws/news", upgrade=True)


def test_hooks_that_may_need_flasks_request_send_every_request_through_flask(host_app):
    app = host_app()
    relay = app.extensions["wsrelay"]
    relay.connect_hook(lambda request, channel, claims, action: True)
    assert not direct(app, "/rt/poll/news")
    assert not direct(app, "/rt/ws/news", upgrade=True)
    other = host_app()
    other.extensions["wsrelay"].identity_hook(lambda request, claims: "ann")
    assert not direct(other, "/rt/poll/news")


def test_a_host_request_function_or_route_under_the_paths_keeps_flask(host_app):
    app = host_app()
    app.before_request(lambda: None)  # e.g. the host's login check: it must see every request
    assert not direct(app, "/rt/poll/news")
    app = host_app()
    app.add_url_rule("/rt/poll/special", "special", lambda: "the host's")
    assert not direct(app, "/rt/poll/news")
    app = host_app()
    app.wsgi_app = app.wsgi_app  # a middleware would sit here
    assert not direct(app, "/rt/poll/news")


def test_cors_for_foreign_origins_keeps_polls_on_flask_but_not_upgrades(host_app):
    app = host_app(WSRELAY_ALLOWED_ORIGINS=["https://app.example"])
    assert not direct(app, "/rt/poll/news")
    assert direct(app, "/rt/ws/news", upgrade=True)


def test_it_can_be_turned_off(host_app):
    app = host_app(WSRELAY_DIRECT_PATH=False)
    assert not direct(app, "/rt/poll/news")
    assert not direct(app, "/rt/ws/news", upgrade=True)


# -- the same answers as Flask's -------------------------------------------------------------

VARYING = [
    (re.compile(rb"\r\nDate: [^\r]*"), b""),
    (re.compile(rb"\d{13}-\d{10}"), b"ID"),
    (re.compile(rb'"time":[0-9.]+'), b'"time":T'),
]


def exchange(port: int, request: str) -> bytes:
    """A raw request (``{port}`` filled in) and its whole answer, the date, port and ids
    masked."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.replace("{port}", str(port)).encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        length = re.search(rb"\r\nContent-Length: (\d+)", head, re.IGNORECASE)
        while length and len(body) < int(length.group(1)):
            body += sock.recv(65536)
    answer = (head + b"\r\n\r\n" + body).replace(str(port).encode(), b"PORT")
    for pattern, mask in VARYING:
        answer = pattern.sub(mask, answer)
    return answer


def get(path: str, *headers: str) -> str:
    lines = "".join(f"{header}\r\n" for header in headers)
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{{port}}\r\n{lines}\r\n"


KEY = base64.b64encode(b"0123456789abcdef").decode()
UPGRADE = ("Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {KEY}",
           "Sec-WebSocket-Version: 13")
OWN = "Origin: http://127.0.0.1:{port}"

REQUESTS = {
    "empty poll": get("/poll/{channel}?timeout=0"),
    "poll with messages": get("/poll/{channel}-full?timeout=5"),
    "poll since the first": get("/poll/{channel}-full?since=0000000000000-0000000000"),
    "invalid since": get("/poll/{channel}?since=yesterday"),
    "invalid timeout": get("/poll/{channel}?timeout=61"),
    "foreign origin": get("/poll/{channel}?timeout=0", "Origin: https://evil.example"),
    "own origin": get("/poll/{channel}?timeout=0", OWN),
    "rebound host": "GET /poll/{channel}?timeout=0 HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    "private without a token": get("/poll/private-{channel}?timeout=0"),
    "bad token": get("/poll/private-{channel}?timeout=0", "Authorization: Bearer nonsense"),
    "bad query token": get("/poll/private-{channel}?timeout=0&token=nonsense"),
    "websocket": get("/ws/{channel}", *UPGRADE, OWN),
    "websocket, deflate": get("/ws/{channel}", *UPGRADE, OWN,
                              "Sec-WebSocket-Extensions: permessage-deflate"),
    "websocket, wsrelay.v1": get("/ws", *UPGRADE, OWN, "Sec-WebSocket-Protocol: wsrelay.v1"),
    "websocket, raw without a channel": get("/ws", *UPGRADE, OWN),
    "websocket, foreign origin": get("/ws/{channel}", *UPGRADE, "Origin: https://evil.example"),
    "websocket, private": get("/ws/private-{channel}", *UPGRADE, OWN),
    "websocket, rebound host": get("/ws/{channel}", *UPGRADE, OWN).replace(
        "Host: 127.0.0.1:{port}", "Host: evil.example"),
    "websocket, version 8": get("/ws/{channel}", *UPGRADE[:3], "Sec-WebSocket-Version: 8",
                                OWN),
    "websocket, no key": get("/ws/{channel}", *UPGRADE[:2], "Sec-WebSocket-Version: 13", OWN),
    "websocket, bad since": get("/ws/{channel}?since=x", *UPGRADE, OWN),
    "upgrade on a poll": get("/poll/{channel}?timeout=0", *UPGRADE, OWN),
}


@pytest.fixture(scope="module")
def both():
    """Two servers alike but for the direct path: on (the default) and off."""
    servers = [ServerProcess.serve(), ServerProcess.serve(env={"WSRELAY_DIRECT_PATH": "0"})]
    yield servers
    for server in servers:
        server.stop()


@pytest.mark.parametrize("name", REQUESTS)
def test_the_direct_path_answers_as_flask_does(both, channel, name):
    answers = []
    for server in both:
        for text in ("one", "two"):
            publish(server, f"{channel}-full", text)
        answers.append(exchange(server.port, REQUESTS[name].replace("{channel}", channel)))
    assert answers[0] == answers[1]
    status = answers[0].split(b" ", 2)[1]
    assert status in {b"101", b"200", b"400", b"401", b"403", b"426"}, answers[0]
