"""Both ways a request reaches the view: wsrelay's handler, and gevent-websocket's own."""

import contextlib
import json
import re
import socket
import time

import gevent
import pytest
import requests
from gevent.pywsgi import WSGIServer
from geventwebsocket.handler import WebSocketHandler

from tests.support import Bystander, Closed, Refused, WSClient, poll_json
from wsrelay import create_app
from wsrelay.server.handler import RelayHandler, redact_tokens


def serve(handler_class, app=None):
    """``app`` (a fresh wsrelay app by default) in this process, on a free port."""
    app = app or create_app()
    server = WSGIServer(("127.0.0.1", 0), app, handler_class=handler_class, log=None)
    server.start()
    return server


def stop(server: WSGIServer) -> None:
    """Stop a server of :func:`serve`, and its app's relay (the hub's and metrics' greenlets)."""
    server.stop()
    server.application.extensions["wsrelay"].close()


@pytest.fixture(params=[RelayHandler, WebSocketHandler], ids=["relay", "stock"])
def handler_server(request):
    server = serve(request.param)
    yield request.param, f"ws://127.0.0.1:{server.server_port}"
    stop(server)


def test_both_handlers_relay(handler_server):
    _, url = handler_server
    with WSClient(f"{url}/ws/room") as a, WSClient(f"{url}/ws/room") as b:
        a.send("hi")
        assert b.recv() == "hi"
        a.send(b"\x00")
        assert b.recv() == b"\x00"


def test_both_handlers_hold_a_long_poll_until_a_message_answers_it(handler_server, channel):
    """The stock handler gives the view no socket to watch for its client leaving: the poll
    is still held and answered as usual."""
    _, url = handler_server
    base = url.replace("ws://", "http://")
    cursor = requests.get(f"{base}/poll/{channel}?timeout=0", timeout=5).json()["cursor"]
    held = gevent.spawn(requests.get, f"{base}/poll/{channel}",
                        params={"since": cursor, "timeout": 30}, timeout=40)
    gevent.sleep(0.3)
    assert not held.ready()
    requests.post(f"{base}/publish/{channel}", data="answer", timeout=5)
    assert [m["data"] for m in held.get(timeout=5).json()["messages"]] == ["answer"]


def test_refusal_is_http_with_relay_handler_and_close_1008_with_the_stock_one(handler_server):
    handler, url = handler_server
    if handler is RelayHandler:
        with pytest.raises(Refused) as refused:
            WSClient(f"{url}/ws/bad$channel")
        assert refused.value.status == 400
    else:
        client = WSClient(f"{url}/ws/bad$channel")
        with pytest.raises(Closed) as closed:
            client.recv()
        assert closed.value.code == 1008
        assert "channel" in closed.value.reason


def test_relay_handler_answers_ordinary_requests_normally():
    server = serve(RelayHandler)
    try:
        import requests

        response = requests.get(f"http://127.0.0.1:{server.server_port}/healthz", timeout=5)
        assert response.status_code == 200
        assert response.json()["status"] == "ok"
    finally:
        stop(server)


# -- what a request may make the server hold or read -------------------------------------

def raw_request(server, head: bytes, body: bytes = b"") -> tuple[bytes, float]:
    """Send a request head (and the start of a body); return the whole answer, read until
    the server closes the connection, and how long the close took."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + body)
        started = time.monotonic()
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer, time.monotonic() - started


@pytest.mark.parametrize("headers", [
    b"X-Big: " + b"x" * 70_000 + b"\r\n",
    b"".join(b"X-%d: %s\r\n" % (i, b"y" * 1000) for i in range(70)),
    b"".join(b"X-%d: y\r\n" % i for i in range(100)),
], ids=["one-huge-line", "70-KB-in-total", "100-lines"])
def test_oversized_headers_are_431(server, headers):
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    answer, _ = raw_request(server, head + headers + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b"headers_too_large" in answer
    assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize("packet", [65536, 1000], ids=["large packets", "small packets"])
def test_a_request_line_without_an_end_is_414_not_buffered(server, packet):
    """The front stops reading a request line at pywsgi's limit (8 KiB), whatever follows."""
    line = b"GET /poll/x?" + b"a" * 500_000
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        answer = b""
        with contextlib.suppress(OSError):  # refused and closed while it still sends
            for start in range(0, len(line), packet):
                sock.sendall(line[start:start + packet])
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 414 "), answer[:200]
    assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200


def test_headers_within_the_limits_are_served(server):
    headers = b"".join(b"X-%d: %s\r\n" % (i, b"y" * 600) for i in range(90))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers
                     + b"\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("path,status", [("/publish/{channel}", 413), ("/publish/bad$", 400)])
def test_a_refused_body_is_not_read(server, channel, path, status):
    """A body announced at 10 GB, of which 100 bytes come: the refusal comes at once, says
    Connection: close, and the server hangs up instead of waiting for the rest."""
    head = (f"POST {path.format(channel=channel)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: text/plain\r\nContent-Length: 10000000000\r\n\r\n").encode()
    answer, closed_after = raw_request(server, head, b"x" * 100)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"\r\nConnection: close\r\n" in answer
    assert closed_after < 2


