"""``GET /ws/<channel>`` and ``GET /ws``: WebSocket, refused before the 101 when it must be.

Raw mode (the default) relays one channel. A client that offers the
``wsrelay.v1`` subprotocol speaks JSON requests instead, on ``/ws`` or on
``/ws/<channel>`` (then already subscribed to that channel).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

from flask import Response, request
from geventwebsocket.websocket import WebSocket

from ..auth import PUBLISH, SUBSCRIBE
from ..errors import ApiError
from ..websocket.connection import Mode
from ..websocket.envelopes import SUBPROTOCOL
from ..websocket.handshake import Deflate, negotiate_deflate
from ..websocket.modes import JsonMode, Policy, RawMode
from ..websocket.protocol import CloseCode, close_frame
from ..websocket.upgrade import DeferredWebSocket, take_socket
from .checks import (
    ClientRequest,
    admit,
    admit_channel,
    admit_client,
    checked_since,
    here,
    occupy,
    publisher,
)


def upgrade(channel: str | None = None) -> Response:
    """The Flask view of :func:`accept_websocket`: an error response when it refuses."""
    client = here()
    ws = client.environ.get("wsgi.websocket")
    try:
        accept_websocket(client, channel)
    except ApiError as exc:
        if ws is None or isinstance(ws, DeferredWebSocket):
            return exc.response()
        _refuse_upgraded(ws, exc)
    return Response(status=204)


def accept_websocket(client: ClientRequest, channel: str | None) -> None:
    """Check the request, accept it, then let the connection serve the socket; ApiError
    when refused, before any 101 under wsrelay's handler.

    The client needs the right to subscribe to the URL's channel; in raw
    mode whether what it sends is published depends on its right to publish
    (without it, its first message closes the connection with 1008). Under
    wsrelay's handler this returns once the connection is open and waits for
    input (see :meth:`~wsrelay.websocket.upgrade.DeferredWebSocket.detach`), so
    nothing may need this request afterwards.
    """
    ws = client.environ.get("wsgi.websocket")
    if ws is None:
        raise ApiError(
            501, "websocket_unsupported",
            "this server cannot upgrade: run manage.py serve or the gevent-websocket "
            "worker",
        )
    json = SUBPROTOCOL in _offered_subprotocols(client)
    mode: Mode
    if channel is None and not json:
        raise ApiError(
            400, "channel_required",
            f"raw mode relays one channel: /ws/<channel>, or offer {SUBPROTOCOL}",
        )
    access = admit(client, channel, SUBSCRIBE) if channel is not None else admit_client(client)
    since = checked_since(client.arg("since"))
    rate = publisher(client, access.claims)
    config = client.config
    if json:
        policy = Policy(_checks_after_the_request(client), rate,
                        config["WSRELAY_MAX_SUBSCRIPTIONS"])
        mode = JsonMode(policy, (access.channel, since) if channel is not None else None,
                        max_data=config["WSRELAY_MAX_MESSAGE_SIZE"])
    else:
        echo = client.arg("echo") != "0"
        mode = RawMode(access.channel, since, may_publish=_may_publish(client, access.channel),
                       rate=rate, echo=echo)
    compression = negotiate_compression(ws, client)
    leave = occupy(client, stream=False)
    try:
        taken = take_socket(ws, SUBPROTOCOL if json else None, detach=True,
                            extensions=compression and compression[0])
        connection = client.state.open_connection(
            taken.sock, expires=access.expires, json=json,
            deflate=compression and compression[1], identity=client.identity,
        )
    except BaseException:
        leave()
        raise
    # once ended, the connection gives up its place in the per-IP count
    taken.serve(functools.partial(connection.run, mode, taken.handshake, taken.pending,
                                  on_end=leave, watch=taken.detached))


def negotiate_compression(ws: object, client: ClientRequest) -> tuple[str, Deflate] | None:
    """permessage-deflate as agreed with the request's client: the
    ``Sec-WebSocket-Extensions`` to answer and the parameters; None when declined, turned
    off (``WSRELAY_COMPRESSION``), or the 101 is out already (gevent-websocket's stock
    handler). ApiError 400 for a malformed offer."""
    if not client.config["WSRELAY_COMPRESSION"] or not isinstance(ws, DeferredWebSocket):
        return None
    return negotiate_deflate(client.header("Sec-WebSocket-Extensions") or "")


def _may_publish(client: ClientRequest, channel: str) -> bool:
    """The raw client's right to publish to its channel, decided while its request is here."""
    try:
        admit_channel(client, channel, PUBLISH)
    except ApiError:
        return False
    return True


def _checks_after_the_request(client: ClientRequest) -> Callable[[str, str], object]:
    """``admit_channel`` for the channels a ``wsrelay.v1`` client names later, once its
    request has ended, on a copy of this request's environ, its CGI variables and headers
    (not its streams, socket or objects); with connect hooks, in a request context rebuilt
    from it, since the hooks are given the Flask request."""
    state = client.state
    environ = {key: value for key, value in client.environ.items() if isinstance(value, str)}

    def check(channel: str, action: str) -> object:
        if not state.connect_hooks:
            return admit_channel(ClientRequest(environ, state), channel, action)
        with state.app.request_context(environ):
            return admit_channel(ClientRequest(environ, state, request), channel, action)

    return check


def _offered_subprotocols(client: ClientRequest) -> set[str]:
    header = client.header("Sec-WebSocket-Protocol") or ""
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

