"""One accepted WebSocket: the only reader and the only writer of its socket.

Once the socket left its request
(:meth:`~wsrelay.websocket.upgrade.DeferredWebSocket.detach`), a connection with
nothing to read holds no greenlet: a libev watcher waits for its input and
starts a reader greenlet when some arrives, which reads without blocking until
nothing is left and ends (:meth:`WebSocketConnection._serve_input`). Writes are
non-blocking and happen when the hub's flusher asks; only when the kernel
buffer is full does a writer greenlet exist, to wait for the socket and finish
the queue. Pings come from the hub's heartbeat; a token's expiry and the close
timeout are libev timers, which spawn a greenlet only when they fire. An idle
connection holds no parser either (its session gives the ``websockets`` core back
between frames) and no queue (an empty outbox has none): its objects, its socket
and watchers, ~2-3 KiB. A socket still in its
request (the stock handler, TLS) is read by the request's greenlet instead,
blocking, until it ends.

What the client's messages mean is its *mode*'s business (:mod:`wsrelay.websocket.modes`:
raw relay or ``wsrelay.v1`` requests); the connection holds the mode's
subscriptions so that closing it stops every one of them at once.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import gevent
from gevent.lock import BoundedSemaphore
from gevent.socket import socket as GeventSocket
from gevent.socket import wait_write

from ..broker import BrokerUnavailable, History
from ..fairness import let_others_run
from ..hub import Encoder, Subscription
from ..ids import MessageId
from .encoders import compressed
from .outbox import WRITE_SIZE, Outbox
from .protocol import PING_FRAME, CloseCode, InboundMessage, WebSocketSession

if TYPE_CHECKING:
    from gevent._types import _IoWatcher, _TimerWatcher

    from ..hub import MessageServer
    from ..limits import TokenBucket
    from .deflate import Deflater
    from .handshake import Deflate

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
#: What the session parses of small frames at once: tiny frames cost 10-25 µs each to parse
#: and relay, so a piece takes at most a few ms. A larger frame is fed whole, or as much of
#: it as one read holds (see :meth:`WebSocketConnection._read_loop`).
FEED_SIZE = 1024
#: Seconds of work on one client's input after which the other sockets get their turn.
TURN = 0.001
#: Connections subscribing (reading their history: a broker command each) at once. In a
#: reconnect storm every accepted handshake would otherwise have its read in flight together,
#: each bounded by the broker's timeout, on a CPU that handles their answers one at a time:
#: past a few thousand the answers come too late, clients are closed with 1013, come back and
#: add to the load. Beyond this many they wait their turn, as in the accept queue.
OPENING_AT_ONCE = 64
#: Seconds a connection waits for its turn to subscribe before it is closed with 1013.
OPENING_WAIT = 60.0
_opening = BoundedSemaphore(OPENING_AT_ONCE)
_ids = itertools.count(1)
_PREFIX = f"{os.getpid()}-{os.urandom(3).hex()}"


def _new_prefix() -> None:
    """A forked process (a gunicorn worker) numbers its connections under a prefix of its own."""
    global _PREFIX
    _PREFIX = f"{os.getpid()}-{os.urandom(3).hex()}"


os.register_at_fork(after_in_child=_new_prefix)


class State(enum.Enum):
    """Where a connection is in its life: (OPENING ->) OPEN -> CLOSING -> CLOSED."""

    #: Taken from its request, subscribing; the 101 is not written yet, so nothing else is.
    OPENING = "opening"
    OPEN = "open"
    #: Our close frame is queued or sent; the peer's is awaited, nothing more goes out.
    CLOSING = "closing"
    #: The socket is closed.
    CLOSED = "closed"


#: The states as plain names, compared one at a time with ``is``: the queueing path checks
#: the state for every message, and ``State.OPEN`` is looked up through the enum's
#: metaclass (ten times a global), ``state in (OPEN, OPENING)`` builds a tuple each time.
OPENING, OPEN, CLOSING, CLOSED = State.OPENING, State.OPEN, State.CLOSING, State.CLOSED


class Mode(Protocol):
    """What a connection's messages mean (see :mod:`wsrelay.websocket.modes`)."""

    def start(self, connection: WebSocketConnection) -> None: ...

    def receive(self, connection: WebSocketConnection, message: InboundMessage) -> None: ...

    def revoke(self, connection: WebSocketConnection, channel: str, reason: str) -> bool: ...


