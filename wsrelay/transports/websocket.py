"""``GET /ws/<channel>`` and ``GET /ws``: WebSocket, refused before the 101 when it must be.

Raw mode (the default) relays one channel. A client that offers the
``wsrelay.v1`` subprotocol speaks JSON requests instead, on ``/ws`` or on
``/ws/<channel>`` (then already subscribed to that channel).
"""

from __future__ import annotations

import contextlib
import time

from flask import Response, current_app, request
from geventwebsocket.websocket import WebSocket

from ..auth import SUBSCRIBE
from ..envelopes import SUBPROTOCOL
from ..errors import ApiError
from ..handler import DeferredWebSocket, release_stock, take_socket
from ..modes import JsonMode, Policy, RawMode
from ..protocol import CloseCode, close_frame
from .common import admit, admit_channel, admit_client, checked_since, client_address, occupy, relay


def upgrade(channel: str | None = None) -> Response:
    """Check the request, accept it, then serve the socket until it ends.

    The client needs the right to subscribe to the URL's channel; in raw
    mode whether what it sends is published depends on its right to publish
    (without it, its first message closes the connection with 1008).
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
            json = SUBPROTOCOL in _offered_subprotocols()
            if channel is None and not json:
                raise ApiError(
                    400, "channel_required",
                    f"raw mode relays one channel: /ws/<channel>, or offer {SUBPROTOCOL}",
                )
            access = admit(channel, SUBSCRIBE) if channel is not None else admit_client()
            since = checked_since(request.args.get("since"))
            echo = request.args.get("echo", "1") != "0"
            held.callback(occupy(stream=False))
            sock, rfile, handshake = take_socket(ws, SUBPROTOCOL if json else None)
        except ApiError as exc:
            if ws is None or isinstance(ws, DeferredWebSocket):
                return exc.response()
            _refuse_upgraded(ws, exc)
            return Response(status=204)
        config = current_app.config
        policy = Policy(
            admit_channel,
            relay().limits.publish_bucket(client_address(), time.monotonic()),
            config["WSRELAY_MAX_SUBSCRIPTIONS"],
        )
        if json:
            mode = JsonMode(policy, (access.channel, since) if channel is not None else None)
        else:
            mode = RawMode(access.channel, since, policy, echo=echo)
        relay().open_connection(sock, rfile, expires=access.expires).run(mode, handshake)
    release_stock(ws)
    return Response(status=204)


def _offered_subprotocols() -> set[str]:
    header = request.headers.get("Sec-WebSocket-Protocol", "")
    return {token.strip() for token in header.split(",") if token.strip()}


def app_protocol(path: str) -> str | None:
    """The subprotocol gevent-websocket's stock handler may select (it asks the app by this
    name before its early upgrade); with it, wsrelay.v1 works under the stock worker too."""
    return SUBPROTOCOL if path == "/ws" or path.startswith("/ws/") else None


def not_upgraded(channel: str | None = None) -> Response:
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

