"""Keep-alive connections between two requests, ended at once when their server stops.

An HTTP/1.1 connection waits for its next request up to the idle timeout.
A stopping server has no use for it, and a stopping gunicorn worker waits for
every connection it holds, so an idle one would keep the worker until its
graceful timeout: :func:`end_keep_alive` closes the waiting ones now and lets
the others wait for no further request (their answer says
``Connection: close``). ``RelayHandler`` registers each wait here; the relay
ends them when it drains.
"""

from __future__ import annotations

import contextlib
import socket
import weakref
from collections.abc import Iterator
from typing import Any


class KeepAlive:
    """The connections of one application that wait for their next request; ``ending``
    once the application stops."""

    def __init__(self) -> None:
        self.ending = False
        self._waiting: set[Any] = set()

    @contextlib.contextmanager
    def waiting(self, sock: Any) -> Iterator[None]:
        self._waiting.add(sock)
        try:
            yield
        finally:
            self._waiting.discard(sock)

    def add(self, sock: Any) -> None:
        """``sock`` (anything with a socket's ``shutdown``: a parked connection, see
        :mod:`wsrelay.server.parked`) is told to end by :meth:`end` until :meth:`discard`."""
        self._waiting.add(sock)

    def discard(self, sock: Any) -> None:
        self._waiting.discard(sock)

    def end(self) -> None:
        self.ending = True
        for sock in list(self._waiting):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)  # wakes the read: the connection closes


_keep_alive: weakref.WeakKeyDictionary[Any, KeepAlive] = weakref.WeakKeyDictionary()


def keep_alive(application: Any) -> KeepAlive:
    """The keep-alive connections served to ``application`` (a WSGI app)."""
    try:
        return _keep_alive[application]
    except KeyError:
        instance = _keep_alive[application] = KeepAlive()
        return instance
    except TypeError:  # an app that cannot be weakly referenced: not ended early
        return KeepAlive()


def end_keep_alive(application: Any) -> None:
    """Close the connections of ``application`` that wait for their next request, and end
    the others after their current response (``Connection: close``)."""
    keep_alive(application).end()
