"""gevent-websocket's handler, taught to let the application answer before the 101.

The stock ``WebSocketHandler`` completes the handshake before the Flask app
runs, so a view can no longer refuse with an HTTP status. ``RelayHandler``
hands the view a :class:`~wsrelay.websocket.upgrade.DeferredWebSocket` in
``environ['wsgi.websocket']`` instead: the view checks channel, origin and
token, then either returns an ordinary error response or takes the socket
(:mod:`wsrelay.websocket.upgrade`).

It also bounds the one thing pywsgi lets a client take for ever: the time
to send a request head. A connection that sends nothing, or its head too
slowly (slowloris), is closed after ``WSRELAY_HTTP_IDLE_TIMEOUT``; the
clock stops once the head is in, so upgraded WebSockets and the bodies of
SSE and long-poll responses are never cut by it.

And what pywsgi lets a client make it hold or read: headers are bounded in
total (pywsgi alone takes 100 lines of 64 KiB each) and answered 431 above
that; a request refused before its body was read (413, 403, ...) closes the
connection instead of reading the rest, however large it claims to be. A head
whose framing is ambiguous (:mod:`wsrelay.server.request_head`) is refused with 400
and its connection closed, where pywsgi would guess.

An app may answer some requests itself, before Flask: ``app.wsrelay_direct(environ)``
(:data:`DIRECT_ROUTE`; wsrelay's :mod:`~wsrelay.transports.direct` path for long-polls and
upgrades) returns the WSGI application to run instead, or None.

A plain request gets its socket in ``environ[SOCKET_KEY]``, for the views that
hold a request to notice its client leave. And once its application stops
(:mod:`wsrelay.server.keep_alive`) a connection waits for no further request.

A connection whose direct-path answer must wait (a held long-poll), or went out, leaves
its greenlet: watchers hold it until the answer goes and its next request comes
(:mod:`wsrelay.server.parked`).

Its access lines never hold a token: ``?token=...`` is written ``token=[redacted]``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import socket
import time
from collections.abc import Sequence
from typing import Any

import gevent
from gevent.pywsgi import MAX_REQUEST_LINE, WSGIHandler, _NoopLog  # type: ignore[attr-defined]
from geventwebsocket.handler import WebSocketHandler

from ..config import DEFAULTS, from_environ
from ..fairness import let_others_run
from ..websocket.handshake import is_upgrade_request
from ..websocket.upgrade import DeferredWebSocket, keeps_tls_state, take_descriptor
from .front import RequestHead, SocketReader, head_end, parse_head, request_environ, response_bytes
from .keep_alive import KeepAlive, keep_alive
from .lane import RERUN_KEY, Lane
from .parked import IN_LOOP, PARK_KEY, ParkedConnection, Pending
from .request_head import framing_problem

#: Where RelayHandler puts a plain (not upgrade) request's socket in its environ.
SOCKET_KEY = "wsrelay.socket"
#: The attribute of a served app that routes a request around it: ``route(environ)`` is the
#: WSGI application that answers it, or None for the app itself.
DIRECT_ROUTE = "wsrelay_direct"
#: The logger of access lines (``manage.py serve``), under wsrelay's so that it has its form.
ACCESS_LOGGER = "wsrelay.access"

_TOKEN_VALUE = re.compile(r"([?&;]token=)[^&;#\s\"]*", re.IGNORECASE)


def redact_tokens(line: str) -> str:
    """``line`` with the value of every ``token`` query parameter replaced by ``[redacted]``."""
    return _TOKEN_VALUE.sub(r"\1[redacted]", line)


def _refusal(status: str, error: str, message: str) -> bytes:
    """A whole error response that closes the connection, as bytes."""
    body = json.dumps({"error": error, "message": message}, separators=(",", ":")).encode()
    return (
        b"HTTP/1.1 %s\r\nConnection: close\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (status.encode(), len(body), body)
    )


_REQUEST_TIMEOUT = _refusal("408 Request Timeout", "request_timeout",
                            "the request head came too slowly")

#: A response body up to this size is sent with its head (larger ones are not copied).
SMALL_BODY = 64 * 1024
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


class RelayHandler(WebSocketHandler):
    """A ``WebSocketHandler`` whose upgrade is decided by the application."""

    socket: Any  # None once the connection left (a WebSocket, a parked connection)
    rfile: Any
    upgraded = False
    _head_deadline = 0.0
    _server_addr: str | None = None
    #: True once a request of this connection was read: a client that pipelines requests
    #: gets one answer per turn of the event loop, like a WebSocket's fair reading.
    _answered = False
    #: When the connection began to wait for this request in a watcher (0.0: it did not):
    #: its head is due within the idle timeout of then (:mod:`wsrelay.server.parked`).
    idle_from = 0.0
    #: Its socket is no longer the server's: it left a greenlet once already.
    _detached = False
    #: Its last request was answered by the direct path, and it stays open.
    _direct = False
    #: The keep-alive connections of its application (whether the server stops).
    _ending: KeepAlive | None = None
    #: What answers a repeat of its last direct-path request (:mod:`wsrelay.server.lane`).
    lane: Lane | None = None

    def __init__(self, sock: Any, address: Any, server: Any, rfile: Any = None) -> None:
        super().__init__(sock, address, server, rfile or SocketReader(sock))

    def handle(self) -> None:
        if self._detached:  # resumed (:meth:`resume`): set up already
            super().handle()
            return
        # pywsgi writes a response's head and body in two sends; with Nagle on, the body
        # waits for the client's delayed ACK of the head: 40 ms on every keep-alive answer.
        with contextlib.suppress(OSError):  # not TCP (a Unix socket under gunicorn)
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle()

    def get_environ(self) -> dict[str, Any]:
        """pywsgi's environ, with ``SERVER_ADDR`` (:meth:`_add_server_addr`)."""
        environ = super().get_environ()
        self._add_server_addr(environ)
        return environ

    def _add_server_addr(self, environ: dict[str, Any]) -> None:
        """Put in ``SERVER_ADDR`` the address the connection arrived on (the host check
        tells loopback from the rest by it), asked once per connection; none when unknown."""
        if self._server_addr is None:
            self._server_addr = ""
            with contextlib.suppress(OSError, TypeError, IndexError):
                address = self.socket.getsockname()
                self._server_addr = str(address[0] if isinstance(address, tuple) else address)
        if self._server_addr:
            environ["SERVER_ADDR"] = self._server_addr

    def handle_one_request(self) -> Any:
        """Read the next request head within the idle timeout (closing quietly when none
        begins, 408 when it begins but does not end in time, and not once the server
        stops); answer it in the front when the app's direct path takes it
        (:meth:`_answer`), else let pywsgi read it from the same buffer and answer it."""
        reader: SocketReader = self.rfile
        if reader.closed:
            return None
        if self._direct and not reader.buffer and not keeps_tls_state(self.socket):
            # a direct-path answer went out: the next request is awaited in a watcher
            self._park(reader).await_request()
            return None
        if self._answered and (reader.buffer or reader.fill_ready()):
            let_others_run()  # a keep-alive client's next request is here (pipelined): others first
        self._answered = True
        application = self.server.application
        connections = self._ending = keep_alive(application)
        if connections.ending:  # checked after the turn: the server may have begun to stop
            return None
        now = time.monotonic()
        self._head_deadline = (self.idle_from or now) + idle_timeout(application)
        self.idle_from = 0.0
        received: int | tuple[str, bytes] | None = head_end(reader.buffer)
        if received == -1:
            received = self._receive_head(reader, connections,
                                          max(0.0, self._head_deadline - now))
        if not isinstance(received, int):
            return received  # None (close quietly), or the 408
        end = received
        route = getattr(application, DIRECT_ROUTE, None)
        raw = bytes(reader.buffer[:end]) if route is not None and end > 0 else b""
        head = parse_head(raw) if raw else None
        if head is not None:
            answered = self._answer(reader, raw, head, route)
            if answered is not False:
                return answered
        self._direct = False
        return WSGIHandler.handle_one_request(self)

    def _receive_head(self, reader: SocketReader, connections: Any, timeout: float
                      ) -> int | tuple[str, bytes] | None:
        """Receive until the buffer holds a whole head: where it ends, 0 when pywsgi must
        read it as it is (the stream ended, or it is over the limits), None to close the
        connection quietly, or the 408 refusal."""
        buffer = reader.buffer  # filled in place
        timer = gevent.Timeout(timeout)
        timer.start()
        try:
            scanned = 0  # each byte is searched once, however small the packets
            with connections.waiting(self.socket):
                while buffer.find(b"\n", scanned) < 0:  # the request line
                    if len(buffer) >= MAX_REQUEST_LINE:
                        return 0  # pywsgi answers 414 from the buffer
                    scanned = len(buffer)
                    if not reader.fill():
                        return 0 if buffer else None
            scanned = 0
            while (end := head_end(buffer, scanned)) < 0:
                if len(buffer) > MAX_REQUEST_LINE + MAX_HEADER_BYTES:
                    return 0  # pywsgi answers 414 or 431 from the buffer
                scanned = max(0, len(buffer) - 2)
                if not reader.fill():
                    return 0
            return end
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            if b"\n" not in buffer:
                return None
            return "408", _REQUEST_TIMEOUT
        finally:
            timer.close()

    def _answer(self, reader: SocketReader, raw: bytes, head: RequestHead, route: Any) -> Any:
        """Answer ``head`` (``raw``: its bytes) without pywsgi if the direct path takes it:
        True to read the next request, None to close (or the connection was parked), False
        when it does not take it (nothing read yet)."""
        taken = self._take(reader, raw, head, route, in_loop=False)
        if taken is False or taken is None:
            return taken
        if isinstance(taken, Pending):
            self._park(reader).hold(taken, head.close)
            return None
        response, ending = self.response(*taken)
        try:
            self.socket.sendall(response)
        except OSError:
            return None
        self.log_answer(taken[0], len(response))
        if head.close or ending:
            return None
        self._direct = True
        return True

    def _take(self, reader: SocketReader, raw: bytes, head: RequestHead, route: Any, *,
              in_loop: bool) -> Any:
        """Run the direct path's application for ``head`` (``raw``: its bytes): False when
        it does not take it (nothing read yet), None when it upgraded the connection, a
        :class:`Pending` when its answer waits, else the answer (status, headers, body).
        ``in_loop``: in the event loop (:mod:`~wsrelay.server.parked`), where nothing may
        wait: an upgrade is not taken, nor a request the direct path would have to wait for.
        An answer the application says may be repeated (:data:`~wsrelay.server.lane.RERUN_KEY`)
        becomes the connection's :attr:`lane`."""
        environ = request_environ(self.server.get_environ(), head, self.client_address)
        self._add_server_addr(environ)
        if is_upgrade_request(environ):
            if in_loop:
                return False
            environ["wsgi.websocket"] = DeferredWebSocket(self)
        elif in_loop:
            environ[PARK_KEY] = IN_LOOP
        else:
            environ[SOCKET_KEY] = self.socket
            if not keeps_tls_state(self.socket):
                environ[PARK_KEY] = True
        application = route(environ)
        if application is None:
            return False
        del reader.buffer[:len(raw)]
        self.environ = environ
        self.requestline = head.line
        self.upgraded = False
        self.close_connection = head.close
        if not isinstance(self.server.log, _NoopLog):
            self.time_start = time.time()
        answer: list[Any] = []
        try:
            result = application(environ, lambda *response: answer.extend(response))
            if isinstance(result, Pending):
                return result
            body = b"".join(result)
        finally:
            environ.pop("wsgi.websocket", None)
            environ.pop(SOCKET_KEY, None)
            environ.pop(PARK_KEY, None)
            rerun = environ.pop(RERUN_KEY, None)
            if rerun is not None:
                self.lane = Lane.of(raw, rerun, head.close)
        if self.upgraded:
            return None
        return answer[0], answer[1], body

    def serve_in_loop(self, reader: SocketReader) -> tuple[Any, bool] | None:
        """The next request in ``reader``, answered in the event loop if the direct path can
        answer it there (:meth:`_take`): what it took (a :class:`Pending` or the answer) and
        whether the connection closes after it; None when a greenlet must serve it."""
        end = head_end(reader.buffer)
        route = getattr(self.server.application, DIRECT_ROUTE, None)
        if end <= 0 or route is None:
            return None
        raw = bytes(reader.buffer[:end])
        head = parse_head(raw)
        if head is None:
            return None
        taken = self._take(reader, raw, head, route, in_loop=True)
        return None if taken is False or taken is None else (taken, head.close)

    def response(self, status: str, headers: Sequence[tuple[str, str]], body: bytes
                 ) -> tuple[bytes, bool]:
        """A direct-path answer as bytes, and whether the server stops (its answer then says
        ``Connection: close``, as pywsgi's would, and the connection ends)."""
        ending = keep_alive(self.server.application).ending if self._ending is None \
            else self._ending.ending
        return response_bytes(status, headers, body, ending), ending

    def logs(self) -> bool:
        """Whether its server writes access lines."""
        return not isinstance(self.server.log, _NoopLog)

    def repeated(self, line: str) -> None:
        """Its lane took a request (:mod:`wsrelay.server.lane`): ``line`` is what its access
        line says (the answer's :meth:`log_answer` writes it)."""
        self.requestline = line
        self.time_start = time.time()

    def log_answer(self, status: str, length: int) -> None:
        """The access line of a direct-path answer (none without an access log)."""
        if not isinstance(self.server.log, _NoopLog):
            self.status = status.encode("latin-1")
            self._orig_status = status
            self.response_length = length
            self.time_finish = time.time()
            self.log_request()

    def _park(self, reader: SocketReader) -> ParkedConnection:
        """The connection leaves this greenlet (which ends) for a
        :class:`~wsrelay.server.parked.ParkedConnection`."""
        sock = self.socket
        if not self._detached:  # the server's socket object is left closed, not its descriptor
            sock = take_descriptor(sock)
            reader.attach(sock)
            self._detached = True
        self.socket = None  # pywsgi's loop ends, and closes nothing
        self._direct = False
        return ParkedConnection(self, sock, reader)

    def resume(self, sock: Any, reader: SocketReader) -> None:
        """Serve the connection again, in this greenlet: its next request is in ``reader``."""
        self.socket = sock
        self.rfile = reader
        self._answered = False
        self.handle()

    def idle_limit(self) -> float:
        """How long the connection may wait for its next request."""
        return idle_timeout(self.server.application)

    def read_request(self, raw_requestline: str) -> bool:
        """Read the headers within what is left of the idle timeout; else answer 408."""
        remaining = max(0.0, self._head_deadline - time.monotonic())
        with gevent.Timeout(remaining, RequestHeadTimeout):
            # pywsgi returns True (types-gevent says the headers)
            return WSGIHandler.read_request(self, raw_requestline)  # type: ignore[return-value]

    def MessageClass(self, rfile: Any, *args: Any) -> Any:
        """Parse the headers through a reader that stops at the limits, then check them
        before pywsgi reads its framing from them (it would drop a Content-Length beside
        ``Transfer-Encoding: chunked``, and take ``+1`` for 1)."""
        # the parser only calls readline() (types-gevent asks for a whole BufferedIOBase)
        reader = _BoundedHeaderReader(rfile)
        headers = WSGIHandler.MessageClass(self, reader, *args)  # type: ignore[arg-type]
        return _checked(headers, self.request_version)

    def _handle_client_error(self, ex: Exception) -> tuple[str, bytes]:
        if isinstance(ex, RequestHeadTimeout):
            return "408", _REQUEST_TIMEOUT
        if isinstance(ex, RequestHeadersTooLarge):
            return "431", _HEADERS_TOO_LARGE
        if isinstance(ex, BadRequestHead):
            return "400", _refusal("400 Bad Request", "bad_request", str(ex))
        # pywsgi's documented hook for subclasses, which types-gevent leaves out
        return WSGIHandler._handle_client_error(self, ex)  # type: ignore[attr-defined]

    def run_application(self) -> None:
        if is_upgrade_request(self.environ):
            self.environ["wsgi.websocket"] = DeferredWebSocket(self)
        else:
            self.environ[SOCKET_KEY] = self.socket
        self.upgraded = False
        application: Any = self.application  # type: ignore[has-type]
        route = getattr(application, DIRECT_ROUTE, None)
        direct = route(self.environ) if route is not None else None
        if direct is not None:
            self.application = direct
        try:
            WSGIHandler.run_application(self)
        finally:
            self.application = application
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

    def _write_with_headers(self, data: bytes) -> None:
        """pywsgi's, but a small body goes out in the same send as the head: one packet
        and one system call instead of two (a long-poll's answer, an error)."""
        if len(data) > SMALL_BODY:
            WSGIHandler._write_with_headers(self, data)  # type: ignore[attr-defined]
            return
        self.headers_sent = True
        self.finalize_headers()
        towrite = bytearray(b"HTTP/1.1 %s\r\n" % self.status)  # latin-1 bytes, as pywsgi's
        for header, value in self.response_headers:
            towrite += b"%s: %s\r\n" % (header, value)
        towrite += b"\r\n"
        if data and self.response_use_chunked:
            towrite += b"%x\r\n%s\r\n" % (len(data), data)
        else:
            towrite += data
        self._sendall(towrite)

    def process_result(self) -> None:
        if not self.upgraded:
            WSGIHandler.process_result(self)

    def log_request(self) -> None:
        """pywsgi's access line, not even formatted when there is no access log (4 % of
        a keep-alive long-poll's time went into formatting lines nobody wrote)."""
        if not self.upgraded and not isinstance(self.server.log, _NoopLog):
            WSGIHandler.log_request(self)

    def format_request(self) -> str:
        """pywsgi's access line, without the tokens of its request line."""
        return redact_tokens(WSGIHandler.format_request(self))
