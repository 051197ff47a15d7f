"""The direct path: ``GET /poll/<channel>`` and WebSocket upgrades answered without Flask.

Flask's request context, routing and response objects cost more than the
rest of a long-poll or a WebSocket's accept. wsrelay's handler
(:class:`~wsrelay.server.handler.RelayHandler`) asks the app's
:class:`DirectPath` first: for these requests it routes by path and returns a
small WSGI application that runs the same checks (:mod:`wsrelay.transports.checks`,
on the environ) and the same code as the Flask views (:func:`answer_poll`,
:func:`accept_websocket`), and answers with the same status, headers and JSON.

Anything it cannot answer exactly as Flask would goes through Flask: other
paths and methods, a channel name that is not valid (Flask's routing decides
those), and every request while the application has connect or identity
hooks (they are given Flask's request and may read its session), while wsrelay
answers CORS for foreign origins (``WSRELAY_ALLOWED_ORIGINS``, for polls: Flask-CORS
writes those headers), in debug mode, or when the app is not a plain Flask app
serving these paths with wsrelay's routes only (see :func:`plain_app`), or with
``WSRELAY_DIRECT_PATH=0``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

from ..channels import CHANNEL_PATTERN
from ..errors import ApiError
from ..server.lane import RERUN_KEY
from ..server.parked import IN_LOOP, PARK_KEY, Pending
from ..websocket.upgrade import DeferredWebSocket
from .answers import Parts, error_parts, failure, poll_parts
from .checks import AppRelay, ClientRequest, check_host
from .poll import OpenPoll, answer_poll, open_poll
from .poll_lane import PollLanes
from .websocket import accept_websocket

#: A direct-path application: a WSGI application, which may answer later (a
#: :class:`~wsrelay.server.parked.Pending`) where its server says it can (``PARK_KEY``).
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes] | Pending]
#: The roots the direct path answers, under the prefix.
ROOTS = ("/poll", "/ws")


def plain_app(app: Flask, prefix: str) -> bool:
    """Whether Flask would do nothing for these paths besides wsrelay's own views: the app
    handles requests as Flask does (no ``wsgi_app`` middleware), runs no request functions
    but wsrelay's (a host's ``before_request`` must still see every request), has no route
    of its own under ``/poll`` or ``/ws`` (werkzeug might pick it), and matches no hosts."""
    if type(app).wsgi_app is not Flask.wsgi_app or "wsgi_app" in vars(app) \
            or type(app).__call__ is not Flask.__call__ or "__call__" in vars(app):
        return False
    if app.config.get("SERVER_NAME") or app.url_map.host_matching:
        return False
    for registry in (app.before_request_funcs, app.after_request_funcs,
                     app.teardown_request_funcs, app.url_value_preprocessors):
        for function in registry.get(None, ()):
            if not getattr(function, "__module__", "").startswith("wsrelay."):
                return False
    roots = tuple(prefix + root for root in ROOTS)
    return not any(
        not rule.endpoint.startswith("wsrelay.") and rule.rule.startswith(roots)
        for rule in app.url_map.iter_rules()
    )


class DirectPath:
    """An app's direct path: ``route(environ)`` is the WSGI application that answers the
    request without Flask, or None when Flask must."""

    def __init__(self, app: Flask, state: AppRelay) -> None:
        self.app = app
        self.state = state
        self.prefix: str = app.config["WSRELAY_URL_PREFIX"]
        self._cors = bool(app.config["WSRELAY_ALLOWED_ORIGINS"])
        self._plain: bool | None = None  # decided at the first request: routes come first
        self.lanes = PollLanes(state, self.usable)

    def usable(self) -> bool:
        """No hook needs Flask's request now, and the app is plain (decided once)."""
        relay = self.state.relay
        if relay.connect_hooks or relay.identity_hooks or self.app.debug:
            return False
        if self._plain is None:
            self._plain = self.app.config["WSRELAY_DIRECT_PATH"] and plain_app(
                self.app, self.prefix)
        return self._plain

    def route(self, environ: dict[str, Any]) -> WSGIApp | None:
        path: str = environ.get("PATH_INFO", "")
        prefix = self.prefix
        if environ.get("REQUEST_METHOD") != "GET" or not path.startswith(prefix):
            return None
        path = path[len(prefix):]
        upgrade = isinstance(environ.get("wsgi.websocket"), DeferredWebSocket)
        channel: str | None
        if path.startswith("/poll/"):
            if self._cors or upgrade:  # werkzeug refuses an upgrade on a plain route
                return None
            channel = path[6:]
            answer = self._poll
        elif upgrade:
            if path == "/ws":
                channel = None
            elif path.startswith("/ws/"):
                channel = path[4:]
            else:
                return None
            answer = self._websocket
        else:
            return None
        if channel is not None and not CHANNEL_PATTERN.fullmatch(channel):
            return None
        if not self.usable():
            return None
        if environ.get(PARK_KEY) == IN_LOOP and self.state.hub.broker.shared:
            return None  # its history is read over the network: it would wait
        client = ClientRequest(environ, self.state)

        def application(environ: dict[str, Any], start_response: Callable[..., Any]
                        ) -> Iterable[bytes] | Pending:
            return answer(client, channel, start_response)

        return application

    def _poll(self, client: ClientRequest, channel: str | None,
              start_response: Callable[..., Any]) -> Iterable[bytes] | Pending:
        assert channel is not None
        try:
            check_host(client)
            if client.environ.get(PARK_KEY):  # it may wait without this greenlet
                poll = open_poll(client, channel)
                client.environ[RERUN_KEY] = self.lanes.lane(poll)  # its repeats, if it has them
                if poll.waits:
                    return HeldPoll(poll)
                body = poll.answer()
            else:
                body = answer_poll(client, channel)
        except ApiError as exc:
            return _refuse(exc, start_response)
        except Exception:
            return _fail(start_response)
        status, headers, _ = poll_parts(body)
        start_response(status, list(headers))
        return [body]

    @staticmethod
    def _websocket(client: ClientRequest, channel: str | None,
                   start_response: Callable[..., Any]) -> Iterable[bytes] | Pending:
        try:
            check_host(client)
            accept_websocket(client, channel)
        except ApiError as exc:
            return _refuse(exc, start_response)
        except Exception:
            return _fail(start_response)
        start_response("204 NO CONTENT", [])  # the handler writes nothing after a 101
        return []


class HeldPoll(Pending):
    """A poll that waits for a message while its connection is held without a greenlet
    (:mod:`wsrelay.server.parked`): its answer is made when it is ready, as
    :meth:`DirectPath._poll` makes it."""

    __slots__ = ("poll",)

    def __init__(self, poll: OpenPoll) -> None:
        super().__init__(poll.timeout)
        self.poll = poll

    def wake_with(self, respond: Callable[[], None]) -> None:
        self.poll.waiter.wake = respond

    def respond(self) -> Parts:
        try:
            return poll_parts(self.poll.answer())
        except ApiError as exc:
            return error_parts(exc)
        except Exception:
            return failure()

    def abandon(self) -> None:
        self.poll.end()


def _refuse(exc: ApiError, start_response: Callable[..., Any]) -> list[bytes]:
    status, headers, body = error_parts(exc)
    start_response(status, headers)
    return [body]


def _fail(start_response: Callable[..., Any]) -> list[bytes]:
    status, headers, body = failure()
    start_response(status, headers)
    return [body]
