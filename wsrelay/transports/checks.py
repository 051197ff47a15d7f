"""The checks every transport makes before serving a client, answered as :class:`ApiError`:
the host, channel name, origin, token, the application's connect hooks, and the limits.

They run on a :class:`ClientRequest`: the request's WSGI environ and the relay that
answers it, not Flask's request context, so one piece of code serves the Flask
views and the direct path that answers ``/poll`` and WebSocket upgrades without
Flask (:mod:`wsrelay.transports.direct`). Only the application's hooks get the
Flask request; the direct path is taken only when there are none.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from flask import current_app, g, request
from werkzeug.datastructures import Authorization
from werkzeug.wsgi import get_host

from ..auth import SUBSCRIBE, Access, Claims, authorize
from ..channels import InvalidChannel, check_channel
from ..control import identity_key
from ..errors import ApiError, Refuse
from ..hosts import host_allowed, host_name
from ..ids import InvalidMessageId, MessageId
from ..limits import Publisher
from ..origins import DEFAULT_PORTS, origin_allowed, own_origin

if TYPE_CHECKING:
    from flask import Request

#: An app's :class:`~wsrelay.relay.AppRelay` (a layer above: named, not imported).
AppRelay = Any


def relay() -> AppRelay:
    """The :class:`~wsrelay.relay.AppRelay` of the current app."""
    return current_app.extensions["wsrelay"]


class ClientRequest:
    """A client's request as the checks see it: its WSGI ``environ``, the relay (``state``)
    that answers it, and, in a Flask view, the Flask ``request`` the application's hooks
    are given (None on the direct path). ``identity`` is what the identity hooks found."""

    __slots__ = ("_args", "_host", "config", "environ", "identified", "identity", "request",
                 "state")

    def __init__(self, environ: dict[str, Any], state: AppRelay,
                 request: Request | None = None) -> None:
        self.environ = environ
        self.state = state
        self.config = state.app.config
        self.request = request
        self.identity: Any = None
        self.identified = False
        self._args: dict[str, str] | None = None
        self._host: str | None = None

    def arg(self, name: str) -> str | None:
        """The query parameter's first value, decoded as werkzeug's ``request.args`` is."""
        args = self._args
        if args is None:
            args = self._args = _query_args(self.environ.get("QUERY_STRING", ""))
        return args.get(name)

    def header(self, name: str) -> str | None:
        """A request header by its name (``Origin``)."""
        return self.environ.get("HTTP_" + name.upper().replace("-", "_"))

    @property
    def host(self) -> str:
        """``Host`` as werkzeug's ``request.host`` reads it (no default port)."""
        if self._host is None:
            self._host = get_host(self.environ)
        return self._host


def _query_args(query: str) -> dict[str, str]:
    """Each query parameter's first value, as werkzeug decodes them. A query of plain ASCII
    without ``%`` or ``+`` (a long-poll's ``since`` and ``timeout``) needs no decoding: it is
    split as ``parse_qsl`` splits it (at ``&``, empty pairs skipped)."""
    args: dict[str, str] = {}
    if query.isascii() and "%" not in query and "+" not in query:
        for pair in query.split("&"):
            if pair:
                key, _, value = pair.partition("=")
                args.setdefault(key, value)
        return args
    for key, value in parse_qsl(query.encode("latin1").decode(), keep_blank_values=True,
                                errors="werkzeug.url_quote"):
        args.setdefault(key, value)
    return args


def here() -> ClientRequest:
    """The current Flask request as a :class:`ClientRequest`, one per request."""
    client = g.get("wsrelay_client")
    if client is None:
        client = g.wsrelay_client = ClientRequest(request.environ, relay(), request)
    return client


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


def check_serving(client: ClientRequest) -> None:
    """A stopping server takes no new clients: they should go to another one."""
    if client.state.draining:
        raise ApiError(503, "shutting_down", "this server is stopping: connect to another one",
                       headers={"Retry-After": "1"})


