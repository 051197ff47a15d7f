"""A keep-alive connection whose request waits, held by libev watchers instead of a greenlet.

A long-poll that found nothing waits for a message, and between two polls its
connection waits for the next request. A greenlet with its stack for each of
those waits, and a switch into it and out again for every answer and every
request, cost more than the poll's own work. So once the front has a request
whose answer must wait (a direct-path application returned a :class:`Pending`),
the connection leaves its greenlet, the way an upgraded WebSocket does: its
descriptor is detached from the server's socket, and :class:`ParkedConnection`
holds it with an io watcher (a client that hangs up is noticed at once: its
pending answer is abandoned, nothing is sent) and a timer (the answer's
timeout). The answer is sent from the event loop when its ``ready`` event is
set (the hub's flusher sets it, once per batch of deliveries), with one
non-blocking send. Then the connection waits for its next request in the
watcher, within ``WSRELAY_HTTP_IDLE_TIMEOUT`` (closed quietly after it, or at
once when the server stops); when one arrives a greenlet is started that runs
the handler's usual path from the same buffer, so every request, whatever it
is, is answered as before.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event
from gevent.socket import socket as GeventSocket

from .front import RECEIVE_SIZE, SocketReader
from .keep_alive import keep_alive

if TYPE_CHECKING:
    from .handler import RelayHandler

#: In a request's environ when its server can hold the connection while an answer waits:
#: a direct-path application may then return a :class:`Pending` instead of a body.
PARK_KEY = "wsrelay.park"

_READ = 1  # libev's EV_READ
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


class Pending:
    """An answer that comes later: sent once ``ready`` is set or ``timeout`` seconds pass."""

    __slots__ = ("ready", "timeout")

    def __init__(self, ready: Event, timeout: float) -> None:
        self.ready = ready
        self.timeout = timeout

    def respond(self) -> tuple[str, list[tuple[str, str]], bytes]:
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


class ParkedConnection:
    """A connection between its handler's greenlets: its answer waits, or it waits for its
    next request (see the module)."""

    __slots__ = ("_close_after", "_pending", "_raw", "_timer", "_watcher", "handler", "reader",
                 "sock")

    def __init__(self, handler: RelayHandler, sock: GeventSocket, reader: SocketReader,
                 pending: Pending, close_after: bool) -> None:
        self.handler = handler
        self.sock = sock
        self._raw = getattr(sock, "_sock", sock)  # the OS socket: sends never wait here
        self.reader = reader
        self._pending: Pending | None = pending
        self._close_after = close_after
        loop = gevent.get_hub().loop
        self._watcher = loop.io(sock.fileno(), _READ)
        self._watcher.start(self._peek)
        self._timer = loop.timer(pending.timeout)
        self._timer.start(self._respond)
        pending.ready.rawlink(self._respond)

    # -- the answer waits --------------------------------------------------------------

    def _peek(self) -> None:
        """Readable while the answer waits: a client that left ends it; data (a pipelined
        request) stops the watch, and waits for the answer to go first."""
        left = client_left(self._raw)
        if left is None:
            return
        self._watcher.stop()
        if left:
            pending, self._pending = self._pending, None
            if pending is not None:
                pending.ready.unlink(self._respond)
                pending.abandon()
            self.close()

    def _respond(self, _event: Any = None) -> None:
        """In the event loop, once: send the answer in one non-blocking send, then wait for
        the next request (or close)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        pending.ready.unlink(self._respond)
        self._timer.close()
        self._watcher.stop()
        status, headers, body = pending.respond()
        response, ending = self.handler.response(status, headers, body)
        try:
            sent = self._raw.send(response)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()
            return
        self.handler.log_answer(status, len(response))
        keep = not (self._close_after or ending)
        if sent < len(response):  # a full socket buffer: a greenlet waits to send the rest
            gevent.spawn_raw(self._send_rest, response[sent:], keep)
        elif keep:
            self._await_request()
        else:
            self.close()

    def _send_rest(self, rest: bytes, keep: bool) -> None:
        try:
            self.sock.sendall(rest)
        except OSError:
            keep = False
        if keep:
            self._await_request()
        else:
            self.close()

    # -- waiting for the next request --------------------------------------------------

    def _await_request(self) -> None:
        if self.reader.buffer:  # pipelined: it is here already
            self._resume()
            return
        application = self.handler.server.application
        connections = keep_alive(application)
        if connections.ending:
            self.close()
            return
        self.handler.idle_from = time.monotonic()
        connections.add(self.sock)
        self._timer = gevent.get_hub().loop.timer(self.handler.idle_limit())
        self._timer.start(self.close)
        self._watcher.start(self._readable)

    def _readable(self) -> None:
        """The next request begins (or the client leaves): read what came, then serve it in
        a greenlet."""
        try:
            data = self._raw.recv(RECEIVE_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self.reader.buffer += data
        self._stop_waiting()
        self._resume()

    def _resume(self) -> None:
        self._watcher.close()
        gevent.spawn_raw(self.handler.resume, self.sock, self.reader)

    def _stop_waiting(self) -> None:
        keep_alive(self.handler.server.application).discard(self.sock)
        self._timer.close()
        self._watcher.stop()

    def close(self) -> None:
        """Close the connection (watchers first: the descriptor may be reused at once)."""
        self._stop_waiting()
        self._watcher.close()
        self.reader.close()
        with contextlib.suppress(OSError):
            self.sock.close()
