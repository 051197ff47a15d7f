"""The Flask extension: ``Relay(app)`` or ``Relay().init_app(app)``, and the public ``publish``.

As Flask's own extensions do, a :class:`Relay` keeps nothing of an app on
itself: each app it is given gets its own :class:`AppRelay` (broker, hub,
tokens, limits) in ``app.extensions["wsrelay"]``, so one ``Relay()`` serves
any number of apps (an app factory, its tests). The application's hooks
belong to the :class:`Relay` and so to each of its apps.
"""

from __future__ import annotations

import functools
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
from flask import Flask, Request, current_app, has_app_context

from .auth import Claims, Tokens
from .broker import broker_from_config
from .broker.base import Publishing
from .channels import check_channel
from .config import load, redact_url
from .control import DISCONNECT, UNSUBSCRIBE, Command, InvalidCommand, identity_key
from .errors import MessageTooLarge, NoRelay
from .hub import MessageServer
from .ids import MessageId
from .limits import Limits, TokenBucket
from .message import Message
from .ops.metrics import MetricsSync
from .server.handler import DIRECT_ROUTE
from .server.keep_alive import end_keep_alive
from .transports import create_blueprint, routing_errors_in_json
from .transports.checks import Publication, ask_hooks, here
from .transports.direct import DirectPath
from .transports.event_stream import EventStream
from .transports.websocket import app_protocol, negotiate_compression
from .websocket.connection import WebSocketConnection
from .websocket.deflate import deflater
from .websocket.envelopes import max_request_size
from .websocket.handshake import Deflate
from .websocket.modes import RawMode
from .websocket.protocol import CloseCode
from .websocket.upgrade import take_socket

log = logging.getLogger(__name__)

#: ``hook(request, channel, claims, action)``: False or ``raise Refuse(reason)`` refuses.
ConnectHook = Callable[[Request, str, Claims | None, str], bool | None]
#: ``hook(request, claims)``: who the client is (e.g. ``session["user"]``), or None.
IdentityHook = Callable[[Request, Claims | None], Any]


#: ``hook(publication)``: None keeps the message, a ``str``/``bytes`` replaces its data,
#: False or ``raise Refuse(reason)`` refuses it.
PublishHook = Callable[[Publication], str | bytes | bool | None]
#: ``hook(identity)``: a WebSocket or SSE stream of a client with that identity has ended.
DisconnectHook = Callable[[Any], None]


@dataclass(eq=False, slots=True)
class Client:
    """A connection (WebSocket, SSE stream, held long-poll) whose identity hook named who it
    is, so that :meth:`AppRelay.disconnect` and :meth:`AppRelay.unsubscribe` find it:
    ``key`` is the identity's :func:`~wsrelay.control.identity_key`; ``ended`` the reason
    the application ended it, if it did."""

    connection: Any
    identity: Any
    key: str
    ended: str | None = None


