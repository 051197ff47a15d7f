"""gevent-websocket's handler, taught to let the application answer before the 101.

The stock ``WebSocketHandler`` completes the handshake before the Flask app
runs, so a view can no longer refuse with an HTTP status. ``RelayHandler``
hands the view a :class:`DeferredWebSocket` in ``environ['wsgi.websocket']``
instead: the view checks channel, origin and token, then either returns an
ordinary error response or calls :meth:`DeferredWebSocket.accept`, which
writes the 101 and gives it the socket.
"""

from __future__ import annotations

import socket
from typing import Any

from gevent.pywsgi import WSGIHandler
from geventwebsocket.handler import WebSocketHandler

from .handshake import accept_key, is_upgrade_request, switching_protocols


class DeferredWebSocket:
    """An upgrade request the application has not answered yet."""

    def __init__(self, handler: RelayHandler) -> None:
        self._handler = handler
        self.accepted = False

    def accept(self, subprotocol: str | None = None) -> tuple[socket.socket, Any]:
        """Write the 101 and return the socket and its buffered reader.

        Raise :class:`~wsrelay.errors.ApiError` when the handshake is invalid.
        """
        handler = self._handler
        response = switching_protocols(accept_key(handler.environ), subprotocol)
        handler.socket.sendall(response)
        handler.upgraded = True
        handler.status = "101 Switching Protocols"
        handler.headers_sent = True
        handler.close_connection = True
        handler.response_length = len(response)
        self.accepted = True
        return handler.socket, handler.rfile


class RelayHandler(WebSocketHandler):
    """A ``WebSocketHandler`` whose upgrade is decided by the application."""

    upgraded = False

    def run_application(self) -> None:
        if is_upgrade_request(self.environ):
            self.environ["wsgi.websocket"] = DeferredWebSocket(self)
        self.upgraded = False
        try:
            WSGIHandler.run_application(self)
        finally:
            self.environ.pop("wsgi.websocket", None)

    def start_response(self, status, headers, exc_info=None):
        if self.upgraded:  # the view returned after its WebSocket ended
            return lambda data: None
        return WSGIHandler.start_response(self, status, headers, exc_info)

    def process_result(self) -> None:
        if not self.upgraded:
            WSGIHandler.process_result(self)

    def log_request(self) -> None:
        if not self.upgraded:
            WSGIHandler.log_request(self)
