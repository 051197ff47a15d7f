"""``GET /ws/<channel>``: raw-mode WebSocket, refused before the 101 when it must be."""

from __future__ import annotations

import contextlib
import time

from flask import Response, current_app, request
from geventwebsocket.websocket import WebSocket

from ..auth import SUBSCRIBE
from ..connection import WebSocketConnection
from ..errors import ApiError
from ..handler import DeferredWebSocket
from ..protocol import CloseCode, close_frame
from .common import admit, checked_since, client_address, occupy, relay


def upgrade(channel: str) -> Response:
    """Check the request, accept it, then relay until the socket ends.

    The client needs the right to subscribe; whether what it sends is
    published depends on its right to publish (without it, its first
    message closes the connection with 1008).
    """
    ws = request.environ.get("wsgi.websocket")
    with contextlib.ExitStack() as held:
        try:
            if ws is None:
                raise ApiError(
                    501, "websocket_unsupported",
                    "this server cannot upgrade: run manage.py serve or the gevent-websocket "
                    "worker",
                )
            access = admit(channel, SUBSCRIBE)
            since = checked_since(request.args.get("since"))
            echo = request.args.get("echo", "1") != "0"
            held.callback(occupy(stream=False))
            if isinstance(ws, DeferredWebSocket):
                sock, rfile = ws.accept()
            else:  # the stock gevent-websocket handler upgraded before we could look
                sock, rfile = ws.handler.socket, ws.handler.rfile
        except ApiError as exc:
            if ws is None or isinstance(ws, DeferredWebSocket):
                return exc.response()
            _refuse_upgraded(ws, exc)
            return Response(status=204)
        config = current_app.config
        connection = WebSocketConnection(
            sock, rfile, relay().hub, access.channel, echo=echo,
            max_message_size=config["WSRELAY_MAX_MESSAGE_SIZE"],
            buffer_limit=config["WSRELAY_SUBSCRIBER_BUFFER"],
            close_timeout=config["WSRELAY_CLOSE_TIMEOUT"],
            may_publish=access.may_publish,
            publish_limit=relay().limits.publish_bucket(client_address(), time.monotonic()),
            expires=access.expires,
        )
        connection.run(since)
    if isinstance(ws, WebSocket):
        ws.closed = True  # our connection already closed it; the stock handler must not
    return Response(status=204)


def not_upgraded(channel: str) -> Response:
    """A plain request on a WebSocket endpoint."""
    if request.headers.get("Upgrade"):
        raise ApiError(
            400, "bad_handshake", "a WebSocket handshake needs 'Connection: Upgrade'"
        )
    raise ApiError(
        426, "upgrade_required", "this endpoint speaks WebSocket only",
        headers={"Upgrade": "websocket", "Sec-WebSocket-Version": "13"},
    )


def _refuse_upgraded(ws: WebSocket, exc: ApiError) -> None:
    """Under the stock handler the 101 is already sent: refuse with a close frame."""
    code = CloseCode.POLICY_VIOLATION if exc.status < 500 else CloseCode.INTERNAL_ERROR
    with contextlib.suppress(OSError):
        ws.handler.socket.sendall(close_frame(code, exc.message))
    ws.closed = True