class Relay:
    """wsrelay as a Flask extension: ``Relay(app)``, or ``relay = Relay()`` then
    ``relay.init_app(app)`` in an app factory. Each app's state is ``app.extensions["wsrelay"]``
    (an :class:`AppRelay`); the methods here act on the current app's (or the app given to
    the constructor outside an app context)."""

    def __init__(self, app: Flask | None = None) -> None:
        self.app = app
        self.connect_hooks: list[ConnectHook] = []
        self.identity_hooks: list[IdentityHook] = []
        self.publish_hooks: list[PublishHook] = []
        self.disconnect_hooks: list[DisconnectHook] = []
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> AppRelay:
        """Read the app's ``WSRELAY_*`` options (see :func:`wsrelay.config.load`), start its
        hub and register wsrelay's routes (under ``WSRELAY_URL_PREFIX``)."""
        if "wsrelay" in app.extensions:
            raise RuntimeError("wsrelay is already registered on this app")
        app.config.update(load(app.config))
        state = AppRelay(app, self)
        app.extensions["wsrelay"] = state
        prefix = app.config["WSRELAY_URL_PREFIX"]
        app.register_blueprint(create_blueprint(app.config))
        app.before_request(routing_errors_in_json(prefix))
        _offer_subprotocol(app, prefix)
        # long-polls and upgrades skip Flask when nothing needs it (wsrelay's handler asks)
        setattr(app, DIRECT_ROUTE, DirectPath(app, state).route)
        log.info("wsrelay on %s, broker %s", app.name, redact_url(app.config["WSRELAY_BROKER_URL"]))
        return state

    def state(self) -> AppRelay:
        """The :class:`AppRelay` of the current app, else of the app given to the constructor."""
        if has_app_context():
            found = current_app.extensions.get("wsrelay")
            if isinstance(found, AppRelay) and found.relay is self:
                return found
        if self.app is not None:
            return self.app.extensions["wsrelay"]
        raise NoRelay("this Relay has no app here: call it in an app context "
                      "(with app.app_context(): ...), or use app.extensions['wsrelay']")

    # -- hooks (decorators) ---------------------------------------------------------------

    def connect_hook(self, hook: ConnectHook) -> ConnectHook:
        """Register ``hook``, called before every client subscribes or publishes (after the
        origin and token checks, before the upgrade); it refuses with a 403 by returning
        False or raising :class:`~wsrelay.errors.Refuse`. Usable as a decorator."""
        self.connect_hooks.append(hook)
        return hook

    def identity_hook(self, hook: IdentityHook) -> IdentityHook:
        """Register ``hook``, called once per client request (a WebSocket's upgrade, a
        publish, a poll, an SSE stream) in its request context: it returns who the client is
        (``session.get("user")``), which publish and disconnect hooks get, or refuses."""
        self.identity_hooks.append(hook)
        return hook

    def publish_hook(self, hook: PublishHook) -> PublishHook:
        """Register ``hook``, called with a :class:`Publication` for every message a client
        publishes, on every transport; it may replace the data or refuse the message (the
        client gets an error; its connection stays open)."""
        self.publish_hooks.append(hook)
        return hook

    def disconnect_hook(self, hook: DisconnectHook) -> DisconnectHook:
        """Register ``hook``, called with the identity (None without one) of every WebSocket
        and SSE stream that has ended, in the process that served it (not per long-poll:
        a long-poll client is a series of requests, none of which marks its leaving)."""
        self.disconnect_hooks.append(hook)
        return hook

    # -- the current app's relay ----------------------------------------------------------

    def publish(self, channel: str, data: str | bytes, *, binary: bool | None = None) -> Message:
        """Publish to every subscriber of ``channel`` (see :meth:`AppRelay.publish`)."""
        return self.state().publish(channel, data, binary=binary)

    def disconnect(self, identity: Any, reason: str = "disconnected by the server") -> int:
        """End every connection of ``identity`` in every process (see
        :meth:`AppRelay.disconnect`)."""
        return self.state().disconnect(identity, reason)

    def unsubscribe(self, identity: Any, channel: str,
                    reason: str = "unsubscribed by the server") -> int:
        """End the subscriptions of ``identity`` to ``channel`` in every process (see
        :meth:`AppRelay.unsubscribe`)."""
        return self.state().unsubscribe(identity, channel, reason)

    def start_background_task(self, target: Callable[..., Any], *args: Any) -> gevent.Greenlet:
        return self.state().start_background_task(target, *args)

    @property
    def tokens(self) -> Tokens:
        return self.state().tokens

    @property
    def hub(self) -> MessageServer:
        return self.state().hub


