"""Taking a WebSocket's socket from the request that asked for it.

Under wsrelay's handler (:mod:`wsrelay.server.handler`) the view finds a
:class:`DeferredWebSocket` in ``environ['wsgi.websocket']``: nothing is
answered yet, so the view can still refuse with an HTTP status. Once its
checks pass it takes the socket (:func:`take_socket`): the 101 is written
once the relay has subscribed, and the connection leaves the request, which
ends (:meth:`DeferredWebSocket.detach`). gevent-websocket's own WebSocket
(the stock handler, which upgraded before the view ran) is taken as it is.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from gevent.socket import socket as GeventSocket

from .handshake import accept_key, switching_protocols


def keeps_tls_state(sock: Any) -> bool:
    """True for a TLS socket: its state lives in its socket object, so its descriptor
    cannot be taken into another (:func:`take_descriptor`)."""
    return hasattr(sock, "_sslobj")


def take_descriptor(sock: Any) -> GeventSocket:
    """A gevent socket object of its own on ``sock``'s descriptor; ``sock`` is left closed without
    closing it, so the server's cleanup (which closes it once the request ends) leaves the
    connection alone. Not for a TLS socket (:func:`keeps_tls_state`)."""
    return GeventSocket(sock.family, sock.type, sock.proto, sock.detach())


class RequestHandler(Protocol):
    """What taking a socket needs of its request's handler: the pywsgi handler attributes
    wsrelay's ``RelayHandler`` has (:mod:`wsrelay.server.handler`)."""

    environ: dict[str, Any]
    #: None once the socket was detached: pywsgi's cleanup then leaves it alone.
    socket: socket.socket | None
    rfile: Any
    server: Any
    upgraded: bool
    status: str
    headers_sent: bool
    close_connection: bool
    response_length: int


class DeferredWebSocket:
    """An upgrade request the application has not answered yet."""

    def __init__(self, handler: RequestHandler) -> None:
        self._handler = handler

    def _socket(self) -> socket.socket:
        sock = self._handler.socket
        if sock is None:
            raise RuntimeError("this WebSocket's socket was taken already")
        return sock

    def prepare(
        self, subprotocol: str | None = None, extensions: str | None = None
    ) -> Callable[[], None]:
        """Check the handshake now (ApiError if it is invalid) and return what writes the
        101 later: a relay subscribes first, so a client that sees the 101 misses nothing.
        ``extensions``: the accepted ``Sec-WebSocket-Extensions``, if any."""
        response = switching_protocols(
            accept_key(self._handler.environ), subprotocol, extensions
        )
        return functools.partial(self._switch, response)

    def _switch(self, response: bytes) -> None:
        self._socket().sendall(response)
        self._mark_upgraded(len(response))

    def detach(
        self, subprotocol: str | None = None, extensions: str | None = None
    ) -> TakenSocket | None:
        """Take the connection out of its request, which then ends without a response and
        reads no further request; None when the socket cannot be duplicated (TLS).

        The request's greenlet, its stacks and the request's objects then go, instead
        of living as long as the connection: most of an idle WebSocket's memory. The
        connection takes the socket's descriptor in a socket object of its own; it opens
        in the request's greenlet, then waits for input in a libev watcher, with no
        greenlet (``TakenSocket.detached``).
        """
        handler = self._handler
        response = switching_protocols(  # ApiError
            accept_key(handler.environ), subprotocol, extensions
        )
        original = self._socket()
        if keeps_tls_state(original):
            return None
        pending = take_buffered(original, handler.rfile)
        # pywsgi's cleanup, too, then leaves it alone (it reads what is left first: the
        # client's first frames)
        sock = take_descriptor(original)
        handler.socket = None
        self._mark_upgraded(len(response))
        return TakenSocket(sock, pending, functools.partial(sock.sendall, response),
                           _serve_here, detached=True)

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


class TakenSocket(NamedTuple):
    """A WebSocket's socket, taken from the request that asked for it."""

    sock: socket.socket
    #: What the request's buffered reader took in past the request head (the first frames).
    pending: bytes
    #: What writes the 101 once the relay has subscribed; None when it is out already.
    handshake: Callable[[], None] | None
    #: ``serve(target)`` runs the connection in the request's greenlet: until it ends, or,
    #: once detached, until it waits for input (then the request ends).
    serve: Callable[[Callable[[], None]], None]
    #: Left its request: the connection may wait for input in a watcher, with no greenlet
    #: (``WebSocketConnection.run(watch=True)``), its socket no longer being the request's.
    detached: bool = False


def take_buffered(sock: socket.socket, rfile: Any) -> bytes:
    """What ``rfile`` took in past the request head, read without waiting; then close it.
    wsrelay's front reader gives what it holds (what is still in the kernel wakes the
    connection's watcher).

    ``sock.recv`` allocates its buffer only once data is there, whereas the
    request's buffered reader keeps its 8 KiB buffer for as long as it lives.
    """
    pending = getattr(rfile, "pending", None)
    if pending is not None:  # wsrelay's front (server/front.py): what it holds, no read
        data: bytes = pending()
        rfile.close()
        return data
    timeout = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        return rfile.read1() or b""  # b"" (or None) when nothing came yet
    except OSError:
        return b""
    finally:
        sock.settimeout(timeout)
        rfile.close()  # the socket stays open


def take_socket(
    ws: Any, subprotocol: str | None = None, *, detach: bool = False,
    extensions: str | None = None,
) -> TakenSocket:
    """The socket behind ``environ['wsgi.websocket']`` and what completes its handshake.

    A deferred one has its handshake checked now (ApiError if invalid) and the
    101 written once subscribed; with ``detach`` it leaves its request
    (:meth:`DeferredWebSocket.detach`). gevent-websocket's own WebSocket was
    upgraded already and stays in its request: the stock handler closes the
    socket when the view returns, so the view serves it until it ends (and
    ``extensions``, the accepted ``Sec-WebSocket-Extensions``, only go in a
    deferred one's 101).
    """
    if isinstance(ws, DeferredWebSocket):
        taken = ws.detach(subprotocol, extensions) if detach else None
        if taken is not None:
            return taken
        handshake = ws.prepare(subprotocol, extensions)
        sock = ws._socket()
        return TakenSocket(sock, take_buffered(sock, ws._handler.rfile), handshake, _serve_here)
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