#: Hosts allowed lately, by the request's ``Host``, scheme and arrival address and the rule:
#: a keep-alive client polling shows the same ones each time (bounded: clients choose them).
_hosts_allowed: dict[tuple[str, str, str, tuple[str, ...]], bool] = {}
HOSTS_KEPT = 1024


def check_host(client: ClientRequest) -> None:
    """400 ``invalid_host`` for a request naming a host the relay does not answer to (a
    rebound DNS name: see :mod:`wsrelay.hosts`); every wsrelay route asks this first."""
    environ = client.environ
    allowed = client.config["WSRELAY_ALLOWED_HOSTS"]
    local = local_address(environ)
    given = environ.get("HTTP_HOST")
    key = None
    if given is not None and type(allowed) is tuple:
        key = (given, environ.get("wsgi.url_scheme", ""), local, allowed)
        if key in _hosts_allowed:
            return
    name = host_name(client.host)
    if host_allowed(name, allowed, local):
        if key is not None and len(_hosts_allowed) < HOSTS_KEPT:
            _hosts_allowed[key] = True
        return
    if allowed:
        why = "it is not in WSRELAY_ALLOWED_HOSTS"
    else:
        why = ("a relay reached on a loopback address answers only to loopback names "
               "(localhost, 127.0.0.1, [::1]); list the names it serves in WSRELAY_ALLOWED_HOSTS")
    raise ApiError(400, "invalid_host", f"host {name[:200]!r} is not allowed: {why}")


def check_host_here() -> None:
    """:func:`check_host` of the current Flask request (the blueprint's first check)."""
    check_host(here())


def local_address(environ: dict[str, Any]) -> str:
    """The address the request arrived on: ``SERVER_ADDR`` (the accepted socket's, which
    wsrelay's handler sets), else ``REMOTE_ADDR``, loopback exactly when that one is."""
    return environ.get("SERVER_ADDR") or environ.get("REMOTE_ADDR") or ""


def request_scheme(client: ClientRequest) -> str:
    """``http`` or ``https``, as the client reached us: ``wsgi.url_scheme``, or behind
    WSRELAY_PROXY_HOPS proxies the ``X-Forwarded-Proto`` the one we trust set."""
    proto = forwarded(client, "X-Forwarded-Proto")
    if proto is not None and proto.lower() in DEFAULT_PORTS:
        return proto.lower()
    return client.environ.get("wsgi.url_scheme", "http")


def check_origin(client: ClientRequest) -> None:
    """Refuse a browser request from an origin that is neither ours nor allowed, and, under
    WSRELAY_REQUIRE_ORIGIN, a request that shows no origin at all.

    A browser's same-origin GET (EventSource, fetch) carries no ``Origin``
    but ``Sec-Fetch-Site: same-origin``, which a page cannot forge.
    """
    origin = client.header("Origin")
    config = client.config
    if origin is None:
        if config["WSRELAY_REQUIRE_ORIGIN"] and client.header(
            "Sec-Fetch-Site"
        ) != "same-origin":
            raise ApiError(
                403, "origin_required", "this server serves browsers only: send an Origin"
            )
        return
    own = own_origin(request_scheme(client), client.host)
    if not origin_allowed(origin, own, config["WSRELAY_ALLOWED_ORIGINS"]):
        raise ApiError(
            403, "origin_not_allowed",
            f"origin {origin[:200]!r} is not allowed: this relay's own is {own!r} (scheme, "
            "host and port); behind a TLS proxy set WSRELAY_PROXY_HOPS and X-Forwarded-Proto",
        )


def request_token(client: ClientRequest) -> str | None:
    """The token from ``Authorization: Bearer`` or, for browsers' WebSockets, ``?token=``."""
    header = client.environ.get("HTTP_AUTHORIZATION")
    if header:
        credentials = Authorization.from_header(header)
        if credentials is not None and credentials.type == "bearer" and credentials.token:
            return credentials.token
    return client.arg("token") or None


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


