"""``GET /ws/<channel>`` and ``GET /ws``: WebSocket, refused before the 101 when it must be.

Raw mode (the default) relays one channel. A client that offers the
``wsrelay.v1`` subprotocol speaks JSON requests instead, on ``/ws`` or on
``/ws/<channel>`` (then already subscribed to that channel).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from flask import Flask, Response, current_app, request
from geventwebsocket.websocket import WebSocket

if TYPE_CHECKING:
    from werkzeug.local import LocalProxy

from ..auth import PUBLISH, SUBSCRIBE
from ..errors import ApiError
from ..websocket.connection import Mode
from ..websocket.envelopes import SUBPROTOCOL
from ..websocket.handshake import Deflate, negotiate_deflate
from ..websocket.modes import JsonMode, Policy, RawMode
from ..websocket.protocol import CloseCode, close_frame
from ..websocket.upgrade import DeferredWebSocket, take_socket
from .checks import admit, admit_channel, admit_client, checked_since, occupy, publisher, relay


def upgrade(channel: str | None = None) -> Response:
    """Check the request, accept it, then let the connection serve the socket.

    The client needs the right to subscribe to the URL's channel; in raw
    mode whether what it sends is published depends on its right to publish
    (without it, its first message closes the connection with 1008). Under
    wsrelay's handler the view returns once the connection is open and waits for
    input (see :meth:`~wsrelay.websocket.upgrade.DeferredWebSocket.detach`), so
    nothing may need this request afterwards.
    """
    ws = request.environ.get("wsgi.websocket")
    try:
        if ws is None:
            raise ApiError(
                501, "websocket_unsupported",
                "this server cannot upgrade: run manage.py serve or the gevent-websocket "
                "worker",
            )
        json = SUBPROTOCOL in _offered_subprotocols()
        mode: Mode
        if channel is None and not json:
            raise ApiError(
                400, "channel_required",
                f"raw mode relays one channel: /ws/<channel>, or offer {SUBPROTOCOL}",
            )
        access = admit(channel, SUBSCRIBE) if channel is not None else admit_client()
        since = checked_since(request.args.get("since"))
        rate = publisher(access.claims)
        if json:
            policy = Policy(_checks_after_the_request(), rate,
                            current_app.config["WSRELAY_MAX_SUBSCRIPTIONS"])
            mode = JsonMode(policy, (access.channel, since) if channel is not None else None,
                            max_data=current_app.config["WSRELAY_MAX_MESSAGE_SIZE"])
        else:
            echo = request.args.get("echo", "1") != "0"
            mode = RawMode(access.channel, since, may_publish=_may_publish(access.channel),
                           rate=rate, echo=echo)
        compression = negotiate_compression(ws)
        leave = occupy(stream=False)
        try:
            taken = take_socket(ws, SUBPROTOCOL if json else None, detach=True,
                                extensions=compression and compression[0])
            connection = relay().open_connection(
                taken.sock, expires=access.expires, json=json,
                deflate=compression and compression[1],
            )
        except BaseException:
            leave()
            raise
    except ApiError as exc:
        if ws is None or isinstance(ws, DeferredWebSocket):
            return exc.response()
        _refuse_upgraded(ws, exc)
        return Response(status=204)
    # once ended, the connection gives up its place in the per-IP count
    taken.serve(functools.partial(connection.run, mode, taken.handshake, taken.pending,
                                  on_end=leave, watch=taken.detached))
    return Response(status=204)


def negotiate_compression(ws: object) -> tuple[str, Deflate] | None:
    """permessage-deflate as agreed with the request's client: the
    ``Sec-WebSocket-Extensions`` to answer and the parameters; None when declined, turned
    off (``WSRELAY_COMPRESSION``), or the 101 is out already (gevent-websocket's stock
    handler). ApiError 400 for a malformed offer."""
    if not current_app.config["WSRELAY_COMPRESSION"] or not isinstance(ws, DeferredWebSocket):
        return None
    return negotiate_deflate(request.headers.get("Sec-WebSocket-Extensions", ""))


def _may_publish(channel: str) -> bool:
    """The raw client's right to publish to its channel, decided while its request is here."""
    try:
        admit_channel(channel, PUBLISH)
    except ApiError:
        return False
    return True


def _checks_after_the_request() -> Callable[[str, str], object]:
    """``admit_channel`` for the channels a ``wsrelay.v1`` client names later, once its
    request has ended: run in a request context rebuilt from a copy of this request's
    environ, its CGI variables and headers (not its streams, socket or objects)."""
    app = cast("LocalProxy[Flask]", current_app)._get_current_object()
    environ = {key: value for key, value in request.environ.items() if isinstance(value, str)}

    def check(channel: str, action: str) -> object:
        with app.request_context(environ):
            return admit_channel(channel, action)

    return check


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