class WebSocketConnection:
    """One WebSocket: its socket, its protocol session, its queue, its subscriptions."""

    __slots__ = (
        "_abort_timer",
        "_expiry",
        "_mode",
        "_on_end",
        "_pending_close",
        "_reading",
        "_watcher",
        "close_timeout",
        "deflater",
        "dirty",
        "expires",
        "hub",
        "id",
        "last_seen",
        "opened",
        "outbox",
        "received",
        "sent",
        "session",
        "sock",
        "state",
        "subscribed",
        "subscriptions",
        "writer",
        "written",
    )

    def __init__(
        self, sock: socket.socket, hub: MessageServer, *,
        max_message_size: int, buffer_limit: int, close_timeout: float,
        expires: float | None = None, control_rate: TokenBucket | None = None,
        deflate: Deflate | None = None, deflater: Deflater | None = None,
    ) -> None:
        """``expires``: the Unix time the client's token expires, when the connection is
        closed with 1008; ``control_rate``: the client's pings, pongs and small fragments
        (see :class:`~wsrelay.websocket.protocol.WebSocketSession`); ``deflate``:
        permessage-deflate as negotiated, ``deflater`` what compresses the messages of its
        subscriptions (None: they go uncompressed)."""
        self.sock = sock
        self.hub = hub
        self.id = f"{_PREFIX}-{next(_ids)}"
        self.subscriptions: dict[str, Subscription] = {}
        self.opened = time.monotonic()
        #: Messages the client sent, and messages delivered to it (counted by the hub).
        self.received = 0
        self.sent = 0
        #: Channels subscribed to over the connection's life (for its close log line).
        self.subscribed = 0
        self.dirty = False
        self.written = 0.0  # when bytes last went out (the hub paces its writes by it)
        self.last_seen = time.monotonic()
        self.session = WebSocketSession(
            max_message_size=max_message_size, control_rate=control_rate, deflate=deflate
        )
        self.deflater = deflater
        self.outbox = Outbox(buffer_limit)
        self.writer: gevent.Greenlet | None = None
        self.state: State = OPEN
        self.close_timeout = close_timeout
        #: The libev timer that aborts the connection when the peer does not answer a close.
        self._abort_timer: _TimerWatcher | None = None
        #: A close asked for before the 101 was written (a replay overflowing the queue).
        self._pending_close: tuple[int, str] | None = None
        self.expires = expires
        #: The libev timer that closes the connection when its token expires.
        self._expiry: _TimerWatcher | None = None
        self._mode: Mode | None = None
        #: Called once the connection has ended (its transport gives up its place).
        self._on_end: Callable[[], None] | None = None
        #: True while a greenlet reads (or opens) the connection; False while it waits for
        #: input in :attr:`_watcher`, when whoever ends it must release it.
        self._reading = False
        #: The libev watcher that starts reading when input arrives (None: reads block).
        self._watcher: _IoWatcher | None = None

    # -- reading (the connection's greenlet) -------------------------------------------

    def run(
        self, mode: Mode, handshake: Callable[[], None] | None = None, pending: bytes = b"",
        *, on_end: Callable[[], None] | None = None, watch: bool = False,
    ) -> None:
        """Let ``mode`` start (subscribe, replay), complete the handshake, then serve; call
        ``on_end`` once the connection has ended. ``pending``: what the client sent that
        was read already.

        With ``watch`` (a socket detached from its request) it returns once the
        client's input is answered: from then on a libev watcher waits for more
        (:meth:`_serve_input`). Without, it reads blocking and returns at the end.

        ``handshake`` writes the 101. It runs only once the mode has subscribed, so a
        client that sees its handshake complete misses nothing published from then on,
        even when the broker confirms subscriptions asynchronously (Redis); what was
        queued meanwhile waits until the 101 is out.
        """
        self._mode = mode
        self._on_end = on_end
        self._reading = True
        self.hub.attach(self)
        log.debug("websocket %s opened", self.id)  # its close line says it all, at INFO
        try:
            self._open(mode, handshake)
        except BaseException:
            self._release()
            raise
        if self.state is CLOSED:  # the 101 could not be written
            self._release()
            return
        if watch:
            self.sock.settimeout(0.0)  # reads and writes never wait from here on
            self._watcher = gevent.get_hub().loop.io(self.sock.fileno(), 1)
        self._serve_input(pending)

    def _open(self, mode: Mode, handshake: Callable[[], None] | None) -> None:
        if handshake is not None:
            self.state = OPENING
        if _opening.acquire(timeout=OPENING_WAIT):
            try:
                mode.start(self)
            except BrokerUnavailable:
                self.close(CloseCode.TRY_AGAIN_LATER, "broker unavailable")
            finally:
                _opening.release()
        else:
            self.close(CloseCode.TRY_AGAIN_LATER, "too many clients connecting: try again")
        if handshake is not None:
            try:
                handshake()
            except OSError:
                self.state = CLOSED
                return
            if self.state is OPENING:
                self.state = OPEN
            # silence counts from the 101: a client cannot answer pings before it
            self.last_seen = time.monotonic()
            self.hub.mark_dirty(self)
            if self._pending_close is not None:
                self.close(*self._pending_close)
        if self.expires is not None:
            self._expiry = gevent.get_hub().loop.timer(max(0.0, self.expires - time.time()))
            self._expiry.start(
                gevent.spawn_raw, self.close, CloseCode.POLICY_VIOLATION, "token expired"
            )

    def _on_readable(self) -> None:
        """The watcher saw input (or the end): read it in a greenlet of its own."""
        watcher = self._watcher
        if watcher is not None:
            watcher.stop()
        self._reading = True
        gevent.spawn_raw(self._serve_input)

    def _serve_input(self, data: bytes = b"") -> None:
        """Read and answer until nothing is left to read; then wait for more in the watcher
        (this greenlet ends), or release the connection once it ended."""
        try:
            waiting = self._read_loop(self._mode, data)  # type: ignore[arg-type]
        except Exception:
            log.exception("connection %s failed", self.id)
            self.close(CloseCode.INTERNAL_ERROR, "internal error")
            self._finish_writes_and_close()
            waiting = False
        watcher = self._watcher
        if waiting and watcher is not None and self.state is not CLOSED:
            self._reading = False
            self.session.park()  # between frames, it holds no parser
            watcher.start(self._on_readable)
        else:
            self._release()

    def _read_loop(self, mode: Mode, data: bytes) -> bool:
        """Read and answer until the end (False), or, on a non-blocking socket, until nothing
        is left to read (True). ``sock.recv`` allocates its buffer only once data is there:
        an idle connection holds no read buffer.

        Under gevent ``recv`` returns at once while data is waiting, so a client
        sending at full speed would never let the others run: the session is fed
        :data:`FEED_SIZE` bytes at a time, or one larger frame (as much of it as
        this read holds), and once the pieces took :data:`TURN` the connection
        waits for the others. (Time spent waiting in ``recv``, when the others
        run anyway, is not told apart: at worst a turn ends early.)
        """
        session = self.session
        hub = self.hub
        busy = 0.0  # seconds spent on this client's input since the others had a turn
        while self.state is not CLOSED:
            if not data:
                try:
                    data = self.sock.recv(READ_SIZE)
                except BlockingIOError:  # all read: the watcher waits for more
                    return True
                except (OSError, ValueError):  # reset, or the socket was closed under us
                    return False
                if not data:
                    session.receive_eof()
                    return False
            self.last_seen = time.monotonic()
            offset = 0
            hub.gather()  # what this read publishes is queued together (see MessageServer)
            try:
                while offset < len(data) and self.state is not CLOSED:
                    piece = data[offset : offset + FEED_SIZE]
                    # one larger frame: as much of it as was read (all of it, past FEED_SIZE)
                    if len(data) - offset > FEED_SIZE:
                        remaining = session.frame_remaining(piece)
                        if remaining > FEED_SIZE:
                            piece = data[offset : offset + remaining]
                    offset += len(piece)
                    started = time.perf_counter()
                    self._receive(mode, piece)
                    if session.finished:
                        self._finish_writes_and_close()
                        return False
                    busy += time.perf_counter() - started
                    if busy >= TURN:  # a burst: this loop reads on until the socket is empty
                        hub.release()
                        try:
                            let_others_run(more_input=True)
                        finally:
                            hub.gather()
                        busy = 0.0
            finally:
                hub.release()
            data = b""
        return False

    def _receive(self, mode: Mode, data: bytes) -> None:
        """Parse a piece of input; relay the messages it completes, answer what it asks."""
        for message in self.session.receive_data(data):
            if message.replies:
                self._queue_pongs(message.replies)  # pongs the client asked for first
            if self.state is not OPEN:
                break
            self.received += 1
            mode.receive(self, message)
        self._queue_session_output()

    # -- subscriptions ----------------------------------------------------------------

    def subscribe(
        self, channel: str, since: MessageId | None, encoder: Encoder, *, echo: bool = True
    ) -> History:
        """Subscribe to ``channel`` (again, from ``since``, if already subscribed), its
        messages framed by ``encoder`` (see :mod:`wsrelay.websocket.encoders`), compressed
        if this connection negotiated it."""
        if not self.unsubscribe(channel):
            self.subscribed += 1
        subscription = Subscription(self, channel, compressed(encoder, self.deflater), echo=echo)
        self.subscriptions[channel] = subscription
        try:
            return self.hub.subscribe(subscription, since)
        except BaseException:
            del self.subscriptions[channel]
            raise

    def unsubscribe(self, channel: str) -> bool:
        subscription = self.subscriptions.pop(channel, None)
        if subscription is None:
            return False
        self.hub.unsubscribe(subscription)
        return True

    def revoke(self, channel: str, reason: str) -> bool:
        """The application takes ``channel`` from this connection (its mode says how); True
        when that ended a subscription."""
        return self._mode is not None and self._mode.revoke(self, channel, reason)

    def _unsubscribe_all(self) -> None:
        for channel in list(self.subscriptions):
            self.unsubscribe(channel)

    def send(self, frame: bytes) -> None:
        """Queue a frame of this connection's own (an ack, an error)."""
        state = self.state
        if state is OPEN or state is OPENING:
            self.hub.send(self, frame)

    def ping(self) -> None:
        """Queue a ping (the hub's heartbeat asks): the client's pong, like anything it
        sends, shows it is still there."""
        self.send(PING_FRAME)

    # -- writing ----------------------------------------------------------------------

    def push(self, frame: bytes) -> None:
        """Queue a frame (called by the hub); close the connection if it cannot keep up."""
        state = self.state
        if state is not OPEN and state is not OPENING:
            return
        outbox = self.outbox
        if not outbox.push(frame):
            self._too_slow()
        elif outbox.size >= WRITE_SIZE and self.writer is None:
            self.flush()  # a publisher that never yields must not fill fast readers' queues

    def flush(self) -> None:
        """Write queued bytes without blocking; leave the rest to a writer greenlet."""
        state = self.state
        if self.writer is not None or state is CLOSED or state is OPENING:
            return
        try:
            if not self._write_some():
                self.writer = gevent.spawn(self._drain)
        except OSError:
            self.abort()

    def _write_some(self) -> bool:
        """Write what the socket takes now; True once the queue is empty. Nothing can yield
        between ``peek`` and ``consume``, so what the outbox drops meanwhile (pongs
        replaced, frames a 1013 drops) is never being written.

        A plain gevent socket is written through the OS socket it wraps (always
        non-blocking underneath; gevent's ``send`` is a Python frame around the same call);
        any other kind (a TLS socket) through its own ``send``."""
        outbox = self.outbox
        if not outbox.size:
            return True
        sock = self.sock
        raw = sock._sock if type(sock) is GeventSocket else None  # type: ignore[attr-defined]
        stats = self.hub.stats
        while True:
            data = outbox.peek()
            try:
                # gevent's send takes a timeout (types-gevent declares the stdlib's send)
                written = (raw.send(data) if raw is not None
                           else sock.send(data, 0, 0.0))  # type: ignore[call-arg]
            except (BlockingIOError, InterruptedError):
                written = 0
            outbox.consume(written)
            stats.writes += 1
            if written:
                stats.bytes_sent += written
                self.written = time.monotonic()
            if written < len(data):
                return False
            if not outbox.size:
                return True

    def _drain(self) -> None:
        """Wait for the socket to take the rest of the queue (only for slow sockets)."""
        try:
            while self.state is not CLOSED and not self._write_some():
                wait_write(self.sock.fileno())
        except OSError:
            self.abort()
        finally:
            self.writer = None

    def _queue_session_output(self) -> None:
        pongs, close, _eof = self.session.take_output()
        if pongs:
            self._queue_pongs(pongs)
        if close:
            self.hub.settle()  # what it published before goes out before the close frame
            self.outbox.push(close)  # past the buffer limit: the last frame must go out
            self.flush()

    def _queue_pongs(self, pongs: bytes) -> None:
        """Write pongs now, after what the socket takes of the queue; those it cannot take
        yet wait ahead of the rest, replaced by newer ones (see :meth:`Outbox.push_pongs`)."""
        self.flush()
        if not self.outbox.push_pongs(pongs):
            self._too_slow()
        self.flush()

    def _too_slow(self) -> None:
        self.hub.stats.slow_consumer_closes += 1
        self.close(CloseCode.TRY_AGAIN_LATER, "too slow: outbound buffer full")

    # -- closing ------------------------------------------------------------------------

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake; the peer has ``close_timeout`` to answer."""
        if self.state is OPENING:  # no frame may go out before the 101
            self._pending_close = (code, reason)
            return
        if self.state is not OPEN:
            return
        self.state = CLOSING
        self._unsubscribe_all()
        if code == CloseCode.TRY_AGAIN_LATER:
            self.outbox.drop_unstarted()
        self.session.close(code, reason)
        self._queue_session_output()
        self._abort_timer = gevent.get_hub().loop.timer(self.close_timeout)
        self._abort_timer.start(gevent.spawn_raw, self.abort)

    def abort(self) -> None:
        """Drop the connection now: no handshake, socket closed, resources freed."""
        if self.state is CLOSED:
            return
        self.state = CLOSED
        self._unsubscribe_all()
        self._close_socket()
        if not self._reading:  # it waited in its watcher: nobody else will release it
            self._release()

    def _finish_writes_and_close(self) -> None:
        """The closing handshake is done: let the last frames out, then close TCP."""
        if self.state is OPEN:  # no frame may follow the close frame
            self.state = CLOSING
            self._unsubscribe_all()
        writer = self.writer
        if writer is not None:
            writer.join(self.close_timeout)
        self.state = CLOSED
        self._close_socket()

    def _close_socket(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:  # before the socket: its descriptor may be reused at once
            watcher.close()
        writer, self.writer = self.writer, None
        if writer is not None and writer is not gevent.getcurrent():
            writer.kill(block=False)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def _log_close(self) -> None:
        """One line per connection: what it did and how it ended (no payloads, no tokens)."""
        code = self.session.close_code or 1006  # 1006: it ended without a close frame
        self.hub.stats.closes[code] += 1
        fields = {
            "connection": self.id, "transport": "websocket", "channels": self.subscribed,
            "messages_in": self.received, "messages_out": self.sent, "close_code": code,
            "reason": self.session.close_reason,
            "duration": round(time.monotonic() - self.opened, 3),
        }
        log.info(
            "websocket %(connection)s closed %(close_code)s %(reason)r after %(duration)ss: "
            "%(messages_in)d in, %(messages_out)d out", fields, extra=fields,
        )

    def _release(self) -> None:
        if self._abort_timer is not None:
            self._abort_timer.close()
            self._abort_timer = None
        if self._expiry is not None:
            self._expiry.close()
            self._expiry = None
        self._unsubscribe_all()
        self.hub.detach(self)
        if self.state is not CLOSED:
            self.state = CLOSED
            self._close_socket()
        self._log_close()
        self.outbox = Outbox(0)  # frees what was still queued
        self._mode = None
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end()
