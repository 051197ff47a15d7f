"""``GET /poll/<channel>``: Comet long-poll, a cursor over the channel's history.

The poll subscribes from its cursor and collects its answer from the hub
(:mod:`wsrelay.transports.poll_waiter`): no history is read again when it is
woken, and no message is encoded per poll. :func:`answer_poll` serves both the
Flask view and the direct path (:mod:`wsrelay.transports.direct`).
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Response
from gevent.event import Event

from ..auth import SUBSCRIBE
from ..broker import BrokerUnavailable, History
from ..errors import ApiError
from ..server.handler import SOCKET_KEY
from .checks import ClientRequest, admit, checked_since, here, occupy
from .hangup import watch_hangup
from .poll_waiter import ITEMS, PollWaiter, answer

MAX_POLL_TIMEOUT = 60.0
#: The headers of a poll's answer besides its length.
HEADERS = (("Content-Type", "application/json"), ("Cache-Control", "no-store"))


def _timeout(client: ClientRequest) -> float:
    text = client.arg("timeout")
    if text is None or text == "":
        return min(client.config["WSRELAY_POLL_TIMEOUT"], MAX_POLL_TIMEOUT)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= MAX_POLL_TIMEOUT:
        raise ApiError(400, "invalid_timeout", "timeout is a number of seconds from 0 to 60")
    return value


class OpenPoll:
    """A poll admitted and subscribed (:func:`open_poll`): answered at once when ``waits`` is
    False, else once its waiter wakes (``waiter.wake``) or ``timeout`` passes. :meth:`end`
    lets it go (once, however often it is called), :meth:`answer` makes its answer."""

    __slots__ = ("_release", "client", "ended", "expires", "name", "page", "timeout", "tracked",
                 "waiter", "waits")

    def __init__(self, client: ClientRequest, name: str, timeout: float,
                 release: Callable[[], None]) -> None:
        self.client = client
        self.name = name
        self.timeout = timeout
        self._release = release
        self.waiter = PollWaiter(name, client.config["WSRELAY_SUBSCRIBER_BUFFER"])
        self.tracked = client.state.track(self.waiter, client.identity)  # disconnect() finds it
        self.page: History | None = None
        #: When the token it was admitted with expires (None: it shows none that does).
        self.expires: float | None = None
        self.waits = False
        self.ended = False

    def end(self) -> None:
        """The poll is over: its subscription, its place in the worker's and its IP's counts
        go."""
        if self.ended:
            return
        self.ended = True
        waiter = self.waiter
        hub = self.client.state.hub
        hub.unsubscribe(waiter.subscription)
        hub.let_go(waiter)
        hub.stats.connections["poll"] -= 1
        self._release()
        waiter.end()

    def answer(self) -> bytes:
        """The JSON body of its answer (:meth:`end` first); :class:`ApiError` 403 when the
        application disconnected its identity meanwhile."""
        self.end()
        tracked = self.tracked
        if tracked is not None and tracked.ended:
            raise ApiError(403, "refused", tracked.ended)
        page = self.page
        assert page is not None
        # a gap is answered from the history page: the hub made no subscription then
        items = ([ITEMS.message(message) for message in page.messages] if page.reset
                 else self.waiter.items)
        return answer(self.name, page.cursor, items, page.reset)


def open_poll(client: ClientRequest, channel: str) -> OpenPoll:
    """Admit a poll (:class:`ApiError` when refused) and subscribe it from its cursor: what
    history holds after it is queued at once; ``waits`` says whether it must wait for more."""
    access = admit(client, channel, SUBSCRIBE)
    since = checked_since(client.arg("since"))
    timeout = _timeout(client)
    hub = client.state.hub
    poll = OpenPoll(client, access.channel, timeout, occupy(client, stream=True))
    poll.expires = access.claims.expires if access.claims is not None else None
    hub.stats.connections["poll"] += 1
    try:
        poll.page = page = hub.subscribe(poll.waiter.subscription, since)
    except BaseException as exc:
        poll.end()
        if isinstance(exc, BrokerUnavailable):
            raise ApiError(503, "broker_unavailable", str(exc)) from None
        raise
    if not (page.reset or poll.waiter.items or hub.draining) and timeout > 0:
        hub.hold(poll.waiter)
        poll.waits = True
    return poll


def answer_poll(client: ClientRequest, channel: str) -> bytes:
    """The JSON body of a poll's answer, at once when messages after ``since`` exist; else
    once one arrives, the timeout passes, the server stops or the client leaves, waiting
    in this greenlet. :class:`ApiError` for a refused poll."""
    poll = open_poll(client, channel)
    try:
        if poll.waits:
            ready = Event()
            poll.waiter.wake = ready.set
            with watch_hangup(client.environ.get(SOCKET_KEY), ready):
                ready.wait(poll.timeout)
    finally:
        poll.end()
    return poll.answer()


def poll(channel: str) -> Response:
    """The Flask view of :func:`answer_poll`."""
    return Response(answer_poll(here(), channel), headers=HEADERS)
