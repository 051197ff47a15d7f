"""gevent-websocket's handler, taught to let the application answer before the 101.

The stock ``WebSocketHandler`` completes the handshake before the Flask app
runs, so a view can no longer refuse with an HTTP status. ``RelayHandler``
hands the view a :class:`DeferredWebSocket` in ``environ['wsgi.websocket']``
instead: the view checks channel, origin and token, then either returns an
ordinary error response or takes the socket (:func:`take_socket`): the 101
is written once the relay has subscribed, and the connection leaves the
request, which ends (:meth:`DeferredWebSocket.detach`).

It also bounds the one thing pywsgi lets a client take for ever: the time
to send a request head. A connection that sends nothing, or its head too
slowly (slowloris), is closed after ``WSRELAY_HTTP_IDLE_TIMEOUT``; the
clock stops once the head is in, so upgraded WebSockets and the bodies of
SSE and long-poll responses are never cut by it.

And what pywsgi lets a client make it hold or read: headers are bounded in
total (pywsgi alone takes 100 lines of 64 KiB each) and answered 431 above
that; a request refused before its body was read (413, 403, ...) closes the
connection instead of reading the rest, however large it claims to be. A head
whose framing is ambiguous (:mod:`wsrelay.request_head`) is refused with 400
and its connection closed, where pywsgi would guess.

A plain request gets its socket in ``environ[SOCKET_KEY]``, for the views that
hold a request to notice its client leave. And once its application stops
(:mod:`wsrelay.keep_alive`) a connection waits for no further request.
"""

from __future__ import annotations

import contextlib
import functools
import json
import socket
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import gevent
from gevent.pool import PoolFull
from gevent.pywsgi import WSGIHandler
from geventwebsocket.handler import WebSocketHandler

from ..config import DEFAULTS, from_environ
from ..fairness import let_others_run
from ..websocket.handshake import accept_key, is_upgrade_request, switching_protocols
from .keep_alive import keep_alive
from .request_head import framing_problem

#: Where RelayHandler puts a plain (not upgrade) request's socket in its environ.
SOCKET_KEY = "wsrelay.socket"


def _refusal(status: str, error: str, message: str) -> bytes:
    """A whole error response that closes the connection, as bytes."""
    body = json.dumps({"error": error, "message": message}, separators=(",", ":")).encode()
    return (
        b"HTTP/1.1 %s\r\nConnection: close\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (status.encode(), len(body), body)
    )


_REQUEST_TIMEOUT = _refusal("408 Request Timeout", "request_timeout",
                            "the request head came too slowly")

#: Headers of one request, in bytes and in lines (the blank line that ends them included).
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_LINES = 100
_HEADERS_TOO_LARGE = _refusal("431 Request Header Fields Too Large", "headers_too_large",
                              "the request headers are too large")


class RequestHeadersTooLarge(ValueError):
    """More header bytes or lines than allowed (a ``ValueError``: the client's fault)."""


class _BoundedHeaderReader:
    """The request's reader as pywsgi's header parser sees it: it stops at the limits."""

    def __init__(self, rfile: Any) -> None:
        self._rfile = rfile
        self._bytes_left = MAX_HEADER_BYTES
        self._lines_left = MAX_HEADER_LINES

    def readline(self, size: int = -1) -> bytes:
        if self._lines_left == 0:
            raise RequestHeadersTooLarge(f"more than {MAX_HEADER_LINES} header lines")
        cap = self._bytes_left + 1
        line = self._rfile.readline(cap if size < 0 else min(size, cap))
        self._lines_left -= 1
        self._bytes_left -= len(line)
        if self._bytes_left < 0:
            raise RequestHeadersTooLarge(f"headers over {MAX_HEADER_BYTES} bytes")
        return line


def _skip_unread_body(body: Any) -> bool:
    """Tell pywsgi's request body there is nothing left to discard; True if there was."""
    unread = body is not None and (
        body.chunked_input or body.position < (body.content_length or 0)
    )
    if unread:
        body.content_length = body.position
        body.chunked_input = False
    return unread


class RequestHeadTimeout(ValueError):
    """The request line came in time but the headers did not (a ``ValueError``, so pywsgi
    treats it as the client's fault)."""


class BadRequestHead(ValueError):
    """A request head whose framing could be read two ways; the message says why."""


def _checked(headers: Any, version: str) -> Any:
    """The parsed headers of a request, or BadRequestHead. The parser drops a line that is
    not ``name: value`` (``Content-Length : 5``) and every line after it, silently: such a
    head is refused too, since what was dropped may have framed the body."""
    if headers.defects:
        raise BadRequestHead("a header line that is not 'name: value'")
    problem = framing_problem(headers.items(), version)
    if problem:
        raise BadRequestHead(problem)
    return headers


@functools.cache
def _environ_idle_timeout() -> float:
    return {**DEFAULTS, **from_environ()}["WSRELAY_HTTP_IDLE_TIMEOUT"]


