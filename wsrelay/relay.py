"""The Flask extension: one broker and one hub per app, and the public ``publish``."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import gevent
from flask import Flask, Request, current_app, has_app_context
from flask_cors import CORS

from .auth import Claims, Tokens
from .broker import broker_from_config
from .channels import check_channel
from .config import DEFAULTS, from_environ, validate
from .errors import register_error_handlers
from .hub import MessageServer
from .ids import MessageId
from .limits import Limits, TokenBucket
from .message import Message
from .ops.logs import configure as configure_logs
from .ops.metrics import MetricsSync
from .server.keep_alive import end_keep_alive
from .transports import create_blueprint
from .transports.websocket import negotiate_compression
from .websocket.connection import WebSocketConnection
from .websocket.deflate import deflater
from .websocket.envelopes import max_request_size
from .websocket.handshake import Deflate
from .websocket.modes import RawMode
from .websocket.upgrade import take_socket

log = logging.getLogger(__name__)

_apps: list[Flask] = []
_apps_lock = threading.Lock()

#: ``hook(request, channel, claims, action)``: False or ``raise Refuse(reason)`` refuses.
ConnectHook = Callable[[Request, str, Claims | None, str], bool | None]


class MessageTooLarge(ValueError):
    """A message above ``WSRELAY_MAX_MESSAGE_SIZE``."""


class Relay:
    """wsrelay attached to a Flask app (``app.extensions['wsrelay']``)."""

    def __init__(self, app: Flask | None = None) -> None:
        self.app: Flask | None = None
        self.hub: MessageServer | None = None
        self._background: dict[Callable[..., Any], gevent.Greenlet] = {}
        self.connect_hooks: list[ConnectHook] = []
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        environ = from_environ()
        for name, default in DEFAULTS.items():
            app.config.setdefault(name, environ.get(name, default))
        validate(app.config)
        config = app.config
        self.app = app
        self.max_message_size = config["WSRELAY_MAX_MESSAGE_SIZE"]
        self.tokens = Tokens.from_config(config["WSRELAY_SECRET_KEY"])
        self.limits = Limits.from_config(config)
        self.hub = MessageServer(
            broker_from_config(config),
            ping_interval=config["WSRELAY_PING_INTERVAL"],
            ping_timeout=config["WSRELAY_PING_TIMEOUT"],
            write_delay=config["WSRELAY_WRITE_DELAY"],
        )
        self.hub.start()
        self.metrics = MetricsSync(self.hub)  # /metrics, /dashboard
        self.metrics.start()
        configure_logs(config["WSRELAY_LOG_FORMAT"])
        app.extensions["wsrelay"] = self
        app.register_blueprint(create_blueprint())
        register_error_handlers(app)
        _allow_cross_origin(app, config["WSRELAY_ALLOWED_ORIGINS"])
        with _apps_lock:
            _apps.append(app)

    def publish(self, channel: str, data: str | bytes, *, binary: bool | None = None) -> Message:
        """Publish to every subscriber of ``channel`` on every transport (and worker).

        ``str`` is sent as text and ``bytes`` as binary unless ``binary`` says
        otherwise. Returns the message with its id once the broker accepted it.
        """
        check_channel(channel)
        size = len(data.encode("utf-8")) if isinstance(data, str) else len(data)
        if size > self.max_message_size:
            raise MessageTooLarge(f"{size} bytes is over the limit of {self.max_message_size}")
        return self._started()[1].publish(channel, data, binary=binary)

    def _started(self) -> tuple[Flask, MessageServer]:
        """The app and hub that :meth:`init_app` made."""
        if self.app is None or self.hub is None:
            raise RuntimeError("this Relay has no app yet: call init_app(app) first")
        return self.app, self.hub

    def connect_hook(self, hook: ConnectHook) -> ConnectHook:
        """Register ``hook``, called before every client subscribes or publishes (after the
        origin and token checks, before the upgrade); it refuses with a 403 by returning
        False or raising :class:`~wsrelay.auth.Refuse`. Usable as a decorator."""
        self.connect_hooks.append(hook)
        return hook

    def open_connection(
        self, sock: Any, *, expires: float | None = None, json: bool = False,
        deflate: Deflate | None = None,
    ) -> WebSocketConnection:
        """A connection on an accepted socket, with this app's limits; a ``wsrelay.v1``
        (``json``) request frame may exceed a message by its base64 and envelope.
        ``deflate``: permessage-deflate as negotiated in its handshake, if it was."""
        app, hub = self._started()
        config = app.config
        limit = config["WSRELAY_MAX_MESSAGE_SIZE"]
        return WebSocketConnection(
            sock, hub,
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
        compression = negotiate_compression(ws)
        taken = take_socket(ws, extensions=compression and compression[0])
        mode = RawMode(channel, since, may_publish=True, rate=None, echo=echo)
        connection = self.open_connection(taken.sock, deflate=compression and compression[1])
        taken.serve(functools.partial(connection.run, mode, taken.handshake, taken.pending))

    def start_background_task(self, target: Callable[..., Any], *args: Any) -> gevent.Greenlet:
        """Run ``target(*args)`` in a greenlet, once per process however often it is asked."""
        greenlet = self._background.get(target)
        if greenlet is None or greenlet.dead:
            greenlet = self._background[target] = gevent.spawn(target, *args)
        return greenlet

    @property
    def draining(self) -> bool:
        return self.hub is not None and self.hub.draining

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop serving clients gracefully (see :meth:`MessageServer.drain`), then stop."""
        if self.hub is None or self.hub.draining:
            return
        app, hub = self._started()
        if timeout is None:
            timeout = app.config["WSRELAY_DRAIN_TIMEOUT"]
        counts = hub.counts()
        log.info("draining: sending %d WebSocket clients and %d long-polls and SSE streams away",
                 counts["connections"], counts["waiters"])
        end_keep_alive(app)  # idle keep-alive connections close now
        hub.drain(timeout)
        self.close()

    def close(self) -> None:
        if self.hub is not None:
            self.hub.stop()
            self.metrics.stop()
            self.hub.broker.close()