class AppRelay:
    """wsrelay in one app (``app.extensions["wsrelay"]``): its broker, hub, tokens, limits,
    the identities of its WebSockets, and the :class:`Relay` whose hooks it runs."""

    def __init__(self, app: Flask, relay: Relay) -> None:
        config = app.config
        self.app = app
        self.relay = relay
        # The hooks are the Relay's: registering one here registers it for all its apps.
        self.connect_hook = relay.connect_hook
        self.identity_hook = relay.identity_hook
        self.publish_hook = relay.publish_hook
        self.disconnect_hook = relay.disconnect_hook
        self.max_message_size: int = config["WSRELAY_MAX_MESSAGE_SIZE"]
        self.tokens = Tokens.from_config(config["WSRELAY_SECRET_KEY"])
        self.limits = Limits.from_config(config)
        self.hub = _HookedHub(
            self, broker_from_config(config),
            ping_interval=config["WSRELAY_PING_INTERVAL"],
            ping_timeout=config["WSRELAY_PING_TIMEOUT"],
            write_delay=config["WSRELAY_WRITE_DELAY"],
        )
        self.hub.start()
        self.metrics = MetricsSync(self.hub)  # /metrics, /dashboard
        self.metrics.start()
        self._background: dict[Callable[..., Any], gevent.Greenlet] = {}
        #: The host's views at wsrelay's paths (see :func:`wsrelay.transports.host_routes`).
        self.host_routes: dict[tuple[str, str], Any] | None = None
        #: Each connection that has an identity, by connection id.
        self.identities: dict[str, Client] = {}
        #: The same, by identity key, then connection id.
        self._by_identity: dict[str, dict[str, Client]] = {}
        # Every process ends its clients of an identity when any of them is asked to.
        self.hub.broker.listen_control(self._control)

    @property
    def connect_hooks(self) -> list[ConnectHook]:
        return self.relay.connect_hooks

    def publish(self, channel: str, data: str | bytes, *, binary: bool | None = None) -> Message:
        """Publish to every subscriber of ``channel`` on every transport (and worker).

        ``str`` is sent as text and ``bytes`` as binary unless ``binary`` says
        otherwise. Returns the message with its id once the broker accepted it.
        Raises :class:`~wsrelay.errors.InvalidChannel`,
        :class:`~wsrelay.errors.MessageTooLarge` or
        :class:`~wsrelay.errors.BrokerUnavailable` (all :class:`~wsrelay.errors.WsrelayError`).
        """
        check_message(channel, data, self.max_message_size)
        return self.hub.publish(channel, data, binary=binary)

    def publish_from_client(
        self, channel: str, data: bytes | str, *, binary: bool, identity: Any, transport: str,
    ) -> Message:
        """Publish what a client sent over HTTP (see :meth:`client_publication`)."""
        data, author = self.client_publication(channel, data, binary=binary, identity=identity,
                                               transport=transport)
        return MessageServer.publish(self.hub, channel, data, binary=binary, author=author)

    def client_publication(
        self, channel: str, data: bytes | str, *, binary: bool, identity: Any, transport: str,
    ) -> tuple[bytes | str, str | None]:
        """What a client publishes, on any transport, after the publish hooks, which may
        refuse it (:class:`~wsrelay.errors.ApiError` 403 ``refused``) or replace its data;
        and its ``author``, the client's identity, stamped as the message's ``sender``."""
        hooks = self.relay.publish_hooks
        if hooks:
            shown = data.decode("utf-8") if isinstance(data, bytes) and not binary else data
            data = ask_hooks(hooks, Publication(channel, shown, binary, identity, transport)) \
                or data
        return data, None if identity is None else str(identity)

    def disconnect(self, identity: Any, reason: str = "disconnected by the server") -> int:
        """End every connection whose identity hook returned ``identity`` (a user logs out),
        in this process and, through the broker, in every other sharing it: WebSockets close
        with 1008 and ``reason``, SSE streams end after an ``error`` event with ``reason``,
        held long-polls are answered 403 ``refused``. Identities compare by their JSON
        (:func:`~wsrelay.control.identity_key`; :class:`~wsrelay.errors.InvalidIdentity`
        for one that is not JSON).

        Returns how many connections of this process were ended (the other processes' are
        ended as their listeners receive the request, a moment later, and not counted).
        Raises :class:`~wsrelay.errors.BrokerUnavailable` when the request could not be
        sent to the other processes (this one's are ended already).
        """
        return self._command(Command(DISCONNECT, identity_key(identity), str(reason)))

    def unsubscribe(self, identity: Any, channel: str,
                    reason: str = "unsubscribed by the server") -> int:
        """End the subscriptions of ``identity`` to ``channel`` in every process, leaving
        its connections open: a ``wsrelay.v1`` WebSocket subscribed to it gets an
        ``unsubscribed`` envelope, and none of them may use the channel again (a new
        connection passes the checks anew); a raw
        ``/ws/<channel>`` WebSocket, an SSE stream or a held long-poll of that channel is
        ended as by :meth:`disconnect`. Returns how many subscriptions of this process
        ended; raises as :meth:`disconnect` does."""
        check_channel(channel)
        return self._command(Command(UNSUBSCRIBE, identity_key(identity), str(reason), channel))

    def _command(self, command: Command) -> int:
        """Obey ``command`` here, then send it to every other process."""
        ended = self._obey(command)
        self.hub.broker.send_control(command.encode())
        log.info("%s %s: %d ended here, sent to every process", command.op, command.identity,
                 ended)
        return ended

    def _control(self, payload: bytes) -> None:
        """A command from the control channel (in the broker's listener: obeyed apart)."""
        try:
            command = Command.decode(payload)
        except InvalidCommand as exc:
            log.warning("ignoring a control message: %s", exc)
            return
        gevent.spawn(self._obey, command)

    def _obey(self, command: Command) -> int:
        """End this process's clients named by ``command``; how many."""
        ended = 0
        for client in list(self._by_identity.get(command.identity, {}).values()):
            connection = client.connection
            channel = command.channel
            if channel is not None:  # an unsubscribe
                if isinstance(connection, WebSocketConnection):
                    ended += connection.revoke(channel, command.reason)
                    continue
                if connection.subscription.channel != channel:
                    continue
            client.ended = command.reason
            connection.close(CloseCode.POLICY_VIOLATION, command.reason)
            ended += 1
        return ended

    def track(self, connection: Any, identity: Any) -> Client | None:
        """Remember ``connection`` under ``identity`` (what its request's identity hooks
        found), until the hub lets it go; None when it has none."""
        if identity is None:
            return None
        client = Client(connection, identity, identity_key(identity))
        self.identities[connection.id] = client
        self._by_identity.setdefault(client.key, {})[connection.id] = client
        return client

    def untrack(self, connection: Any) -> Client | None:
        """Forget ``connection`` (it has ended); its :class:`Client`, if it had one."""
        client = self.identities.pop(connection.id, None)
        if client is not None:
            same = self._by_identity.get(client.key, {})
            same.pop(connection.id, None)
            if not same:
                self._by_identity.pop(client.key, None)
        return client

    def disconnected(self, client: Client | None) -> None:
        """Tell the disconnect hooks that a connection (of ``client``) has ended."""
        identity = None if client is None else client.identity
        for hook in self.relay.disconnect_hooks:
            try:
                hook(identity)
            except Exception:
                log.exception("disconnect hook %r failed", hook)

    def open_connection(
        self, sock: Any, *, expires: float | None = None, json: bool = False,
        deflate: Deflate | None = None, identity: Any = None,
    ) -> WebSocketConnection:
        """A connection on an accepted socket, with this app's limits; a ``wsrelay.v1``
        (``json``) request frame may exceed a message by its base64 and envelope.
        ``deflate``: permessage-deflate as negotiated in its handshake, if it was.
        ``identity``: what the client's identity hooks found, kept for the disconnect hooks."""
        config = self.app.config
        limit = config["WSRELAY_MAX_MESSAGE_SIZE"]
        connection = WebSocketConnection(
            sock, self.hub,
            max_message_size=max_request_size(limit) if json else limit,
            buffer_limit=config["WSRELAY_SUBSCRIBER_BUFFER"],
            close_timeout=config["WSRELAY_CLOSE_TIMEOUT"],
            expires=expires,
            control_rate=TokenBucket(
                config["WSRELAY_CONTROL_FRAME_RATE"], config["WSRELAY_CONTROL_FRAME_BURST"],
                time.monotonic(),
            ),
            deflate=deflate,
            deflater=None if deflate is None else deflater(
                deflate.server_max_window_bits, config["WSRELAY_COMPRESSION_MIN_SIZE"]
            ),
        )
        self.track(connection, identity)
        return connection

    def serve_websocket(
        self, ws: Any, channel: str, *, since: MessageId | None = None, echo: bool = True
    ) -> None:
        """Relay ``channel`` over ``environ['wsgi.websocket']`` in raw mode, until it closes.

        For an application's own route (``@app.route(..., websocket=True)``),
        which has made its own checks: everything the client sends is published, everything
        published reaches it. Returns when the connection has ended: the view
        serves it in its request, since the route's code may follow the call.
        """
        check_channel(channel)
        compression = negotiate_compression(ws, here())
        taken = take_socket(ws, extensions=compression and compression[0])
        mode = RawMode(channel, since, may_publish=True, rate=None, echo=echo)
        connection = self.open_connection(taken.sock, deflate=compression and compression[1])
        taken.serve(functools.partial(connection.run, mode, taken.handshake, taken.pending))

    def start_background_task(self, target: Callable[..., Any], *args: Any) -> gevent.Greenlet:
        """Run ``target(*args)`` in a greenlet, in an app context of this app (so
        :func:`wsrelay.publish` and ``current_app`` work there), once per process however
        often it is asked."""
        greenlet = self._background.get(target)
        if greenlet is None or greenlet.dead:
            greenlet = self._background[target] = gevent.spawn(self._in_context, target, *args)
        return greenlet

    def _in_context(self, target: Callable[..., Any], *args: Any) -> Any:
        with self.app.app_context():
            return target(*args)

    @property
    def draining(self) -> bool:
        return self.hub.draining

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop serving clients gracefully (see :meth:`MessageServer.drain`), then stop."""
        if self.hub.draining:
            return
        if timeout is None:
            timeout = self.app.config["WSRELAY_DRAIN_TIMEOUT"]
        counts = self.hub.counts()
        log.info("draining: sending %d WebSocket clients and %d long-polls and SSE streams away",
                 counts["connections"], counts["waiters"])
        end_keep_alive(self.app)  # idle keep-alive connections close now
        self.hub.drain(timeout)
        self.close()

    def close(self) -> None:
        self.hub.stop()
        self.metrics.stop()
        self.hub.broker.close()


class _HookedHub(MessageServer):
    """The app's hub, which passes what clients publish over a WebSocket through
    :meth:`AppRelay.client_publication` (a connection publishes with its own id as
    ``sender``; the application's own :meth:`AppRelay.publish` does not), forgets the
    identity of a connection that ended and tells the disconnect hooks."""

    def __init__(self, owner: AppRelay, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owner = weakref.proxy(owner)

    def publish_async(
        self, channel: str, data: bytes | str, *, binary: bool | None = None,
        sender: str | None = None, author: str | None = None,
    ) -> Publishing:
        if sender is None:  # the application's own
            return super().publish_async(channel, data, binary=binary, author=author)
        client = self._owner.identities.get(sender)
        identity = None if client is None else client.identity
        is_binary = bool(binary) if binary is not None else isinstance(data, bytes)
        data, author = self._owner.client_publication(
            channel, data, binary=is_binary, identity=identity, transport="websocket")
        return super().publish_async(channel, data, binary=is_binary, sender=sender,
                                     author=author)

    def detach(self, connection: Any) -> None:
        super().detach(connection)
        self._owner.disconnected(self._owner.untrack(connection))

    def let_go(self, connection: Any) -> None:
        super().let_go(connection)
        client = self._owner.untrack(connection)
        if isinstance(connection, EventStream):  # a long-poll's end is no disconnect
            self._owner.disconnected(client)


def _offer_subprotocol(app: Flask, prefix: str) -> None:
    """Give the app the ``app_protocol`` gevent-websocket's stock handler asks before its early
    upgrade, so ``wsrelay.v1`` works under the stock worker (a host's own one is asked for
    the paths that are not wsrelay's)."""
    previous = getattr(app, "app_protocol", None)

    def choose(path: str) -> str | None:
        if path.startswith(prefix + "/"):
            chosen = app_protocol(path[len(prefix):])
            if chosen:
                return chosen
        return previous(path) if previous is not None else None

    app.app_protocol = choose  # type: ignore[attr-defined]


def check_message(channel: str, data: str | bytes, limit: int) -> None:
    """Raise :class:`~wsrelay.errors.InvalidChannel` or :class:`~wsrelay.errors.MessageTooLarge`
    for what the server itself may not publish either."""
    check_channel(channel)
    size = len(data.encode("utf-8")) if isinstance(data, str) else len(data)
    if size > limit:
        raise MessageTooLarge(f"{size} bytes is over the limit of {limit}")


def current_relay() -> AppRelay:
    """The :class:`AppRelay` of the current app context."""
    if has_app_context() and "wsrelay" in current_app.extensions:
        return current_app.extensions["wsrelay"]
    raise NoRelay(
        "wsrelay.publish() needs the app here: call it in a view, in a task started with "
        "start_background_task, or in 'with app.app_context():'"
    )


@functools.cache
def _shared_hub() -> tuple[MessageServer, int]:
    """For :func:`publish` outside any app: a hub on the environment's shared broker (Redis),
    which the relays of every process deliver from; made once per process."""
    config = load()
    if not config["WSRELAY_BROKER_URL"].startswith(("redis", "unix")):
        raise NoRelay(
            "wsrelay.publish() outside an app needs a shared broker: set "
            "WSRELAY_BROKER_URL=redis://... (as the server has), or call it in an app context "
            "('with app.app_context():'); on the in-memory broker only the server's own "
            "process can publish: 'wsrelay publish CHANNEL MESSAGE' posts to it"
        )
    return MessageServer(broker_from_config(config)), config["WSRELAY_MAX_MESSAGE_SIZE"]


def publish(channel: str, data: str | bytes, *, binary: bool | None = None) -> Message:
    """Publish from anywhere: a view, a background task, a CLI command, and with Redis from
    any process (a script, a job queue's worker) with no app at all. Raises
    :class:`~wsrelay.errors.NoRelay` when there is no app and no shared broker."""
    if has_app_context() and "wsrelay" in current_app.extensions:
        return current_app.extensions["wsrelay"].publish(channel, data, binary=binary)
    hub, limit = _shared_hub()
    check_message(channel, data, limit)
    return hub.publish(channel, data, binary=binary)