def idle_timeout(application: Any) -> float:
    """WSRELAY_HTTP_IDLE_TIMEOUT of the served Flask app, else of the environment."""
    config = getattr(application, "config", None)
    if config is not None and "WSRELAY_HTTP_IDLE_TIMEOUT" in config:
        return config["WSRELAY_HTTP_IDLE_TIMEOUT"]
    return _environ_idle_timeout()


class DeferredWebSocket:
    """An upgrade request the application has not answered yet."""

    def __init__(self, handler: RelayHandler) -> None:
        self._handler = handler

    def prepare(self, subprotocol: str | None = None) -> Callable[[], None]:
        """Check the handshake now (ApiError if it is invalid) and return what writes the
        101 later: a relay subscribes first, so a client that sees the 101 misses nothing."""
        response = switching_protocols(accept_key(self._handler.environ), subprotocol)
        return functools.partial(self._switch, response)

    def _switch(self, response: bytes) -> None:
        self._handler.socket.sendall(response)
        self._mark_upgraded(len(response))

    def detach(self, subprotocol: str | None = None) -> TakenSocket | None:
        """Take the connection out of its request, which then ends without a response and
        reads no further request; None when the socket cannot be duplicated (TLS).

        The request's greenlet, its stacks and the request's objects then go, instead
        of living as long as the connection: most of an idle WebSocket's memory. The
        connection keeps a duplicate of the socket (the server closes the original once
        the request ends) and runs in a greenlet of its own (:meth:`TakenSocket.serve`).
        """
        handler = self._handler
        response = switching_protocols(accept_key(handler.environ), subprotocol)  # ApiError
        try:
            sock = handler.socket.dup()
        except NotImplementedError:  # an SSLSocket: its TLS state cannot be shared
            return None
        pending = take_buffered(handler.socket, handler.rfile)
        # pywsgi's cleanup reads what is left on its socket before closing it: with no
        # socket it leaves the client's first frames to us (the server still closes it).
        handler.socket = None
        self._mark_upgraded(len(response))
        return TakenSocket(
            sock, pending, functools.partial(sock.sendall, response),
            functools.partial(_spawn_in_server, handler.server),
        )

    def _mark_upgraded(self, response_length: int) -> None:
        """The request is answered by the 101: no HTTP response, no further request."""
        handler = self._handler
        handler.upgraded = True
        handler.status = "101 Switching Protocols"
        handler.headers_sent = True
        handler.close_connection = True
        handler.response_length = response_length


def _serve_here(target: Callable[[], None]) -> None:
    target()


def _spawn_in_server(server: Any, target: Callable[[], None]) -> None:
    """Run a detached connection in a fresh greenlet (a shallow stack) of the server's pool,
    so a stopping gunicorn worker waits for it as for any request; a full pool runs it in
    the request's greenlet, whose slot it already holds."""
    pool = getattr(server, "pool", None)
    if pool is None:
        _ConnectionGreenlet.spawn(target)
        return
    try:
        pool.start(_ConnectionGreenlet(target), blocking=False)
    except PoolFull:
        target()


class _ConnectionGreenlet(gevent.Greenlet):
    """A detached connection's greenlet: it does not keep a record of the stack that
    spawned it (gevent's default: 10 frames, ~0.7 KiB per connection)."""

    spawning_stack_limit = 0