def _allow_cross_origin(app: Flask, allowed: tuple[str, ...]) -> None:
    """Let the pages of the allowed foreign origins read the HTTP transports (CORS).

    The origin check admits them already; without these headers their
    browsers would still hide the answers of SSE, long-poll and publish from
    them. A WebSocket needs no CORS: the origin check is all it has.
    """
    if allowed:
        CORS(app, resources={r"/(poll|sse|publish)/.*|/client\.json": {
            "origins": "*" if "*" in allowed else list(allowed),
            "allow_headers": ["Authorization", "Content-Type", "Last-Event-ID"],
            "max_age": 600,
        }})


def shutdown_all(timeout: float | None = None) -> None:
    """Drain every wsrelay app of this process (a stopping server or gunicorn worker)."""
    with _apps_lock:
        relays = [app.extensions["wsrelay"] for app in _apps]
    gevent.joinall([gevent.spawn(relay.shutdown, timeout) for relay in relays])


def current_relay() -> Relay:
    """The relay of the current app context, or of the only app this process created."""
    if has_app_context() and "wsrelay" in current_app.extensions:
        return current_app.extensions["wsrelay"]
    with _apps_lock:
        if len(_apps) == 1:
            return _apps[0].extensions["wsrelay"]
    raise RuntimeError(
        "wsrelay.publish() needs an app context when this process created "
        f"{len(_apps)} wsrelay apps: use app.extensions['wsrelay'].publish()"
    )


def publish(channel: str, data: str | bytes, *, binary: bool | None = None) -> Message:
    """Publish from anywhere: a view, a background greenlet, a CLI command."""
    return current_relay().publish(channel, data, binary=binary)