def identify(client: ClientRequest, claims: Claims | None) -> Any:
    """The client's identity, from the identity hooks (given the Flask request), asked once
    per request; kept as ``client.identity``."""
    hooks = client.state.relay.identity_hooks
    if hooks and not client.identified:
        client.identity = ask_hooks(hooks, client.request, claims)
        if client.identity is not None:
            identity_key(client.identity)  # InvalidIdentity now, rather than at the logout
        client.identified = True
    return client.identity


def admit(client: ClientRequest, channel: str, action: str) -> Access:
    """The checks every request to a channel passes first, all before any upgrade: the
    name, the origin, the token for ``action`` (subscribe or publish), the connect hooks."""
    name = checked_channel(channel)
    check_serving(client)
    check_origin(client)
    access = admit_channel(client, name, action)
    identify(client, access.claims)
    return access


def admit_channel(client: ClientRequest, channel: str, action: str) -> Access:
    """The token and connect hooks for ``action`` on a valid channel name. A ``wsrelay.v1``
    connection asks this for each channel it subscribes or publishes to."""
    state = client.state
    access = authorize(
        state.tokens, request_token(client), channel, action,
        require_token=client.config["WSRELAY_REQUIRE_TOKEN"],
    )
    hooks = state.connect_hooks
    if hooks:
        ask_hooks(hooks, client.request, channel, access.claims, action)
    return access


def admit_client(client: ClientRequest) -> Access:
    """The checks of a ``wsrelay.v1`` connection to ``/ws``, which names no channel yet: the
    origin, and a token that is shown (or required everywhere) must be genuine."""
    check_serving(client)
    check_origin(client)
    token = request_token(client)
    tokens = client.state.tokens
    if token is None and client.config["WSRELAY_REQUIRE_TOKEN"]:
        authorize(tokens, None, "", SUBSCRIBE, require_token=True)  # raises token_required
    claims = tokens.verify(token) if token else None
    identify(client, claims)
    return Access("", claims, may_publish=False, expires=claims.expires if claims else None)


def forwarded(client: ClientRequest, header: str) -> str | None:
    """What the WSRELAY_PROXY_HOPS-th proxy from us put in ``header``, a list each proxy
    appends to (werkzeug's ProxyFix rule: only that proxy is trusted); None without one."""
    hops = client.config["WSRELAY_PROXY_HOPS"]
    if hops:
        values = (client.header(header) or "").split(",")
        if len(values) >= hops and values[-hops].strip():
            return values[-hops].strip()
    return None


def client_address(client: ClientRequest) -> str:
    """The client's IP: ``REMOTE_ADDR``, or the address the WSRELAY_PROXY_HOPS-th proxy from
    us saw in ``X-Forwarded-For``."""
    return forwarded(client, "X-Forwarded-For") or client.environ.get("REMOTE_ADDR") or ""


def occupy(client: ClientRequest, *, stream: bool) -> Callable[[], None]:
    """Count this client's new connection against its connect rate, and the open connection
    (``stream``: an SSE stream or long-poll) until the returned function is called, once;
    429 or 503 when its IP connects too fast or it or the worker is full."""
    limits = client.state.limits
    address = client_address(client)
    limits.admit(address, time.monotonic(), stream=stream)
    return functools.partial(limits.leave, address, stream=stream)


def publisher(client: ClientRequest, claims: Claims | None) -> Publisher | None:
    """What this client's messages count against: its IP, and its token's subject."""
    return client.state.limits.publisher(client_address(client),
                                         claims.subject if claims else None)


def check_publish_rate(client: ClientRequest, claims: Claims | None) -> None:
    """Count one HTTP publish against its client's rate (IP, token subject); 429 over it."""
    client.state.limits.check_publish(client_address(client), time.monotonic(),
                                      claims.subject if claims else None)