class RelayHandler(WebSocketHandler):
    """A ``WebSocketHandler`` whose upgrade is decided by the application."""

    upgraded = False
    _head_deadline = 0.0
    #: True once a request of this connection was read: a client that pipelines requests
    #: gets one answer per turn of the event loop, like a WebSocket's fair reading.
    _answered = False

    def handle(self) -> None:
        # pywsgi writes a response's head and body in two sends; with Nagle on, the body
        # waits for the client's delayed ACK of the head: 40 ms on every keep-alive answer.
        with contextlib.suppress(OSError):  # not TCP (a Unix socket under gunicorn)
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle()

    def get_environ(self) -> dict[str, Any]:
        """pywsgi's environ, with ``SERVER_ADDR``: the address the connection arrived on
        (the host check tells loopback from the rest by it)."""
        environ = super().get_environ()
        with contextlib.suppress(OSError, TypeError, IndexError):
            address = self.socket.getsockname()
            environ["SERVER_ADDR"] = str(address[0] if isinstance(address, tuple) else address)
        return environ

    def read_requestline(self) -> str:
        """Wait for the next request line at most the idle timeout, and not once the server
        stops; then close quietly (an idle keep-alive connection and a client that never
        starts look the same)."""
        if self._answered:  # a keep-alive client's next request (maybe pipelined): others first
            let_others_run()
        self._answered = True
        application = self.server.application
        connections = keep_alive(application)
        if connections.ending:  # checked after the turn: the server may have begun to stop
            return ""  # pywsgi closes the connection on an empty request line
        timeout = idle_timeout(application)
        self._head_deadline = time.monotonic() + timeout
        with connections.waiting(self.socket), gevent.Timeout(timeout, False):
            return WSGIHandler.read_requestline(self)
        return ""

    def read_request(self, raw_requestline: str) -> bool:
        """Read the headers within what is left of the idle timeout; else answer 408."""
        remaining = max(0.0, self._head_deadline - time.monotonic())
        with gevent.Timeout(remaining, RequestHeadTimeout):
            return WSGIHandler.read_request(self, raw_requestline)

    def MessageClass(self, rfile: Any, *args: Any) -> Any:
        """Parse the headers through a reader that stops at the limits, then check them
        before pywsgi reads its framing from them (it would drop a Content-Length beside
        ``Transfer-Encoding: chunked``, and take ``+1`` for 1)."""
        headers = WSGIHandler.MessageClass(self, _BoundedHeaderReader(rfile), *args)
        return _checked(headers, self.request_version)

    def _handle_client_error(self, ex: Exception) -> tuple[str, bytes]:
        if isinstance(ex, RequestHeadTimeout):
            return "408", _REQUEST_TIMEOUT
        if isinstance(ex, RequestHeadersTooLarge):
            return "431", _HEADERS_TOO_LARGE
        if isinstance(ex, BadRequestHead):
            return "400", _refusal("400 Bad Request", "bad_request", str(ex))
        return WSGIHandler._handle_client_error(self, ex)

    def run_application(self) -> None:
        if is_upgrade_request(self.environ):
            self.environ["wsgi.websocket"] = DeferredWebSocket(self)
        else:
            self.environ[SOCKET_KEY] = self.socket
        self.upgraded = False
        try:
            WSGIHandler.run_application(self)
        finally:
            self.environ.pop("wsgi.websocket", None)
            self.environ.pop(SOCKET_KEY, None)

    def start_response(self, status, headers, exc_info=None):
        if self.upgraded:  # the view returned after its WebSocket ended
            return lambda data: None
        unread = status[:1] in "45" and _skip_unread_body(self.wsgi_input)
        # the rest of the body stays unread, or the server stops: no further request
        if unread or keep_alive(self.server.application).ending:
            headers = [*headers, ("Connection", "close")]
        return WSGIHandler.start_response(self, status, headers, exc_info)

    def process_result(self) -> None:
        if not self.upgraded:
            WSGIHandler.process_result(self)

    def log_request(self) -> None:
        if not self.upgraded:
            WSGIHandler.log_request(self)


class TakenSocket(NamedTuple):
    """A WebSocket's socket, taken from the request that asked for it."""

    sock: socket.socket
    #: What the request's buffered reader took in past the request head (the first frames).
    pending: bytes
    #: What writes the 101 once the relay has subscribed; None when it is out already.
    handshake: Callable[[], None] | None
    #: ``serve(target)`` runs the connection: in a greenlet of its own once detached from
    #: its request, else in the request's greenlet until it ends.
    serve: Callable[[Callable[[], None]], None]


def take_buffered(sock: socket.socket, rfile: Any) -> bytes:
    """What ``rfile`` took in past the request head, read without waiting; then close it.

    ``sock.recv`` allocates its buffer only once data is there, whereas the
    request's buffered reader keeps its 8 KiB buffer for as long as it lives.
    """
    timeout = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        return rfile.read1() or b""  # b"" (or None) when nothing came yet
    except OSError:
        return b""
    finally:
        sock.settimeout(timeout)
        rfile.close()  # the socket stays open


def take_socket(ws: Any, subprotocol: str | None = None, *, detach: bool = False) -> TakenSocket:
    """The socket behind ``environ['wsgi.websocket']`` and what completes its handshake.

    A deferred one has its handshake checked now (ApiError if invalid) and the
    101 written once subscribed; with ``detach`` it leaves its request
    (:meth:`DeferredWebSocket.detach`). gevent-websocket's own WebSocket was
    upgraded already and stays in its request: the stock handler closes the
    socket when the view returns, so the view serves it until it ends.
    """
    if isinstance(ws, DeferredWebSocket):
        taken = ws.detach(subprotocol) if detach else None
        if taken is not None:
            return taken
        handshake = ws.prepare(subprotocol)
        handler = ws._handler
        return TakenSocket(
            handler.socket, take_buffered(handler.socket, handler.rfile), handshake, _serve_here
        )
    handler = ws.handler
    pending = take_buffered(handler.socket, handler.rfile)
    return TakenSocket(handler.socket, pending, None, functools.partial(_serve_stock, ws))


def _serve_stock(ws: Any, target: Callable[[], None]) -> None:
    """Serve gevent-websocket's own WebSocket, then tell it wsrelay closed it (it must not
    write)."""
    try:
        target()
    finally:
        ws.closed = True
