"""The broker interface: ids, bounded history and carrying messages to the hub.

A broker is the only place where a channel's order is decided. The hub asks
it to publish and to read history, tells it which channels have local
subscribers (``watch``), and receives every message of those channels through
the ``deliver`` callback given to :meth:`Broker.start`, in id order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import ClassVar

from gevent.event import Event

from ..errors import BrokerUnavailable
from ..ids import MessageId
from ..message import Message

Deliver = Callable[[Message], None]
#: Receives a control message (:mod:`wsrelay.control`'s commands) sent by any process.
Control = Callable[[bytes], None]


class Publishing:
    """A publish on its way: resolved once, with its :class:`Message` or the
    :class:`BrokerUnavailable` that says it was not accepted.

    What lets a connection go on reading while its publishes are in flight
    (:meth:`Broker.publish_async`): callbacks given to :meth:`then` run in
    the order the publishes were made, for one broker.
    """

    __slots__ = ("_callbacks", "_event", "done", "error", "message")

    def __init__(self) -> None:
        self.done = False
        self.message: Message | None = None
        self.error: BrokerUnavailable | None = None
        self._callbacks: list[Callable[[Publishing], None]] = []
        self._event: Event | None = None

    def resolve(self, message: Message | None, error: BrokerUnavailable | None = None) -> None:
        self.message, self.error, self.done = message, error, True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)
        if self._event is not None:
            self._event.set()

    def then(self, callback: Callable[[Publishing], None]) -> None:
        """Call ``callback`` with this publish once it is resolved (now, if it is)."""
        if self.done:
            callback(self)
        else:
            self._callbacks.append(callback)

    def result(self, timeout: float | None = None) -> Message:
        """Wait for the answer: the message, or raise :class:`BrokerUnavailable`."""
        if not self.done:
            if self._event is None:
                self._event = Event()
            if not self._event.wait(timeout):
                raise BrokerUnavailable("the message broker is unavailable (no answer)")
        if self.error is not None:
            raise self.error
        assert self.message is not None
        return self.message


@dataclass(frozen=True, slots=True)
class History:
    """What a channel retains after a cursor.

    ``cursor`` is the id to resume from next time: the last message returned,
    or the channel's current position when nothing is newer. ``reset`` says
    the cursor was older than what is retained (or from another epoch), so
    messages may have been missed: a gap is reported, never silent.
    """

    messages: list[Message]
    cursor: MessageId
    reset: bool = False


def read_after(
    retained: Sequence[Message], epoch: int, last_seq: int, since: MessageId | None, *,
    ttl_ms: int, origin: int = 0,
) -> History:
    """Select the retained messages after ``since``: the rule every broker shares.

    ``retained`` are the channel's messages in order, ``epoch``/``last_seq``
    its current position. A channel that never had a message, or whose state
    expired, stores nothing: it reads as a *virtual epoch*, the current time
    in ms from the clock epochs are taken from, at seq 0.

    A cursor at seq 0 stands before any message. Its epoch may differ from
    the channel's (it was virtual, or the channel has started since), and
    still nothing was missed if the channel's epoch began after it and less
    than ``ttl_ms`` after it: a whole epoch that came and expired in between
    would have lived at least that long (its state is kept for a TTL after its
    last use), so the channel's epoch would be later. Then only the retained
    messages must start at seq 1. ``origin`` is when the broker's data began
    (a restart or a flush may have lost an epoch without waiting for its TTL):
    a cursor from before it is not trusted.

    ``retained`` is in id order (a list, or the memory broker's deque, not copied): the
    messages after a cursor are found by bisection and taken from the end, so a cursor
    behind the head costs the messages it gets, not every retained one.
    """
    cursor = MessageId(epoch, last_seq)
    if since is None:
        return History([], cursor)
    first_seq = retained[0].id.seq if retained else last_seq + 1
    if since.epoch == epoch and since.seq <= last_seq:
        missed = first_seq > since.seq + 1
    elif since.seq == 0 and origin <= since.epoch <= epoch < since.epoch + ttl_ms:
        missed = first_seq > 1
    else:  # another epoch, or a position this channel never reached
        missed = True
    if missed:
        return History(list(retained), cursor, reset=True)
    start = bisect_right(retained, since.seq, key=_seq)
    newer = len(retained) - start
    return History(list(islice(reversed(retained), newer))[::-1] if newer else [], cursor)


def _seq(message: Message) -> int:
    return message.id.seq


class Broker(ABC):
    """Assigns ids, keeps bounded history, carries messages between processes."""

    #: True when other processes publish into and read from the same channels.
    shared: ClassVar[bool] = False

    def __init__(self, *, history_size: int, history_ttl: float) -> None:
        self.history_size = history_size
        self.history_ttl = history_ttl
        self._deliver: Deliver | None = None
        #: Failed calls to a backing store since start (a metric; a memory broker has none).
        self.errors = 0

    def start(self, deliver: Deliver) -> None:
        """Begin handing every message of a watched channel to ``deliver``."""
        self._deliver = deliver

    @abstractmethod
    def publish(
        self, channel: str, data: bytes, *, binary: bool = False, sender: str | None = None,
        author: str | None = None,
    ) -> Message:
        """Give the message its id, retain it and deliver it; return it once accepted.
        ``sender`` and ``author`` travel with it (see :class:`~wsrelay.message.Message`).

        Raise :class:`BrokerUnavailable` when it cannot be accepted.
        """

    def publish_async(
        self, channel: str, data: bytes, *, binary: bool = False, sender: str | None = None,
        author: str | None = None,
    ) -> Publishing:
        """:meth:`publish` without waiting for the answer, where the broker can do that (a
        remote one pipelines); here it is the synchronous publish, already resolved."""
        publishing = Publishing()
        try:
            message = self.publish(channel, data, binary=binary, sender=sender, author=author)
        except BrokerUnavailable as exc:
            publishing.resolve(None, exc)
        else:
            publishing.resolve(message)
        return publishing

    @abstractmethod
    def history(self, channel: str, since: MessageId | None) -> History:
        """The retained messages of ``channel`` after ``since`` (none when ``since`` is None).

        For a watched channel the hub relies on one rule: once this returns,
        every later message arrives through ``deliver``, and no message at or
        below the returned cursor is delivered again. That is what lets a
        subscriber replay history and go live with no gap and no duplicate.
        """

    def listen_control(self, receive: Control) -> None:  # noqa: B027 - optional hook
        """Hand every control message that another process sends to ``receive`` (a broker
        that is not shared has no other process: nothing arrives)."""

    def send_control(self, payload: bytes) -> None:  # noqa: B027 - optional hook
        """Send ``payload`` to the :meth:`listen_control` receiver of every process sharing
        this broker (this one's included, on a shared broker). Raise
        :class:`BrokerUnavailable` when it could not be sent."""

    def watch(self, channel: str) -> None:  # noqa: B027 - optional hook
        """The first local subscriber of ``channel`` arrived."""

    def unwatch(self, channel: str) -> None:  # noqa: B027 - optional hook
        """The last local subscriber of ``channel`` left."""

    def presence(self, channel: str, local: int) -> int:
        """Subscribers of ``channel`` in every process sharing this broker; ``local`` is
        this process's own count (the whole answer for a broker that is not shared)."""
        return local

    def report_presence(self, counts: dict[str, int]) -> None:  # noqa: B027 - optional hook
        """This process's subscriber counts of the channels named (batched by the hub)."""

    def sweep(self) -> None:  # noqa: B027 - optional hook
        """Drop what has expired; called periodically by the hub."""

    def status(self) -> dict[str, object]:
        """A small report for health checks."""
        return {"broker": type(self).__name__, "ok": True}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and greenlets."""
