"""The Flask extension: one broker and one hub per app, and the public ``publish``."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import gevent
from flask import Flask, Request, current_app, has_app_context

from .auth import Claims, Tokens
from .broker import broker_from_config
from .channels import check_channel
from .config import DEFAULTS, from_environ, validate
from .errors import register_error_handlers
from .hub import MessageServer
from .limits import Limits
from .message import Message
from .transports import create_blueprint

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
        )
        self.hub.start()
        app.extensions["wsrelay"] = self
        app.register_blueprint(create_blueprint())
        register_error_handlers(app)
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
        return self.hub.publish(channel, data, binary=binary)

    def connect_hook(self, hook: ConnectHook) -> ConnectHook:
        """Register ``hook``, called before every client subscribes or publishes (after the
        origin and token checks, before the upgrade); it refuses with a 403 by returning
        False or raising :class:`~wsrelay.auth.Refuse`. Usable as a decorator."""
        self.connect_hooks.append(hook)
        return hook

    def start_background_task(self, target: Callable[..., Any], *args: Any) -> gevent.Greenlet:
        """Run ``target(*args)`` in a greenlet, once per process however often it is asked."""
        greenlet = self._background.get(target)
        if greenlet is None or greenlet.dead:
            greenlet = self._background[target] = gevent.spawn(target, *args)
        return greenlet

    def close(self) -> None:
        if self.hub is not None:
            self.hub.stop()
            self.hub.broker.close()


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
