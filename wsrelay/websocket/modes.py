"""What a WebSocket's messages mean: the raw relay, or ``wsrelay.v1`` requests.

Both modes get their rights from the request (token, connect hooks), checked
by the view before the upgrade. A raw connection's are decided then, once: it
has one channel. A ``wsrelay.v1`` connection names channels later, when the
request is over; its :class:`Policy` runs the same checks on each of them,
so it passes exactly the checks the URL's channel passed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gevent.event import Event

from ..auth import PUBLISH, SUBSCRIBE
from ..broker import BrokerUnavailable, History, Publishing
from ..errors import ApiError
from ..ids import MessageId
from . import envelopes
from .encoders import ENVELOPE, RAW
from .envelopes import BadRequest, Request, request_echo
from .protocol import CloseCode, InboundMessage, encode_frame

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ..limits import Publisher
    from .connection import WebSocketConnection


class Policy:
    """What one connection may do: rights per channel and action, and its publish rate.

    ``authorize(channel, action)`` raises :class:`ApiError` when the action is
    not allowed. The last channels found allowed are remembered, so a client
    publishing to its channels is not checked again for every message (the
    token cannot change; its expiry closes the socket); only a few are, since
    a client may name any number of channels over one connection.
    """

    def __init__(
        self, authorize: Callable[[str, str], object], rate: Publisher | None,
        max_subscriptions: int,
    ) -> None:
        self._authorize = authorize
        #: (channel, action) pairs found allowed, oldest first.
        self._allowed: dict[tuple[str, str], None] = {}
        self._remembered = 2 * max_subscriptions
        self.rate = rate
        self.max_subscriptions = max_subscriptions
        #: Channels the application ended this connection's subscription to (see
        #: :meth:`forbid`); None until it does.
        self._forbidden: set[str] | None = None

    def forbid(self, channel: str) -> None:
        """The application ended the subscription to ``channel``: the connection may not
        subscribe or publish there again (a new connection passes the checks anew)."""
        for action in (SUBSCRIBE, PUBLISH):
            self._allowed.pop((channel, action), None)
        if self._forbidden is None:
            self._forbidden = set()
        self._forbidden.add(channel)

    def check(self, channel: str, action: str) -> None:
        if self._forbidden is not None and channel in self._forbidden:
            raise ApiError(403, "refused", "unsubscribed by the server: this connection may "
                           "not use the channel again")
        key = (channel, action)
        if key not in self._allowed:
            self._authorize(channel, action)
            if len(self._allowed) >= self._remembered:
                del self._allowed[next(iter(self._allowed))]
            self._allowed[key] = None

    def take(self) -> bool:
        """Count one publish; False when it is over the rate."""
        return within_rate(self.rate)


def within_rate(rate: Publisher | None) -> bool:
    """Count one publish against ``rate`` (None: unlimited); False when it is over."""
    return rate is None or rate.take(time.monotonic())


#: Publishes of one connection that may await the broker's answers at once: meanwhile the
#: connection goes on reading; past it, it waits for an answer (a flooding client is slowed,
#: not buffered). A remote broker answers in order, so answers leave in order too.
MAX_IN_FLIGHT = 128


class InFlight:
    """A connection's publishes awaiting the broker's answers, at most ``limit`` of them."""

    __slots__ = ("_room", "count", "limit", "timeout")

    def __init__(self, limit: int = MAX_IN_FLIGHT, timeout: float = 30.0) -> None:
        self.count = 0
        self.limit = limit
        self.timeout = timeout
        self._room: Event | None = None

    def wait_for_room(self) -> None:
        """Return once another publish may go out; raise :class:`BrokerUnavailable` if the
        broker answers none within ``timeout``."""
        while self.count >= self.limit:
            if self._room is None:
                self._room = Event()
            self._room.clear()
            if not self._room.wait(self.timeout):
                raise BrokerUnavailable("the message broker is unavailable (no answers)")

    def track(
        self, publishing: Publishing, answer: Callable[..., None], *args: object
    ) -> None:
        """Call ``answer(*args, publishing)`` once ``publishing`` is resolved; count it until
        then. (Arguments rather than a closure: a publish the broker answered at once, as the
        memory broker does every one, then allocates nothing here.)"""
        if publishing.done:
            answer(*args, publishing)
            return
        self.count += 1

        def answered(publishing: Publishing) -> None:
            self.count -= 1
            if self._room is not None:
                self._room.set()
            answer(*args, publishing)

        publishing.then(answered)


class RawMode:
    """``/ws/<channel>``: every message the client sends is published to its channel.

    ``may_publish`` is the client's right to publish there, decided at connect;
    ``rate`` its publish rate (None: unlimited).
    """

    __slots__ = ("channel", "echo", "in_flight", "may_publish", "rate", "since")

    def __init__(self, channel: str, since: MessageId | None, *, may_publish: bool,
                 rate: Publisher | None, echo: bool = True) -> None:
        self.channel = channel
        self.since = since
        self.may_publish = may_publish
        self.rate = rate
        self.echo = echo
        self.in_flight = InFlight()

    def start(self, connection: WebSocketConnection) -> None:
        """Subscribe, replaying what followed ``since``; if history no longer holds all of
        it, close with 4410 before replaying anything (see :func:`gap_reason`)."""
        page = connection.subscribe(self.channel, self.since, RAW, echo=self.echo)
        if page.reset:
            connection.close(CloseCode.HISTORY_GAP, gap_reason(page))

    def receive(self, connection: WebSocketConnection, message: InboundMessage) -> None:
        if not self.may_publish:
            connection.close(CloseCode.POLICY_VIOLATION, "not allowed to publish")
        elif not within_rate(self.rate):
            connection.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
        else:
            try:
                self.in_flight.wait_for_room()
            except BrokerUnavailable:
                _not_accepted(connection)
                return
            try:
                publishing = connection.hub.publish_async(
                    self.channel, message.data, binary=message.binary, sender=connection.id
                )
            except ApiError as exc:  # a publish hook refused it: raw mode has no reply
                log.info("websocket %s: message to %s refused: %s", connection.id,
                         self.channel, exc.message)
                return
            self.in_flight.track(publishing, _refused, connection)

    def revoke(self, connection: WebSocketConnection, channel: str, reason: str) -> bool:
        """Its one channel taken: the connection closes (1008)."""
        if channel != self.channel:
            return False
        connection.close(CloseCode.POLICY_VIOLATION, reason)
        return True


def _refused(connection: WebSocketConnection, publishing: Publishing) -> None:
    """A raw publish has no answer of its own: one not accepted closes the connection."""
    if publishing.error is not None:
        _not_accepted(connection)


def _not_accepted(connection: WebSocketConnection) -> None:
    connection.close(CloseCode.TRY_AGAIN_LATER, "broker unavailable: not accepted")


def gap_reason(page: History) -> str:
    """The reason of a 4410 close: the id to reconnect with, ``since=<id>``, which replays
    everything history still holds (the position before its oldest message)."""
    if page.messages:
        first = page.messages[0].id
        resume = MessageId(first.epoch, first.seq - 1)
    else:
        resume = page.cursor
    return f"messages were missed: resume with since={resume}"


class JsonMode:
    """``wsrelay.v1``: JSON requests over one socket, any number of channels.

    A request that cannot be honoured, however malformed, is answered with an
    ``error`` envelope naming it; the connection stays open. ``max_data``: the
    largest message a publish may carry (its frame may be larger: see
    :func:`~wsrelay.websocket.envelopes.max_request_size`).
    """

    def __init__(self, policy: Policy, first: tuple[str, MessageId | None] | None = None, *,
                 max_data: int) -> None:
        self.policy = policy
        self.first = first
        self.max_data = max_data
        self.in_flight = InFlight()

    def start(self, connection: WebSocketConnection) -> None:
        if self.first is not None:
            channel, since = self.first
            connection.subscribe(channel, since, ENVELOPE)

    def receive(self, connection: WebSocketConnection, message: InboundMessage) -> None:
        reply: bytes | None
        if message.binary:
            reply = envelopes.error("invalid_request", "wsrelay.v1 requests are JSON text frames")
        else:
            try:
                request = envelopes.parse_request(message.data, self.max_data)
            except BadRequest as exc:
                reply = exc.envelope
            else:
                reply = self._answer(connection, request)
        if reply is not None:
            connection.send(encode_frame(reply, binary=False))

    def _answer(self, connection: WebSocketConnection, request: Request) -> bytes | None:
        handler = getattr(self, f"_{request.type}")
        try:
            result = handler(connection, request)
        except ApiError as exc:
            return envelopes.error(exc.code, exc.message, request_echo(request))
        except BrokerUnavailable:
            return _unavailable(request)
        if isinstance(result, Publishing):  # answered when the broker answers
            self.in_flight.track(result, self._published, connection, request)
            return None
        return _reply(request, result)

    @staticmethod
    def _published(
        connection: WebSocketConnection, request: Request, publishing: Publishing
    ) -> None:
        message = publishing.message
        reply = _unavailable(request) if message is None else _reply(request, {
            "id": str(message.id)})
        if reply is not None:
            connection.send(encode_frame(reply, binary=False))

    def revoke(self, connection: WebSocketConnection, channel: str, reason: str) -> bool:
        """The channel is forbidden to this connection from now on; a subscription to it
        ends with an ``unsubscribed`` envelope."""
        self.policy.forbid(channel)
        if not connection.unsubscribe(channel):
            return False
        connection.send(encode_frame(envelopes.unsubscribed(channel, reason), binary=False))
        return True

    def _subscribe(self, connection: WebSocketConnection, request: Request) -> dict:
        self.policy.check(request.channel, SUBSCRIBE)
        subscriptions = connection.subscriptions
        if request.channel not in subscriptions and (
            len(subscriptions) >= self.policy.max_subscriptions
        ):
            raise ApiError(429, "too_many_subscriptions",
                           f"at most {self.policy.max_subscriptions} channels per connection")
        page = connection.subscribe(request.channel, request.since, ENVELOPE)
        return {"cursor": str(page.cursor)}

    def _unsubscribe(self, connection: WebSocketConnection, request: Request) -> dict:
        connection.unsubscribe(request.channel)
        return {}

    def _publish(self, connection: WebSocketConnection, request: Request) -> Publishing:
        self.policy.check(request.channel, PUBLISH)
        if not self.policy.take():
            raise ApiError(429, "rate_limited", "too many messages: slow down")
        self.in_flight.wait_for_room()
        return connection.hub.publish_async(
            request.channel, request.data, binary=request.binary, sender=connection.id
        )

    def _presence(self, connection: WebSocketConnection, request: Request) -> dict:
        self.policy.check(request.channel, SUBSCRIBE)
        return {"count": connection.hub.presence(request.channel)}


def _reply(request: Request, result: dict) -> bytes | None:
    """The envelope answering a request that succeeded, if it asks for one."""
    if request.ack is not None:
        return envelopes.ack(request.ack, **result)
    if request.type == "presence":
        return envelopes.presence(request.channel, result["count"])
    return None


def _unavailable(request: Request) -> bytes:
    return envelopes.error(
        "broker_unavailable", "the message broker is unavailable: retry later",
        request_echo(request),
    )
