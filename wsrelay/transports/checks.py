"""The checks every transport makes before serving a client, answered as :class:`ApiError`:
the host, channel name, origin, token, the application's connect hooks, and the limits."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from flask import current_app, g, request

from ..auth import SUBSCRIBE, Access, Claims, authorize
from ..channels import InvalidChannel, check_channel
from ..control import identity_key
from ..errors import ApiError, Refuse
from ..hosts import host_allowed, host_name
from ..ids import InvalidMessageId, MessageId
from ..limits import Publisher
from ..origins import DEFAULT_PORTS, origin_allowed, own_origin


def relay():
    """The :class:`~wsrelay.relay.Relay` of the current app."""
    return current_app.extensions["wsrelay"]


def checked_channel(name: str) -> str:
    try:
        return check_channel(name)
    except InvalidChannel as exc:
        raise ApiError(400, "invalid_channel", str(exc)) from None


def checked_since(text: str | None) -> MessageId | None:
    """``since`` from the query (or ``Last-Event-ID``); absent or empty means none."""
    if not text:
        return None
    try:
        return MessageId.parse(text)
    except InvalidMessageId as exc:
        raise ApiError(400, "invalid_since", str(exc)) from None


def check_serving() -> None:
    """A stopping server takes no new clients: they should go to another one."""
    if relay().draining:
        raise ApiError(503, "shutting_down", "this server is stopping: connect to another one",
                       headers={"Retry-After": "1"})


def check_host() -> None:
    """400 ``invalid_host`` for a request naming a host the relay does not answer to (a
    rebound DNS name: see :mod:`wsrelay.hosts`); every wsrelay route asks this first."""
    name = host_name(request.host)
    allowed = current_app.config["WSRELAY_ALLOWED_HOSTS"]
    if host_allowed(name, allowed, local_address()):
        return
    if allowed:
        why = "it is not in WSRELAY_ALLOWED_HOSTS"
    else:
        why = ("a relay reached on a loopback address answers only to loopback names "
               "(localhost, 127.0.0.1, [::1]); list the names it serves in WSRELAY_ALLOWED_HOSTS")
    raise ApiError(400, "invalid_host", f"host {name[:200]!r} is not allowed: {why}")


def local_address() -> str:
    """The address the request arrived on: ``SERVER_ADDR`` (the accepted socket's, which
    wsrelay's handler sets), else ``REMOTE_ADDR``, loopback exactly when that one is."""
    return request.environ.get("SERVER_ADDR") or request.environ.get("REMOTE_ADDR") or ""


def request_scheme() -> str:
    """``http`` or ``https``, as the client reached us: ``wsgi.url_scheme``, or behind
    WSRELAY_PROXY_HOPS proxies the ``X-Forwarded-Proto`` the one we trust set."""
    proto = forwarded("X-Forwarded-Proto")
    if proto is not None and proto.lower() in DEFAULT_PORTS:
        return proto.lower()
    return request.environ.get("wsgi.url_scheme", "http")


def check_origin() -> None:
    """Refuse a browser request from an origin that is neither ours nor allowed, and, under
    WSRELAY_REQUIRE_ORIGIN, a request that shows no origin at all.

    A browser's same-origin GET (EventSource, fetch) carries no ``Origin``
    but ``Sec-Fetch-Site: same-origin``, which a page cannot forge.
    """
    origin = request.headers.get("Origin")
    config = current_app.config
    if origin is None:
        if config["WSRELAY_REQUIRE_ORIGIN"] and request.headers.get(
            "Sec-Fetch-Site"
        ) != "same-origin":
            raise ApiError(
                403, "origin_required", "this server serves browsers only: send an Origin"
            )
        return
    own = own_origin(request_scheme(), request.host)
    if not origin_allowed(origin, own, config["WSRELAY_ALLOWED_ORIGINS"]):
        raise ApiError(
            403, "origin_not_allowed",
            f"origin {origin[:200]!r} is not allowed: this relay's own is {own!r} (scheme, "
            "host and port); behind a TLS proxy set WSRELAY_PROXY_HOPS and X-Forwarded-Proto",
        )


def request_token() -> str | None:
    """The token from ``Authorization: Bearer`` or, for browsers' WebSockets, ``?token=``."""
    credentials = request.authorization
    if credentials is not None and credentials.type == "bearer" and credentials.token:
        return credentials.token
    return request.args.get("token") or None


@dataclass(frozen=True, slots=True)
class Publication:
    """A message a client sends, as a publish hook sees it: ``identity`` is what the identity
    hook returned when the client connected (None without one); ``transport`` is
    ``websocket`` or ``http``."""

    channel: str
    data: str | bytes
    binary: bool
    identity: Any
    transport: str


def ask_hooks(hooks: Sequence[Callable[..., Any]], *args: Any) -> Any:
    """Ask the application's hooks of one kind in turn: the one place every transport calls
    them. False or :class:`~wsrelay.errors.Refuse` refuses (403 ``refused``; an error
    envelope on a ``wsrelay.v1`` WebSocket). Returns the last answer other than None and
    True: the identity an identity hook found, or the data publish hooks put in place of a
    :class:`Publication`'s (each next hook sees the new data); None when there is none."""
    found = None
    for hook in hooks:
        try:
            answer = hook(*args)
        except Refuse as exc:
            raise ApiError(403, "refused", str(exc) or "refused by the application") from None
        if answer is False:
            raise ApiError(403, "refused", "refused by the application")
        if answer is not None and answer is not True:
            found = answer
            if isinstance(args[0], Publication):
                args = (replace(args[0], data=answer),)
    return found


def identify(claims: Claims | None) -> Any:
    """The client's identity, from the identity hooks, asked once per request."""
    if "wsrelay_identity" not in g:
        identity = ask_hooks(relay().relay.identity_hooks, request, claims)
        if identity is not None:
            identity_key(identity)  # InvalidIdentity now, rather than at the user's logout
        g.wsrelay_identity = identity
    return g.wsrelay_identity


def admit(channel: str, action: str) -> Access:
    """The checks every request to a channel passes first, all before any upgrade: the
    name, the origin, the token for ``action`` (subscribe or publish), the connect hooks."""
    name = checked_channel(channel)
    check_serving()
    check_origin()
    access = admit_channel(name, action)
    identify(access.claims)
    return access


def admit_channel(channel: str, action: str) -> Access:
    """The token and connect hooks for ``action`` on a valid channel name. A ``wsrelay.v1``
    connection asks this for each channel it subscribes or publishes to."""
    access = authorize(
        relay().tokens, request_token(), channel, action,
        require_token=current_app.config["WSRELAY_REQUIRE_TOKEN"],
    )
    ask_hooks(relay().connect_hooks, request, channel, access.claims, action)
    return access


def admit_client() -> Access:
    """The checks of a ``wsrelay.v1`` connection to ``/ws``, which names no channel yet: the
    origin, and a token that is shown (or required everywhere) must be genuine."""
    check_serving()
    check_origin()
    token = request_token()
    tokens = relay().tokens
    if token is None and current_app.config["WSRELAY_REQUIRE_TOKEN"]:
        authorize(tokens, None, "", SUBSCRIBE, require_token=True)  # raises token_required
    claims = tokens.verify(token) if token else None
    identify(claims)
    return Access("", claims, may_publish=False, expires=claims.expires if claims else None)


def forwarded(header: str) -> str | None:
    """What the WSRELAY_PROXY_HOPS-th proxy from us put in ``header``, a list each proxy
    appends to (werkzeug's ProxyFix rule: only that proxy is trusted); None without one."""
    hops = current_app.config["WSRELAY_PROXY_HOPS"]
    if hops:
        values = request.headers.get(header, "").split(",")
        if len(values) >= hops and values[-hops].strip():
            return values[-hops].strip()
    return None


def client_address() -> str:
    """The client's IP: ``REMOTE_ADDR``, or the address the WSRELAY_PROXY_HOPS-th proxy from
    us saw in ``X-Forwarded-For``."""
    return forwarded("X-Forwarded-For") or request.remote_addr or ""


def occupy(*, stream: bool) -> Callable[[], None]:
    """Count this client's new connection against its connect rate, and the open connection
    (``stream``: an SSE stream or long-poll) until the returned function is called, once;
    429 or 503 when its IP connects too fast or it or the worker is full."""
    limits = relay().limits
    client = client_address()
    limits.check_connect(client, time.monotonic())
    limits.enter(client, stream=stream)
    return functools.partial(limits.leave, client, stream=stream)


def publisher(claims: Claims | None) -> Publisher | None:
    """What this client's messages count against: its IP, and its token's subject."""
    return relay().limits.publisher(client_address(), claims.subject if claims else None)


def check_publish_rate(claims: Claims | None) -> None:
    """Count one HTTP publish against its client's rate (IP, token subject); 429 over it."""
    relay().limits.check_publish(client_address(), time.monotonic(),
                                 claims.subject if claims else None)
