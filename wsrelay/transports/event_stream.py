"""An SSE stream as a connection of the hub, written by the hub's flusher like a WebSocket.

Once the response head is out, a stream is a subscription whose encoder makes
each message's event once, chunk framing included, the same bytes queued on
every stream of its kind (:class:`SseEncoder`). The hub's flusher gives each
stream its pending events in one non-blocking write; a socket that takes less
gets the rest from a libev write watcher, not a greenlet. The request's
greenlet sleeps until the stream ends: no greenlet is woken per message. A
stream whose queue passes ``WSRELAY_SUBSCRIBER_BUFFER`` is cut; its client
resumes from ``Last-Event-ID``. A replay larger than that ends the stream
once it is out, and the client resumes after it: a page per reconnection.
Keep-alive comments and the token's expiry are libev timers.

The stream writes to the request's socket behind pywsgi's back, so its bytes
carry pywsgi's framing: ``Transfer-Encoding: chunked`` unless the request is
HTTP/1.0. Under a server that does not hand wsrelay its socket the stream's
bytes are yielded to the server instead (:meth:`EventStream.take`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import socket
import time
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event

from ..hub import Subscription
from ..ids import MessageId
from ..message import Message
from ..websocket.connection import CLOSED, CLOSING, OPEN, OPENING
from ..websocket.protocol import CloseCode

if TYPE_CHECKING:
    from ..hub import MessageServer

_ids = itertools.count(1)
_WRITE = 2  # libev's EV_WRITE
#: Queued bytes past which a stream is written at once, window or not: a publisher that never
#: yields must not fill fast readers' queues.
WRITE_NOW = 256 * 1024

CONNECTED = b"retry: 2000\n: connected\n\n"
KEEP_ALIVE = b": keep-alive\n\n"
TOKEN_EXPIRED = b"event: error\ndata: token expired\n\n"
BROKER_UNAVAILABLE = b"event: error\ndata: broker unavailable\n\n"


def error_event(text: str) -> bytes:
    """An ``error`` event carrying ``text`` (on one line), after which the stream ends."""
    line = " ".join(text.splitlines())[:200]
    return f"event: error\ndata: {line}\n\n".encode()


def reset_event(cursor: MessageId) -> bytes:
    """A gap notice; its ``id:`` moves the browser's Last-Event-ID to the cursor, so its own
    reconnect resumes from there instead of reporting the same gap again."""
    data = json.dumps({"cursor": str(cursor), "message": "messages were missed"})
    return f"id: {cursor}\nevent: reset\ndata: {data}\n\n".encode()


class SseEncoder:
    """Messages as Server-Sent Events (``as_json``: every one a ``json`` event), each in a
    chunk of its own when the response is ``chunked``."""

    __slots__ = ("as_json", "chunked")

    def __init__(self, *, as_json: bool, chunked: bool) -> None:
        self.as_json = as_json
        self.chunked = chunked

    def frame(self, event: bytes) -> bytes:
        """``event`` as the response's body carries it."""
        return b"%x\r\n%s\r\n" % (len(event), event) if self.chunked else event

    def message(self, message: Message) -> bytes:
        return self.frame(message.to_sse(as_json=self.as_json))

    def reset(self, channel: str, cursor: MessageId) -> bytes:
        return self.frame(reset_event(cursor))


#: One shared encoder per kind, so the hub encodes a message once per kind.
ENCODERS = {
    (as_json, chunked): SseEncoder(as_json=as_json, chunked=chunked)
    for as_json in (False, True) for chunked in (False, True)
}


