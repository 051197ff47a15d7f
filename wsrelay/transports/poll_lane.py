"""Long-polls that come back caught up: one subscription and one answer for them all.

Under steady traffic every long-poll client of a channel is answered when a
message comes and asks again at once, with the cursor it was given, on the same
keep-alive connection: its request repeats its last one but for ``since``
(:mod:`wsrelay.server.lane`). For such a repeat (:class:`PollLane`) the checks
whose results rest on the request's bytes (host, channel name, origin, token
signature and grants, timeout) passed already; those whose results can change run
again: the server stopping, the direct path still serving, the token's expiry, the
connect rate, the address's and the worker's counts. A poll whose cursor is the
channel's latest message joins the channel's :class:`PollGroup`: one subscription
of the hub, one answer made for every poll waiting on that channel, instead of a
subscription, a history read and a waiter each. Any other poll (a cursor behind or
written otherwise, a gap, a refused check) is declined and goes the full way
(:func:`~wsrelay.transports.poll.open_poll`), which answers it as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..errors import ApiError
from ..ids import InvalidMessageId, MessageId
from ..server.parked import Pending
from .answers import Parts, error_parts, poll_parts
from .checks import AppRelay, client_address
from .poll import OpenPoll
from .poll_waiter import PollWaiter, answer


class PollLanes:
    """An app's groups of caught-up polls, by channel; ``usable``: whether its direct path
    still serves (no hook came that needs Flask's request)."""

    def __init__(self, state: AppRelay, usable: Callable[[], bool]) -> None:
        self.state = state
        self.hub = state.hub
        self.limits = state.limits
        self.usable = usable
        self.groups: dict[str, PollGroup] = {}

    def lane(self, poll: OpenPoll) -> PollLane | None:
        """What answers a repeat of ``poll``, which the full way admitted; None for a poll
        that does not wait (``timeout=0``), and on a broker shared with other processes: a
        group begins with a read of the channel's history, which would wait for Redis in
        the event loop."""
        if poll.timeout <= 0 or self.state.hub.broker.shared:
            return None
        return PollLane(self, poll.name, client_address(poll.client), poll.expires,
                        poll.timeout)

    def join(self, channel: str, since: bytes) -> PollGroup | None:
        """The group a poll of ``channel`` from ``since`` waits in: the channel's, when
        ``since`` is its latest message as wsrelay writes ids; None when it is not."""
        group = self.groups.get(channel)
        if group is not None:
            return group if since == group.mark else None
        try:
            cursor = MessageId.parse(since.decode())
        except InvalidMessageId:
            return None
        if str(cursor).encode() != since:
            return None
        group = PollGroup(self, channel, cursor)
        caught_up = False
        try:
            caught_up = group.caught_up()
        finally:
            if not caught_up:
                group.end()
        if not caught_up:
            return None
        self.groups[channel] = group
        return group


class PollGroup:
    """The polls of one channel waiting from its latest message (``mark``, as clients send
    it back): one :class:`~wsrelay.transports.poll_waiter.PollWaiter` subscribed for them
    all, woken by the hub's flusher once per batch, answers them all with one answer. A
    group lasts until it answers, or its last poll leaves. For the hub it is one held
    stream (answered when the server stops) that ``holds`` its polls."""

    __slots__ = ("channel", "cursor", "ended", "id", "lanes", "mark", "polls", "ready",
                 "waiter")

    def __init__(self, lanes: PollLanes, channel: str, cursor: MessageId) -> None:
        self.lanes = lanes
        self.channel = channel
        self.cursor = cursor
        self.mark = str(cursor).encode()
        self.waiter = PollWaiter(channel, lanes.state.app.config["WSRELAY_SUBSCRIBER_BUFFER"])
        self.waiter.wake = self._wake
        self.id = self.waiter.id
        #: Its polls, each with what sends its answer.
        self.polls: dict[PollLane, Callable[[], None]] = {}
        #: The answer of the polls it wakes together.
        self.ready: Parts | None = None
        self.ended = False

    @property
    def holds(self) -> int:
        return len(self.polls)

    def caught_up(self) -> bool:
        """Subscribe from ``cursor``: whether nothing came after it (no gap either); held by
        the hub from then on."""
        hub = self.lanes.hub
        hub.hold(self)
        page = hub.subscribe(self.waiter.subscription, self.cursor)
        return not (page.reset or self.waiter.items)

    def parts(self) -> Parts:
        """The answer of its polls now: what came after its cursor, or nothing."""
        return poll_parts(answer(self.channel, self.cursor, self.waiter.items, False))

    def close(self, code: int, reason: str) -> None:
        """The server stops: answer every poll now with what there is."""
        self._wake()

    def abort(self) -> None:
        self._wake()

    def _wake(self) -> None:
        """Messages came (the hub's flusher), or the server stops: answer every poll,
        together."""
        polls, self.polls = self.polls, {}
        self.end()
        if not polls:
            return
        self.ready = self.parts()
        # the hub counted the messages once, for the waiter: they reach every poll
        self.lanes.hub.stats.delivered += self.waiter.sent * (len(polls) - 1)
        for respond in polls.values():
            respond()

    def leave(self, poll: PollLane) -> bool:
        """``poll`` leaves alone (answered at its timeout, or gone): False when it went with
        the others already."""
        if self.polls.pop(poll, None) is None:
            return False
        if not self.polls:
            self.end()
        return True

    def end(self) -> None:
        """The group is over: its subscription goes, and a next poll starts a new group."""
        if self.ended:
            return
        self.ended = True
        hub = self.lanes.hub
        hub.unsubscribe(self.waiter.subscription)
        hub.let_go(self)
        self.waiter.end()
        if self.lanes.groups.get(self.channel) is self:
            del self.lanes.groups[self.channel]


class PollLane(Pending):
    """A connection's repeats of a poll the full way admitted: as a
    :class:`~wsrelay.server.lane.Rerun`, the checks whose results can change, then a place
    in the channel's group (None, the full way, for anything else); as the
    :class:`~wsrelay.server.parked.Pending` of the repeat it took, that place. One per
    connection: its repeats come one after another."""

    param = "since"
    __slots__ = ("address", "channel", "expires", "group", "lanes")

    def __init__(self, lanes: PollLanes, channel: str, address: str, expires: float | None,
                 timeout: float) -> None:
        super().__init__(timeout)
        self.lanes = lanes
        self.channel = channel
        self.address = address
        self.expires = expires
        self.group: PollGroup | None = None  # while a repeat waits in it

    def __call__(self, since: bytes) -> Pending | Parts | None:
        lanes = self.lanes
        if lanes.hub.draining or not lanes.usable():
            return None
        expires = self.expires
        if expires is not None and expires <= time.time():
            return None  # the full way answers 401 token_expired
        group = lanes.join(self.channel, since)
        if group is None:
            return None
        try:
            lanes.limits.admit(self.address, time.monotonic(), stream=True)
        except ApiError as exc:
            if not group.polls:
                group.end()
            return error_parts(exc)
        lanes.hub.stats.connections["poll"] += 1
        self.group = group
        return self

    def wake_with(self, respond: Callable[[], None]) -> None:
        assert self.group is not None
        self.group.polls[self] = respond

    def respond(self) -> Parts:
        group = self._leave()
        if group.leave(self):
            return group.parts()  # alone: its timeout, or the server stopping
        assert group.ready is not None  # woken with the group
        return group.ready

    def abandon(self) -> None:
        self._leave().leave(self)

    def _leave(self) -> PollGroup:
        """Its place in the counts goes; the group it waited in."""
        group, self.group = self.group, None
        assert group is not None
        lanes = self.lanes
        lanes.limits.leave(self.address, stream=True)
        lanes.hub.stats.connections["poll"] -= 1
        return group
