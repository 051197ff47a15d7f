"""Noticing a client that leaves while its long-poll or SSE stream is held.

A held request reads nothing from its socket, so a client that closes or
resets it would only be noticed at the next write: the poll's timeout, or the
SSE stream's next keep-alive. Until then it keeps its place in the worker's
stream count and in its IP's count, and 5,000 aborted long-polls would lock
every other client out. So while a request is held its socket is watched (a
libev watcher, no greenlet): when it turns readable a non-blocking peek tells
a departure (end of file, or a reset) from data (a pipelined request, which
ends the watch), and a departure wakes the held request at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import gevent
from gevent.event import Event

from ..server.parked import client_left

_READ = 1  # libev's EV_READ


class Hangup:
    """Whether the client of a held request has gone (closed or reset its connection)."""

    gone = False
    _watcher: Any = None

    def __init__(self, sock: Any | None, wake: Event) -> None:
        self._wake = wake
        if sock is None or sock.fileno() < 0:  # not handed over, or closed already
            return
        self._sock = getattr(sock, "_sock", sock)  # gevent's socket wraps the OS socket
        self._watcher = gevent.get_hub().loop.io(sock.fileno(), _READ)
        self._watcher.start(self._readable)

    def _readable(self) -> None:
        """In the event loop: peek, never block."""
        left = client_left(self._sock)
        if left is None:
            return  # nothing after all
        self.stop()
        if left:  # end of file or a reset: the client closed its side
            self.gone = True
            self._wake.set()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None


@contextlib.contextmanager
def watch_hangup(sock: Any | None, wake: Event) -> Iterator[Hangup]:
    """Watch ``sock`` while the block runs; set ``wake`` when its client leaves. ``sock`` is
    the request's ``environ[SOCKET_KEY]``, None under a server that does not set it: then
    the client is noticed at the next write, as it always was."""
    hangup = Hangup(sock, wake)
    try:
        yield hangup
    finally:
        hangup.stop()