# -- request heads whose framing could be read two ways ------------------------------------

#: Header lines of a POST whose body would end in different places for different parsers.
AMBIGUOUS = {
    "CL and TE": "Host: 127.0.0.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked",
    "TE and CL": "Host: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5",
    "two CLs": "Host: 127.0.0.1\r\nContent-Length: 0\r\nContent-Length: 5",
    "two equal CLs": "Host: 127.0.0.1\r\nContent-Length: 5\r\nContent-Length: 5",
    "CL +1": "Host: 127.0.0.1\r\nContent-Length: +1",
    "CL -1": "Host: 127.0.0.1\r\nContent-Length: -1",
    "CL 1 2": "Host: 127.0.0.1\r\nContent-Length:  1 2",
    "CL 0x10": "Host: 127.0.0.1\r\nContent-Length: 0x10",
    "CL empty": "Host: 127.0.0.1\r\nContent-Length: ",
    "CL folded": "Host: 127.0.0.1\r\nContent-Length: 1\r\n 0",
    "space before colon": "Host: 127.0.0.1\r\nContent-Length : 5\r\nTransfer-Encoding: chunked",
    "TE xchunked": "Host: 127.0.0.1\r\nTransfer-Encoding: xchunked",
    "TE chunked, identity": "Host: 127.0.0.1\r\nTransfer-Encoding: chunked, identity",
    "TE gzip": "Host: 127.0.0.1\r\nTransfer-Encoding: gzip",
    "two TEs": "Host: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
    "two Hosts": "Host: 127.0.0.1\r\nHost: y\r\nContent-Length: 5",
    "no Host": "Content-Length: 5",
}


STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