class EventStream:
    """One SSE response: its queue, its subscription, its timers; ``ended`` is set once the
    request may return (the queue is out, or the stream was cut).

    The queue is a list of events, joined into one ``send``, and the unsent rest of the last
    one (a view, not a copy): an SSE stream has no control frames to slip in between events
    and nothing to drop from its queue, so a WebSocket's outbox is more than it needs, and
    this is what it pays for per stream per write.
    """

    __slots__ = (
        "_expiry", "_keepalive", "_queue", "_raw", "_rest", "_writable", "dirty", "encoder",
        "ended", "hub", "id", "last_seen", "limit", "linger", "ready", "sent", "size", "sock",
        "state", "subscription", "written",
    )

    def __init__(
        self, hub: MessageServer, channel: str, sock: Any | None, *, as_json: bool,
        chunked: bool, buffer_limit: int, linger: float = 0.0,
    ) -> None:
        """``sock``: the request's socket, written directly; None to yield to the server.
        ``linger``: seconds its events, once its write window has ended, wait for the next
        message (see :mod:`wsrelay.pacing`)."""
        self.hub = hub
        self.id = f"sse-{next(_ids)}"
        self.sock = sock
        self._raw: Any = getattr(sock, "_sock", sock)  # gevent's socket wraps the OS socket
        self.encoder = ENCODERS[as_json, chunked and sock is not None]
        self.subscription = Subscription(self, channel, self.encoder, counted=False)
        self._queue: list[bytes] = []  # events not yet begun
        self._rest: memoryview | None = None  # the unsent end of the last send's bytes
        self.size = 0  # bytes queued, the rest included
        self.limit = buffer_limit
        self.linger = linger
        self.state = OPENING
        self.dirty = False
        self.sent = 0
        self.written = 0.0  # when bytes last went out (the hub paces its writes by it)
        self.last_seen = math.inf  # never silent: the hub does not ping streams
        self.ended = Event()
        #: Set when there is something to yield (only without a socket).
        self.ready = Event()
        self._writable: Any = None
        self._keepalive: Any = None
        self._expiry: Any = None

    def open(self, keepalive: float, expires: float | None) -> None:
        """The response head is out: write what was queued, start the timers."""
        if self.state is OPENING:
            self.state = OPEN
        loop = gevent.get_hub().loop
        self._keepalive = loop.timer(keepalive, keepalive)
        self._keepalive.start(self.ping)
        if expires is not None:
            self._expiry = loop.timer(max(0.0, expires - time.time()))
            self._expiry.start(self.end, TOKEN_EXPIRED)
        self.flush()

    # -- queueing (called by the hub) -------------------------------------------------

    def push(self, frame: bytes) -> None:
        state = self.state
        if state is not OPEN and state is not OPENING:
            return
        self._queue.append(frame)
        size = self.size = self.size + len(frame)
        if size > self.limit:
            if state is OPENING:  # a replay larger than the queue: it goes out, then the
                self.state = CLOSING  # stream ends, and the client resumes after it
                return
            self.hub.stats.slow_consumer_closes += 1
            self.abort()
        elif size >= WRITE_NOW and self._writable is None:
            self.flush()

    def ping(self) -> None:
        """A keep-alive comment (the stream's timer): proxies keep an idle response open."""
        self.push(self.encoder.frame(KEEP_ALIVE))
        self.hub.mark_dirty(self)

    # -- writing ----------------------------------------------------------------------

    def flush(self) -> None:
        """Write what the socket takes now; the rest when it is writable again."""
        state = self.state
        if state is OPENING or state is CLOSED or self._writable is not None:
            return
        if self.sock is None:
            if self.size or state is CLOSING:
                self.ready.set()
            return
        try:
            done = self._write_some()
        except OSError:
            self.abort()
            return
        if not done:
            self._writable = gevent.get_hub().loop.io(self._raw.fileno(), _WRITE)
            self._writable.start(self._on_writable)
        elif state is CLOSING:
            self.ended.set()

    def _write_some(self) -> bool:
        """One ``send`` of all that is queued; True once the queue is empty."""
        queue = self._queue
        data: bytes | memoryview
        if self._rest is not None:  # the end of the last send first, alone
            data, self._rest = self._rest, None
        elif len(queue) == 1:
            data = queue.pop()
        elif queue:
            data = b"".join(queue)
            queue.clear()
        else:
            return True
        try:
            written = self._raw.send(data)
        except (BlockingIOError, InterruptedError):
            written = 0
        stats = self.hub.stats
        stats.writes += 1
        if written:
            stats.bytes_sent += written
            self.written = time.monotonic()
            self.size -= written
        if written < len(data):
            self._rest = memoryview(data)[written:]
            return False
        return not queue or self._write_some()  # after a rest, what was queued behind it

    def _on_writable(self) -> None:
        """In the event loop: the socket takes more."""
        self._stop_writing()
        self.flush()

    def _stop_writing(self) -> None:
        if self._writable is not None:
            self._writable.close()
            self._writable = None

    def take(self) -> bytes:
        """What is queued, for a server that writes the response itself."""
        self.ready.clear()
        data = b"".join(self._queue)
        self._queue.clear()
        self.size = 0
        return data

    # -- ending ---------------------------------------------------------------------

    def end(self, final: bytes = b"") -> None:
        """End after the queue and ``final`` (an event) are out."""
        state = self.state
        if state is not OPEN and state is not OPENING:
            return
        if final:
            frame = self.encoder.frame(final)
            self._queue.append(frame)
            self.size += len(frame)
        self.state = CLOSING
        if state is OPEN:
            self.flush()

    def close(self, code: int, reason: str) -> None:
        """End the stream after its queue: the hub drains (1001; the browser reconnects
        elsewhere), or the application ended it (an ``error`` event says why)."""
        self.end(b"" if code == CloseCode.GOING_AWAY else error_event(reason))

    def abort(self) -> None:
        """Cut the stream now (too slow, gone, or past the drain's deadline)."""
        if self.state is CLOSED:
            return
        self.state = CLOSED
        self._stop_writing()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        self.ended.set()
        self.ready.set()

    def release(self) -> None:
        """The request is over: nothing of the stream stays behind. (Ending and cutting, which
        the event loop may call, leave the unsubscribing to this, in the request's greenlet:
        a broker may talk to its server to stop watching a channel.)"""
        self.state = CLOSED
        self.hub.unsubscribe(self.subscription)
        self._stop_writing()
        for timer in (self._keepalive, self._expiry):
            if timer is not None:
                timer.close()
        self._keepalive = self._expiry = None
        self.hub.let_go(self)
        self._queue = []
        self._rest = None
        self.size = 0
