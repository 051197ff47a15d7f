"""The lean front of wsrelay's handler: a request head read into a buffer and parsed in C.

gevent's pywsgi spends more on a request than a long-poll's own work: a
header object built by the email package, an environ of every variable,
``start_response``'s checks, chunking decisions, a second send for the body.
The requests wsrelay answers itself (:mod:`wsrelay.transports.direct`: polls
and WebSocket upgrades) need none of it. So the handler reads each request
head into one buffer (:class:`SocketReader`), parses it with ``httptools``
(llhttp, the C parser of Node.js and uvicorn) when it may be one of those
(:func:`parse_head`), builds the environ they read (:func:`request_environ`)
and writes the answer, head and body, in one send (:func:`response_bytes`).

Anything else, or anything unusual about the head (a body, HTTP/1.0, a line
ending in a bare LF, a header name with ``_``, a head httptools refuses), goes
to pywsgi as before: it reads the same bytes again from the same buffer, which
is its ``rfile``, so every answer, error and limit stays pywsgi's and wsrelay's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NamedTuple
from urllib.parse import unquote

import httptools
from gevent.pywsgi import format_date_time  # type: ignore[attr-defined]

from ..memo import remember

#: The most a single receive takes in.
RECEIVE_SIZE = 64 * 1024
#: A head the front parses is shorter than this and has at most ``LEAN_FIELDS`` header
#: fields; a larger one goes to pywsgi, whose limits answer it (414, 431).
LEAN_HEAD = 8 * 1024
LEAN_FIELDS = 64


class SocketReader:
    """A connection's input: what was received and not read yet (``buffer``), with the
    file methods pywsgi uses on its ``rfile`` (``readline``, ``read``, ``read1``), so
    that the front and pywsgi take turns reading one stream."""

    __slots__ = ("_sock", "buffer", "closed")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.buffer = bytearray()
        self.closed = False

    def attach(self, sock: Any) -> None:
        """Read from ``sock`` from now on (the connection's descriptor in a new socket)."""
        self._sock = sock

    def fill(self) -> bool:
        """Receive once (waiting for data) into the buffer; False at the end of the stream
        or on an error of the connection."""
        try:
            data = self._sock.recv(RECEIVE_SIZE)
        except OSError:
            return False
        if not data:
            return False
        self.buffer += data
        return True

    def fill_ready(self) -> bool:
        """Receive what has arrived already, without waiting; False when nothing has."""
        sock = self._sock
        timeout = sock.gettimeout()
        sock.settimeout(0.0)
        try:
            return self.fill()
        finally:
            sock.settimeout(timeout)

    def take(self, size: int) -> bytes:
        """The first ``size`` buffered bytes, read."""
        buffer = self.buffer
        data = bytes(buffer[:size])
        del buffer[:size]
        return data

    def readline(self, size: int = -1) -> bytes:
        start = 0
        while True:
            buffer = self.buffer
            end = buffer.find(b"\n", start)
            if end >= 0 and (size < 0 or end < size):
                return self.take(end + 1)
            if 0 <= size <= len(buffer):
                return self.take(size)
            start = len(buffer)
            if not self.fill():
                return self.take(len(self.buffer))

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self.fill():
                pass
            return self.take(len(self.buffer))
        while len(self.buffer) < size and self.fill():
            pass
        return self.take(size)

    def read1(self, size: int = -1) -> bytes:
        """What is buffered, else one receive (OSError, e.g. BlockingIOError, raised)."""
        if not self.buffer:
            return self._sock.recv(RECEIVE_SIZE if size < 0 else size)
        return self.take(len(self.buffer) if size < 0 else size)

    def pending(self) -> bytes:
        """What is buffered, read (a WebSocket's first frames past its head)."""
        return self.take(len(self.buffer))

    def close(self) -> None:
        """Read no more; the buffer's memory goes (the socket stays open)."""
        self.closed = True
        self.buffer = bytearray()


def head_end(buffer: bytearray, start: int = 0) -> int:
    """Where the request head in ``buffer`` ends (after its empty line), or -1 when it is
    not all there yet; ``start``: where to search from (no empty line ends before it). A
    head whose lines end in bare LFs ends where pywsgi ends it too (its first empty line),
    and is then left to pywsgi (:func:`parse_head` refuses it)."""
    crlf = buffer.find(b"\n\r\n", start)
    lf = buffer.find(b"\n\n", start, crlf if crlf >= 0 else len(buffer))
    if lf >= 0:
        return lf + 2
    return crlf + 3 if crlf >= 0 else -1


class RequestHead(NamedTuple):
    """A request head as the front answers it; ``headers`` as received (latin-1), values
    without surrounding white space."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    #: The first ``Connection`` header said ``close`` (as pywsgi decides it).
    close: bool
    #: The request line as the access log writes it.
    line: str


def parse_head(head: bytes) -> RequestHead | None:
    """The parsed head of an HTTP/1.1 request without a body, or None when pywsgi should
    read it: anything httptools refuses, another version, a body, a bare LF, a header name
    with ``_`` (pywsgi drops those), framing :mod:`~wsrelay.server.request_head` refuses, or
    a head over :data:`LEAN_HEAD` bytes or :data:`LEAN_FIELDS` fields.

    httptools checks the syntax (in C, without a callback per field); the head, valid,
    is then split at its CRLFs and colons.
    """
    if len(head) >= LEAN_HEAD or head.count(b"\n") != head.count(b"\r\n"):
        return None
    parser = httptools.HttpRequestParser(_NO_CALLBACKS)
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass  # an upgrade request: its head is complete
    except httptools.HttpParserError:
        return None
    if parser.get_http_version() != "1.1":
        return None
    line, *fields = head[:-4].decode("latin-1").split("\r\n")
    parts = line.split(" ")
    if len(parts) != 3 or len(fields) > LEAN_FIELDS:
        return None
    headers = []
    close = None
    hosts = 0
    for field in fields:
        name, _, value = field.partition(":")
        lower = name.lower()
        if "_" in name or lower in _FRAMING:
            return None
        value = value.strip()
        if lower == "host":
            hosts += 1
        elif close is None and lower == "connection":
            close = value.lower() == "close"
        headers.append((name, value))
    if hosts != 1:
        return None
    return RequestHead(parts[0], parts[1], headers, bool(close), line)


#: The fields that frame a body: a request with one goes to pywsgi.
_FRAMING = ("content-length", "transfer-encoding")
#: httptools' protocol object: no callbacks, the syntax only.
_NO_CALLBACKS = object()


def request_environ(base: dict[str, Any], head: RequestHead, client_address: Any
                    ) -> dict[str, Any]:
    """``base`` (the server's environ, a copy) filled in for ``head`` as pywsgi's
    ``get_environ`` fills it, but for ``wsgi.input`` (the request has no body)."""
    base["REQUEST_METHOD"] = head.method
    base["SCRIPT_NAME"] = ""
    path, _, query = head.target.partition("?")
    base["PATH_INFO"] = unquote(path, encoding="latin-1")
    base["QUERY_STRING"] = query
    base["SERVER_PROTOCOL"] = "HTTP/1.1"
    if isinstance(client_address, tuple):
        base["REMOTE_ADDR"] = str(client_address[0])
        base["REMOTE_PORT"] = str(client_address[1])
    content_type = None
    for name, value in head.headers:
        key = "HTTP_" + name.replace("-", "_").upper()
        if key == "HTTP_CONTENT_TYPE":
            if content_type is None:
                content_type = base["CONTENT_TYPE"] = value
            continue
        if key in base:
            base[key] += ("; " if "COOKIE" in key else ",") + value
        else:
            base[key] = value
    return base


_date: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The ``Date`` header's value now (made once a second)."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, format_date_time(now))
    return _date[1]


#: Responses made lately, by what they were made of (headers given as a tuple).
_responses: dict[tuple[str, tuple[tuple[str, str], ...], bytes, bool, bytes], bytes] = {}
RESPONSES_KEPT = 64


def response_bytes(status: str, headers: Sequence[tuple[str, str]], body: bytes,
                   close: bool) -> bytes:
    """A whole response as pywsgi (with wsrelay's handler) writes it: the application's
    headers, ``Connection: close`` when ``close`` (the server stops: the client's own
    ``close`` is not answered with one), the date, then the body. Headers given as a tuple
    (a long-poll's) are taken to be the same every time: the response is made once per
    body and date (the polls one message wakes share their answer's body)."""
    if type(headers) is not tuple:
        return _response_bytes(status, headers, body, close)
    return remember(_responses, (status, headers, body, close, http_date()),
                    lambda: _response_bytes(status, headers, body, close), RESPONSES_KEPT)


def _response_bytes(status: str, headers: Sequence[tuple[str, str]], body: bytes,
                    close: bool) -> bytes:
    out = bytearray(b"HTTP/1.1 %s\r\n" % status.encode("latin-1"))
    length = False
    for name, value in headers:
        out += b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1"))
        length = length or name.lower() == "content-length"
    if close:
        out += b"Connection: close\r\n"
    out += b"Date: %s\r\n" % http_date()
    if not length:
        out += b"Content-Length: %d\r\n" % len(body)
    out += b"\r\n"
    out += body
    return bytes(out)