def smuggling(port: int, channel: str, headers: str, version: str = "HTTP/1.1") -> bytes:
    """POST /publish with ``headers``, a body that is a chunked body's end for a parser that
    reads chunks and holds a second request, hidden, for one that does not; everything the
    server answers until it closes the connection."""
    hidden = (f"POST /publish/{channel}-smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              "Connection: close\r\nContent-Length: 8\r\n\r\nsmuggled")
    request = (f"POST /publish/{channel} {version}\r\n{headers}\r\n\r\n"
               f"5\r\nhello\r\n0\r\n\r\n{hidden}").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def refused_whole(answer: bytes) -> bool:
    """One answer only, a JSON 400 that closes the connection."""
    head, _, body = answer.partition(b"\r\n\r\n")
    return (len(STATUS_LINE.findall(answer)) == 1 and head.startswith(b"HTTP/1.1 400 ")
            and b"\r\nConnection: close\r\n" in head + b"\r\n"
            and body.startswith(b'{"error":"bad_request","message":'))


def test_requests_framed_two_ways_are_refused_whole_while_others_are_served(server, channel):
    """Each is answered once, 400 with its reason, and its connection closed: nothing in its
    body is read as a request, nothing is published. Sent 20 times each beside a bystander,
    who is served on time throughout."""
    targets = (channel, f"{channel}-smuggled")
    cursors = [poll_json(server, target, timeout=0)["cursor"] for target in targets]
    wrong = {}
    with Bystander(server, f"{channel}-bystander") as bystander:
        for _ in range(20):
            for name, headers in [*AMBIGUOUS.items(), ("TE in HTTP/1.0", "TE 1.0")]:
                answer = (smuggling(server.port, channel, "Transfer-Encoding: chunked",
                                    "HTTP/1.0") if headers == "TE 1.0"
                          else smuggling(server.port, channel, headers))
                if not refused_whole(answer):
                    wrong[name] = STATUS_LINE.findall(answer)
    assert not wrong, wrong
    bystander.assert_served(p99=1.0)
    for target, cursor in zip(targets, cursors, strict=True):
        assert poll_json(server, target, since=cursor, timeout=0)["messages"] == []


def test_pipelined_requests_take_turns_with_everyone_else(server, channel):
    """A client that pipelines thousands of requests on one connection gets one answer per
    turn of the event loop: a bystander is served on time meanwhile, and every request of
    the pipeline is answered, in order."""
    count = 3000
    request = (f"GET /poll/{channel}?timeout=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").encode()
    with Bystander(server, f"{channel}-bystander") as bystander, socket.create_connection(
        ("127.0.0.1", server.port)
    ) as sock:
        gevent.sleep(0.5)  # the bystander's first round trips, before the pipeline
        sender = gevent.spawn(sock.sendall, request * count)
        data = b""
        while data.count(b"HTTP/1.1 200 ") < count:
            chunk = sock.recv(1 << 20)
            assert chunk, f"the connection closed after {data.count(b'HTTP/1.1 200 ')} answers"
            data += chunk
        sender.get(timeout=5)
    bystander.assert_served(p99=0.5)


def test_a_clearly_framed_publish_and_the_request_after_it_are_both_served(server, channel):
    """The same bytes with one clear framing: two requests, two answers (so the test above
    would see a hidden request answered)."""
    cursor = poll_json(server, f"{channel}-smuggled", timeout=0)["cursor"]
    answer = smuggling(server.port, channel, "Host: 127.0.0.1\r\nTransfer-Encoding: chunked")
    assert STATUS_LINE.findall(answer) == [b"200", b"200"]
    published = poll_json(server, f"{channel}-smuggled", since=cursor, timeout=0)["messages"]
    assert [message["data"] for message in published] == ["smuggled"]


def test_both_handlers_speak_wsrelay_v1(handler_server):
    _, url = handler_server
    with WSClient(f"{url}/ws", subprotocols=["wsrelay.v1"]) as client:
        assert client.conn.getsubprotocol() == "wsrelay.v1"
        client.send(json.dumps({"type": "subscribe", "channel": "room", "ack": 1}))
        assert json.loads(client.recv())["ack"] == 1
        client.send(json.dumps({"type": "publish", "channel": "room", "data": "hi", "ack": 2}))
        answers = [json.loads(client.recv()) for _ in range(2)]
        assert {a["type"] for a in answers} == {"ack", "message"}


@pytest.fixture(params=[RelayHandler, WebSocketHandler], ids=["relay", "stock"])
def own_route_server(request):
    """An application with its own WebSocket route (serve_websocket), on either handler."""
    from flask import request as flask_request

    app = create_app()

    @app.route("/chat/<room>", websocket=True)
    def chat(room):
        if room == "closed":
            return {"error": "forbidden", "message": "not this room"}, 403
        app.extensions["wsrelay"].serve_websocket(flask_request.environ["wsgi.websocket"], room)
        return ""

    server = serve(request.param, app)
    yield request.param, f"ws://127.0.0.1:{server.server_port}"
    stop(server)


def test_an_own_route_relays_with_serve_websocket(own_route_server):
    _, url = own_route_server
    with WSClient(f"{url}/chat/lobby") as a, WSClient(f"{url}/ws/lobby") as b:
        a.send("from the own route")
        assert b.recv() == "from the own route"
        assert a.recv() == "from the own route"  # the sender too, as on /ws/<channel>
        b.send(b"\x01")
        assert a.recv() == b"\x01"


def test_an_own_route_can_refuse_before_the_upgrade(own_route_server):
    """Under wsrelay's handler the route's 403 is what the client gets. Under the stock one
    the 101 went out before the route ran: its answer is lost and the socket just closes."""
    handler, url = own_route_server
    if handler is RelayHandler:
        with pytest.raises(Refused) as refused:
            WSClient(f"{url}/chat/closed")
        assert refused.value.status == 403
    else:
        client = WSClient(f"{url}/chat/closed")
        with pytest.raises(Closed):
            client.recv(timeout=5)


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_the_handler_tells_the_app_the_address_a_request_arrived_on(address):
    """``SERVER_ADDR``: what the host check tells loopback from the rest by (pywsgi's
    SERVER_NAME is a name looked up for the listening address, not the connection's)."""

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ.get("SERVER_ADDR", "").encode()]

    server = WSGIServer((address, 0), app, handler_class=RelayHandler, log=None)
    server.start()
    try:
        host = f"[{address}]" if ":" in address else address
        answer = requests.get(f"http://{host}:{server.server_port}/", timeout=5)
        assert answer.text == address
    finally:
        server.stop()


def test_an_own_route_compresses_as_ws_does(own_route_server):
    """Under wsrelay's handler an own route negotiates permessage-deflate like ``/ws``; the
    stock handler answered the handshake before the app ran, so it goes uncompressed."""
    from tests.transports.test_websocket_deflate import ANSWER, CHAT, DeflateClient

    handler, url = own_route_server
    compressing = handler is RelayHandler
    client = DeflateClient(int(url.rsplit(":", 1)[1]), "/chat/zip")
    try:
        assert client.extensions == (ANSWER if compressing else None)
        client.send(CHAT, compress=compressing)
        assert client.recv() == (1, compressing, CHAT)
    finally:
        client.close()


@pytest.mark.parametrize(("line", "expected"), [
    ('"GET /poll/a?token=abc.def HTTP/1.1" 200', '"GET /poll/a?token=[redacted] HTTP/1.1" 200'),
    ('"GET /sse/a?since=1&token=x%2Fy&z=2 HTTP/1.1"',
     '"GET /sse/a?since=1&token=[redacted]&z=2 HTTP/1.1"'),
    ('"GET /poll/a?TOKEN=abc HTTP/1.1"', '"GET /poll/a?TOKEN=[redacted] HTTP/1.1"'),
    ('"GET /p/token=a?mytoken=keep HTTP/1.1"', '"GET /p/token=a?mytoken=keep HTTP/1.1"'),
])
def test_access_lines_hold_no_token(line, expected):
    assert redact_tokens(line) == expected
