"""The direct path (long-polls and upgrades without Flask): which requests it takes, and that
its answers are Flask's, byte for byte but the date and the ids."""

from __future__ import annotations

import base64
import re
import socket
import time

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


# -- the lean front (server/front.py) answers as pywsgi does ---------------------------------

def exchange_all(port: int, request: bytes, *, answers: int, pieces: int = 1) -> bytes:
    """Send ``request`` (in ``pieces`` packets) and read ``answers`` whole answers, or until the
    server closes; masked as :func:`exchange` masks."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        size = -(-len(request) // pieces)
        try:
            for start in range(0, len(request), size):
                sock.sendall(request[start:start + size])
                if pieces > 1:
                    time.sleep(0.002)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed before the rest was sent (431)
        data = b""
        bodies = not request.startswith(b"HEAD ")
        while len(STATUS.findall(data)) < answers or (bodies and not _complete(data)):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    answer = data.replace(str(port).encode(), b"PORT")
    for pattern, mask in [*VARYING, (ALLOW, b"Allow: METHODS")]:
        answer = pattern.sub(mask, answer)
    return answer


STATUS = re.compile(rb"HTTP/1\.1 \d\d\d ")
#: werkzeug lists the allowed methods in a set's order, which differs between processes.
ALLOW = re.compile(rb"Allow: [A-Z, ]*")


def _complete(data: bytes) -> bool:
    """The last answer in ``data`` is whole (its head and its Content-Length's body)."""
    starts = [match.start() for match in STATUS.finditer(data)]
    head, sep, body = data[starts[-1] if starts else 0:].partition(b"\r\n\r\n")
    length = re.search(rb"\r\nContent-Length: (\d+)", head, re.IGNORECASE)
    return bool(sep) and len(body) >= (int(length.group(1)) if length else 0)


def raw(path: str, *headers: str, method: str = "GET", version: str = "HTTP/1.1",
        host: str = "Host: 127.0.0.1:{port}", end: str = "\r\n", body: str = "") -> str:
    lines = "".join(f"{line}{end}" for line in (host, *headers) if line)
    return f"{method} {path} {version}{end}{lines}{end}{body}"


POLL = "/poll/{channel}?timeout=0"
HELD = "/poll/{channel}?timeout=0.2"
FRONT = {
    # name: (the bytes sent, answers expected)
    "two polls pipelined": (raw(POLL) + raw("/poll/{channel}-full?timeout=0"), 2),
    "a poll after a page": (raw("/no-such-page") + raw(POLL), 2),
    "a page after a poll": (raw(POLL) + raw("/no-such-page"), 2),
    "three polls, the last says close": (raw(POLL) * 2 + raw(POLL, "Connection: close"), 3),
    "HEAD": (raw(POLL, method="HEAD"), 1),
    "POST": (raw(POLL, "Content-Length: 0", method="POST"), 1),
    "OPTIONS": (raw(POLL, method="OPTIONS"), 1),
    "HTTP/1.0": (raw(POLL, version="HTTP/1.0"), 1),
    "HTTP/1.0 keep-alive": (raw(POLL, "Connection: keep-alive", version="HTTP/1.0") * 2, 2),
    "bare LF line ends": (raw(POLL, end="\n"), 1),
    "obsolete line folding": (raw(POLL, "X-Folded: a", " b"), 1),
    "a header name with _": (raw(POLL, "X_Under: 1"), 1),
    "a header name with a space": (raw(POLL, "X Bad: 1"), 1),
    "no Host": (raw(POLL, host=""), 1),
    "two Hosts": (raw(POLL, "Host: 127.0.0.1"), 1),
    "a body on a GET, then a poll": (raw(POLL, "Content-Length: 5", body="hello") + raw(POLL), 2),
    "a chunked body on a GET": (raw(POLL, "Transfer-Encoding: chunked",
                                    body="5\r\nhello\r\n0\r\n\r\n") + raw(POLL), 2),
    "length and chunked": (raw(POLL, "Content-Length: 5", "Transfer-Encoding: chunked",
                               body="hello"), 1),
    "too many headers": (raw(POLL, *(f"X-{n}: {n}" for n in range(120))), 1),
    "headers too large": (raw(POLL, *(f"X-{n}: {'v' * 4000}" for n in range(20))), 1),
    "a request line too long": (raw(POLL + "&x=" + "a" * 9000), 1),
    "an absolute target": (raw("http://127.0.0.1:{port}" + POLL), 1),
    "an escaped path": (raw("/poll/%7Bchannel%7D?timeout=0".replace("%7Bchannel%7D", "{channel}")
                            .replace("/poll/", "/po%6Cl/")), 1),
    "repeated Origin headers": (raw(POLL, "Origin: http://127.0.0.1:{port}", "Origin: x"), 1),
    "a cookie and a content type": (raw(POLL, "Cookie: a=1", "Cookie: b=2",
                                        "Content-Type: text/plain"), 1),
    "an upgrade after a poll": (raw(POLL) + raw("/ws/{channel}", *UPGRADE, OWN), 2),
    # polls that wait (their connection held without a greenlet: server/parked.py)
    "two held polls pipelined": (raw(HELD) * 2, 2),
    "a page after a held poll": (raw(HELD) + raw("/no-such-page"), 2),
    "a held poll that says close": (raw(HELD, "Connection: close") + raw(POLL), 1),
    "an upgrade after a held poll": (raw(HELD) + raw("/ws/{channel}", *UPGRADE, OWN), 2),
    "a body after a held poll": (raw(HELD) + raw(POLL, "Content-Length: 5", body="hello"), 2),
}


@pytest.mark.e2e  # two servers (the fixture's name does not mark it)
@pytest.mark.parametrize("pieces", [1, 40], ids=["whole", "in 40 packets"])
@pytest.mark.parametrize("name", FRONT)
def test_the_front_answers_as_pywsgi_does(both, channel, name, pieces):
    request, count = FRONT[name]
    answers = []
    for server in both:
        publish(server, f"{channel}-full", "one")
        text = request.replace("{channel}", channel).replace("{port}", str(server.port))
        answers.append(exchange_all(server.port, text.encode("latin-1"), answers=count,
                                    pieces=pieces))
    assert answers[0] == answers[1]
    assert len(STATUS.findall(answers[0])) == count, answers[0]
