"""A keep-alive connection between requests, held by libev watchers instead of a greenlet.

A long-poll that found nothing waits for a message, and between two polls its
connection waits for the next request. A greenlet with its stack for each of
those waits, and a switch into it and out again for every answer and every
request, cost more than the poll's own work. So the connection leaves its
greenlet, the way an upgraded WebSocket does, once the front has a request whose
answer must wait (a direct-path application returned a :class:`Pending`) or has
sent a direct-path answer: its descriptor is detached from the server's socket,
and a :class:`ParkedConnection` holds it with an io watcher and a timer.

While an answer waits, the timer is its timeout and the watcher peeks: a client
that hangs up is noticed at once (the answer is abandoned, nothing is sent). The
answer goes out in one non-blocking send when the pending answer calls back (a
held poll: from the hub's flusher, once per batch of deliveries). Then the
connection waits for its next request, within ``WSRELAY_HTTP_IDLE_TIMEOUT``
(closed quietly after it, or at once when the server stops). A request that the
direct path can answer without waiting is read and answered in the watcher's
callback, by the handler's own code (first by its :class:`~wsrelay.server.lane.Lane`
when the request repeats the last one); anything else starts a greenlet that runs
the handler's usual path from the same buffer, so every request is answered as
before.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import gevent
from gevent.socket import socket as GeventSocket

from .front import RECEIVE_SIZE, SocketReader
from .keep_alive import keep_alive

if TYPE_CHECKING:
    from .handler import RelayHandler
    from .lane import Lane

#: In a request's environ when its server can hold the connection while an answer waits:
#: a direct-path application may then return a :class:`Pending` instead of a body. Its value
#: is :data:`IN_LOOP` when the request is read in the event loop: the application must then
#: not wait for anything (nor take it).
PARK_KEY = "wsrelay.park"
IN_LOOP = "loop"

log = logging.getLogger(__name__)
_READ = 1  # libev's EV_READ
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


class Pending:
    """An answer that comes later: sent once it calls what :meth:`wake_with` gave it, or
    ``timeout`` seconds pass."""

    __slots__ = ("timeout",)

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def wake_with(self, respond: Callable[[], None]) -> None:
        """Call ``respond`` (without blocking: in the event loop or the hub's flusher) once
        the answer should go; a call after the answer went is ignored."""
        raise NotImplementedError

    def respond(self) -> tuple[str, Sequence[tuple[str, str]], bytes]:
        """The answer now (status, headers, body); it must not raise nor block."""
        raise NotImplementedError

    def abandon(self) -> None:
        """The client left before its answer: let go of what the answer held."""
        raise NotImplementedError


def client_left(sock: Any) -> bool | None:
    """Peek at a socket that turned readable, without blocking: True when its client has
    gone (end of file, or a reset), False when data came, None when nothing did."""
    try:
        data = sock.recv(1, _PEEK)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return True
    return not data


#: The last answer sent, whether its server was stopping, and its bytes.
_last_response: tuple[Any, bool, bytes] = (None, False, b"")


class ParkedConnection:
    """A connection between its handler's greenlets: its answer waits (:meth:`hold`), or it
    waits for its next request (:meth:`await_request`); see the module.

    A long-poll client goes through both waits on every message, so they cost no more than
    they must: one io watcher serves both, started once and left running from one to the
    other (stopped only while a pipelined request or the rest of an answer waits), and one
    timer keeps both deadlines. A wait that ends only notes its deadline (:meth:`_due`); the
    timer is made again only when a wait must end before it fires, and when it fires early
    (the wait it was made for is over) it is made again for the current one. So a client
    answered within its timeout costs no timer at all."""

    __slots__ = ("_close_after", "_connections", "_deadline", "_fires_at", "_idle_limit",
                 "_logs", "_pending", "_raw", "_timer", "_watcher", "handler", "reader", "sock")

    def __init__(self, handler: RelayHandler, sock: GeventSocket, reader: SocketReader) -> None:
        self.handler = handler
        self.sock = sock
        self._raw = getattr(sock, "_sock", sock)  # the OS socket: sends never wait here
        self.reader = reader
        self._pending: Pending | None = None
        self._close_after = False
        self._connections = keep_alive(handler.server.application)
        self._connections.add(self)  # for as long as it is parked: see :meth:`shutdown`
        loop = gevent.get_hub().loop
        self._watcher: Any = loop.io(sock.fileno(), _READ)
        self._idle_limit = handler.idle_limit()
        self._logs = handler.logs()
        self._deadline = math.inf  # when the current wait ends (monotonic)
        self._fires_at = math.inf  # when the timer fires
        self._timer: Any = None

    def _due(self, deadline: float) -> None:
        """The current wait ends at ``deadline``."""
        self._deadline = deadline
        if deadline < self._fires_at:
            self._arm(deadline)

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.close()
        self._timer = gevent.get_hub().loop.timer(max(0.0, at - time.monotonic()))
        self._timer.start(self._on_timer)
        self._fires_at = at

    def _on_timer(self) -> None:
        """The earliest deadline came: the current wait is over, or it ends later."""
        self._timer.close()
        self._timer = None
        self._fires_at = math.inf
        if self._deadline == math.inf:
            return  # neither waits: the answer is being sent, or a request served
        if time.monotonic() < self._deadline:
            self._arm(self._deadline)
        elif self._pending is not None:
            self._deadline = math.inf
            # in a greenlet: letting a poll go may talk to the broker (the last subscriber
            # of a channel unsubscribes on Redis), which the event loop itself cannot wait for
            gevent.spawn_raw(self._respond)
        else:
            self.close()  # no request came within the idle timeout

    def _watch(self) -> None:
        if not self._watcher.active:
            self._watcher.start(self._input)

    def _input(self) -> None:
        """The socket turned readable: while an answer waits, see whether its client left;
        else the next request begins."""
        if self._pending is not None:
            self._peek()
        else:
            self._readable()

    # -- the answer waits --------------------------------------------------------------

    def hold(self, pending: Pending, close_after: bool) -> None:
        """Answer when ``pending`` is ready or its timeout passes; ``close_after``: the
        request said ``Connection: close``."""
        self._pending = pending
        self._close_after = close_after
        self._due(time.monotonic() + pending.timeout)
        self._watch()
        pending.wake_with(self._respond)

    def _peek(self) -> None:
        """Readable while the answer waits: a client that left ends it; data (a pipelined
        request) stops the watch, and waits for the answer to go first."""
        left = client_left(self._raw)
        if left is None:
            return
        self._watcher.stop()
        if left:
            pending, self._pending = self._pending, None
            self.close()
            if pending is not None:
                gevent.spawn_raw(pending.abandon)  # as the timer's answer: in a greenlet

    def _respond(self) -> None:
        """In the event loop or the hub's flusher, once: send the answer, then wait for the
        next request."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        self._deadline = math.inf
        try:
            self._send(pending.respond(), self._close_after)
        except Exception:  # not left open without a watcher
            log.exception("a held answer failed")
            self.close()

    def _send(self, answer: tuple[str, Sequence[tuple[str, str]], bytes], close_after: bool
              ) -> None:
        """Send ``answer`` in one non-blocking send (a greenlet sends what the socket could
        not take), then wait for the next request, or close."""
        global _last_response
        status, headers, body = answer
        ending = self._connections.ending
        last = _last_response
        if last[0] is answer and last[1] is ending:  # the polls a flush wakes share their answer
            response = last[2]
        else:
            response, ending = self.handler.response(status, headers, body)
            _last_response = (answer, ending, response)
        try:
            sent = self._raw.send(response)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()
            return
        self.handler.log_answer(status, len(response))
        keep = not (close_after or ending)
        if sent < len(response):  # a full socket buffer: a greenlet waits to send the rest
            self._watcher.stop()
            gevent.spawn_raw(self._send_rest, response[sent:], keep)
        elif keep:
            self.await_request()
        else:
            self.close()

    def _send_rest(self, rest: bytes, keep: bool) -> None:
        try:
            self.sock.sendall(rest)
        except OSError:
            keep = False
        if keep:
            self.await_request()
        else:
            self.close()

    # -- waiting for the next request --------------------------------------------------

    def await_request(self) -> None:
        """Wait for the next request in the watcher, within the idle timeout."""
        if self.reader.buffer:  # pipelined: it is here already, served after the others' turn
            self._watcher.stop()
            gevent.get_hub().loop.run_callback(self._serve_next)
            return
        connections = self._connections
        if connections.ending:
            self.close()
            return
        self.handler.idle_from = now = time.monotonic()
        self._due(now + self._idle_limit)
        self._watch()

    def _readable(self) -> None:
        """The next request begins (or the client leaves): read what came, then serve it."""
        try:
            data = self._raw.recv(RECEIVE_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self._deadline = math.inf
        lane = self.handler.lane
        if lane is not None and not self.reader.buffer and not self._connections.ending:
            answer = self._repeat(lane, data)
            if answer is not None:
                self._proceed(answer, lane.close)
                return
        self.reader.buffer += data
        self._serve_next()

    def _serve_next(self) -> None:
        """Answer the next request here in the event loop when the direct path can, else
        in a greenlet that runs the handler's usual path from the same buffer."""
        if self._connections.ending:
            self.close()
            return
        handler = self.handler
        try:
            taken = self._take_next()
        except Exception:
            log.exception("the direct path failed in the event loop")
            self.close()
            return
        if taken is None:
            self._stop_watching()
            gevent.spawn_raw(handler.resume, self.sock, self.reader)
            return
        self._proceed(*taken)

    def _proceed(self, answer: Any, close_after: bool) -> None:
        """Hold what the direct path took, or send it."""
        if isinstance(answer, Pending):
            self.hold(answer, close_after)
        else:
            self._send(answer, close_after)

    def _take_next(self) -> tuple[Any, bool] | None:
        """What the direct path took of the next request (see :meth:`_serve_next`), and
        whether the connection closes after it: a repeat of the last request by its lane."""
        lane = self.handler.lane
        buffer = self.reader.buffer
        if lane is not None:
            answer = self._repeat(lane, bytes(buffer))
            if answer is not None:
                del buffer[:]
                return answer, lane.close
        return self.handler.serve_in_loop(self.reader)

    def shutdown(self, how: int) -> None:
        """The server stops (:mod:`~wsrelay.server.keep_alive`): a connection waiting for its
        next request is woken to close; an answer that waits goes first, and says
        ``Connection: close``."""
        if self._pending is None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(how)

    def _repeat(self, lane: Lane, data: bytes) -> Any:
        """What ``lane`` took of ``data``, if it is a repeat of the last request (all of it)."""
        answer = lane.take(data)
        if answer is not None and self._logs:
            self.handler.repeated(lane.request_line())
        return answer

    def _stop_watching(self) -> None:
        """Watchers and timers go (the descriptor may be reused at once)."""
        self._connections.discard(self)
        self._watcher.close()
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        self._fires_at = math.inf

    def close(self) -> None:
        """Close the connection (watchers first: the descriptor may be reused at once)."""
        self._stop_watching()
        self.reader.close()
        with contextlib.suppress(OSError):
            self.sock.close()
