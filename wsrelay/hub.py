"""The hub: channels, fan-out, the flusher, heartbeats and presence.

:class:`MessageServer` is the hub (the name is the seed's, kept for the code
written against it). It knows no transport: each :class:`Subscription`
brings its :class:`Encoder` (a raw WebSocket frame, a ``wsrelay.v1``
envelope: :mod:`wsrelay.websocket.encoders`), and each message is encoded at
most once per encoder, the same bytes queued on every subscriber that uses
it. The hub never writes to a socket while fanning out: a single flusher
greenlet then gives each connection its pending bytes in one non-blocking
write. What a client sent in one read is fanned out as one run when the reader is done
with it (:meth:`~MessageServer.gather`): the frames of the run joined once, one piece queued
per subscriber instead of one per message. A connection written to less than the write delay
ago waits until its
window ends, gathering what arrives meanwhile into the same write (see
:mod:`wsrelay.pacing`); an idle one is written at once. A connection that
cannot keep up only grows its own bounded queue and is closed when the queue
is full; nobody else waits for it. Keeping
connections alive is the connection's business too: the heartbeat asks each
one to :meth:`~Connection.ping`. SSE streams and long-polls are connections
of the hub too (:mod:`wsrelay.transports.event_stream`, :mod:`wsrelay.transports.poll_waiter`):
they are :meth:`~MessageServer.hold`-en instead of attached, pinged by nobody and left out
of presence.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

import gevent
from gevent.event import Event

from .broker import Broker, History, Publishing
from .fairness import input_pending, let_others_run
from .ids import MessageId
from .message import Message
from .pacing import WRITE_DELAY, write_at
from .stats import Stats

log = logging.getLogger(__name__)

#: How often changed subscriber counts are reported to a shared broker (presence), and
#: after how many such reports every count is reported again, to keep it fresh.
PRESENCE_INTERVAL = 1.0
PRESENCE_REFRESH = 10


class Connection(Protocol):
    """What the hub needs of a live connection (a WebSocket's).

    One attribute is optional: ``linger`` (seconds, 0.0 when absent), how much longer than
    its write window a connection's queued bytes may wait for the next message to join them;
    they go out as soon as it arrives (an SSE stream's: ``WSRELAY_SSE_LINGER``).
    """

    id: str
    last_seen: float
    #: Messages delivered to it, counted by the hub.
    sent: int
    #: Owned by the hub: True while the connection waits in the flusher's list.
    dirty: bool
    #: When bytes last went out to it (``time.monotonic()``, 0.0 before the first; the
    #: flusher moves it to the start of the pass that wrote it): the flusher paces its writes
    #: by it (see :mod:`wsrelay.pacing`).
    written: float

    def push(self, frame: bytes) -> None: ...

    def flush(self) -> None: ...

    def ping(self) -> None:
        """Queue whatever keeps the connection alive (for a WebSocket: a ping frame)."""

    def close(self, code: int, reason: str) -> None: ...

    def abort(self) -> None: ...


class Encoder(Protocol):
    """How one kind of subscription wants messages: shared by every subscription of its kind,
    so the hub encodes a message once per encoder.

    An encoder whose encodings are pieces of one byte stream (WebSocket frames) says so with
    a ``joins = True`` attribute: a run of messages is then queued on each subscriber as
    one piece, their encodings joined (see :meth:`MessageServer.gather`). Without it
    (a long-poll's items, each one a member of a JSON answer), each is queued alone.
    """

    def message(self, message: Message) -> bytes:
        """The bytes to queue for ``message``."""

    def reset(self, channel: str, cursor: MessageId) -> bytes | None:
        """The bytes that tell a subscriber messages were missed before ``cursor``, or None
        when this encoding cannot say so: the subscription is then not made."""


class Subscription:
    """One connection's interest in one channel, and how it wants messages encoded."""

    __slots__ = ("channel", "connection", "counted", "echo", "encoder", "held")

    def __init__(
        self, connection: Connection, channel: str, encoder: Encoder, *, echo: bool = True,
        counted: bool = True,
    ) -> None:
        self.connection = connection
        self.channel = channel
        self.encoder = encoder
        self.echo = echo
        #: Counted in the channel's presence (a WebSocket's; not an SSE stream or long-poll).
        self.counted = counted
        #: While not None, history is being replayed and live messages wait here.
        self.held: list[Message] | None = None


class MessageServer:
    """Channel -> subscriptions, fan-out through a flusher, heartbeats, presence."""

    def __init__(
        self, broker: Broker, *, ping_interval: float = 20.0, ping_timeout: float = 20.0,
        write_delay: float = WRITE_DELAY,
    ) -> None:
        """``write_delay``: seconds a connection written to recently gathers messages before
        its next write (see :mod:`wsrelay.pacing`); 0 writes every message at once."""
        self.broker = broker
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.write_delay = write_delay
        self.connections: set[Connection] = set()
        #: SSE streams and long-polls being served: not pinged, ended when the hub drains.
        self.streams: set[Connection] = set()
        self._channels: dict[str, set[Subscription]] = {}
        #: Per channel, the subscriptions presence does not count.
        self._uncounted: Counter[str] = Counter()
        #: Channels whose local count changed since the last presence report (only kept
        #: where a shared broker reads the reports).
        self._presence_changed: set[str] = set()
        self._dirty: list[Connection] = []
        #: Readers handling input now (see :meth:`gather`), and the messages delivered
        #: meanwhile, waiting for :meth:`settle`.
        self._gathering = 0
        self._gathered: list[Message] = []
        #: The earliest a lingering connection waiting in the list is due (see ``linger``):
        #: from then on every delivered message wakes the flusher, which writes it at once.
        self._due_on_arrival = math.inf
        #: Publish times of messages delivered since the last flush (for the latency metric).
        self._flush_times: list[float] = []
        self.stats = Stats()
        #: True once the process is stopping: held requests answer, new ones are refused.
        self.draining = False
        self._wakeup = Event()
        self._greenlets: list[gevent.Greenlet] = []
        broker.start(self.deliver)

    # -- life cycle -----------------------------------------------------------------

    def start(self) -> None:
        """Start the flusher, the heartbeat and presence reports; idempotent."""
        if not self._greenlets:
            self._greenlets = [gevent.spawn(self._flusher), gevent.spawn(self._heartbeat)]
            if self.broker.shared:
                self._greenlets.append(gevent.spawn(self._report_presence))

    def stop(self) -> None:
        gevent.killall(self._greenlets)
        self._greenlets = []

    def drain(self, timeout: float) -> None:
        """Send every client away, letting queued messages out first, within ``timeout``.

        Held long-polls answer with what they have and SSE streams end after
        their queue (both are closed like a connection); each WebSocket gets
        its queue, then a close frame 1001. It returns once all of them have left (the broker
        may be closed then: nobody reads from it any more); whatever is still
        open at the deadline is cut.
        """
        self.draining = True
        for connection in [*self.streams, *self.connections]:
            connection.close(1001, "server shutting down")
        deadline = time.monotonic() + timeout
        while self._serving() and time.monotonic() < deadline:
            gevent.sleep(0.05)
        for connection in [*self.streams, *self.connections]:
            connection.abort()

    def _serving(self) -> bool:
        """Clients still being served: WebSockets, long-polls and SSE streams (counted by
        their transports from before their first read of the broker to after their last)."""
        counts = self.stats.connections
        return bool(self.connections or self.streams or counts["poll"] or counts["sse"])

    def attach(self, connection: Connection) -> None:
        """A connection opened: it is pinged until :meth:`detach`."""
        self.connections.add(connection)
        self.stats.connections["websocket"] += 1

    def detach(self, connection: Connection) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            self.stats.connections["websocket"] -= 1

    def hold(self, connection: Connection) -> None:
        """An SSE stream or long-poll is served until :meth:`let_go`: not pinged (its
        transport keeps it alive), closed when the hub drains."""
        self.streams.add(connection)

    def let_go(self, connection: Connection) -> None:
        self.streams.discard(connection)

    # -- publishing and delivery ----------------------------------------------------

    def publish(
        self, channel: str, data: bytes | str, *, binary: bool | None = None,
        sender: str | None = None, author: str | None = None,
    ) -> Message:
        """Publish to a channel; ``str`` is text, ``bytes`` binary unless ``binary=False``.
        ``sender``: the publishing connection (for ``echo=0``); ``author``: who the
        application says published it (see :class:`~wsrelay.message.Message`)."""
        payload, is_binary = _payload(data, binary)
        message = self.broker.publish(channel, payload, binary=is_binary, sender=sender,
                                      author=author)
        self.stats.published += 1
        return message

    def publish_async(
        self, channel: str, data: bytes | str, *, binary: bool | None = None,
        sender: str | None = None, author: str | None = None,
    ) -> Publishing:
        """:meth:`publish` without waiting for the broker's answer (see
        :meth:`Broker.publish_async <wsrelay.broker.base.Broker.publish_async>`)."""
        payload, is_binary = _payload(data, binary)
        publishing = self.broker.publish_async(channel, payload, binary=is_binary, sender=sender,
                                               author=author)
        publishing.then(self._count_published)
        return publishing

    def _count_published(self, publishing: Publishing) -> None:
        if publishing.error is None:
            self.stats.published += 1

    def deliver(self, message: Message) -> None:
        """Called by the broker, in order, for every message of a watched channel. While a
        reader :meth:`gather`-s, the message waits for its :meth:`release`."""
        if self._gathering:
            gathered = self._gathered
            if not gathered:  # whatever holds the gathering up, the flusher settles it
                self._wakeup.set()
            gathered.append(message)
            return
        self._fan_out(message.channel, (message,))

    def gather(self) -> None:
        """A reader starts handling a stretch of input already read: the messages it
        publishes (and any other delivered meanwhile) wait, and :meth:`release` queues them
        on their subscribers together, one piece of bytes per subscriber for each run of
        messages of a channel instead of one per message. Each call is matched by a
        :meth:`release`. A reader that waits in between (a ``wsrelay.v1`` subscription reading
        its history from Redis) holds back what others publish meanwhile only until the
        flusher's next turn, which settles it."""
        self._gathering += 1

    def release(self) -> None:
        """The stretch a :meth:`gather` began is over: queue what was gathered."""
        self._gathering -= 1
        self.settle()

    def settle(self) -> None:
        """Queue the gathered messages on their subscribers now, in order: before anything
        that must not overtake them is queued (an ack, a close frame, a replay)."""
        gathered = self._gathered
        if not gathered:
            return
        self._gathered = []
        start = 0
        channel = gathered[0].channel
        for index, message in enumerate(gathered):
            if message.channel != channel:  # a run ends: runs keep the order between channels
                self._fan_out(channel, gathered[start:index])
                start, channel = index, message.channel
        self._fan_out(channel, gathered[start:] if start else gathered)

    def _fan_out(self, channel: str, messages: Sequence[Message]) -> None:
        """Queue ``messages`` (of ``channel``, in order) on every subscriber, each encoded
        once per encoder; where the encoder's pieces join (``joins``: see :class:`Encoder`),
        as one piece of bytes, the same for every subscription of that encoder."""
        subscriptions = self._channels.get(channel)
        if not subscriptions:
            return
        count = len(messages)
        #: per encoder, each message's encoding, and them all joined (None: they do not join)
        encoded: dict[Encoder, tuple[list[bytes], bytes | None]] = {}
        encoder: Encoder | None = None  # the last subscription's, and its bytes
        pieces: list[bytes] = []
        data: bytes | None = None
        senders = {message.sender for message in messages}
        dirty = self._dirty
        known = len(dirty)  # connections the flusher already knows of
        delivered = 0
        for subscription in tuple(subscriptions):
            if subscription.held is not None:
                subscription.held.extend(messages)
                continue
            connection = subscription.connection
            if subscription.encoder is not encoder:
                encoder = subscription.encoder
                cached = encoded.get(encoder)
                if cached is None:
                    cached = encoded[encoder] = _encode(encoder, messages)
                pieces, data = cached
            if data is not None and (subscription.echo or connection.id not in senders):
                connection.push(data)
                sent = count
            else:  # piece by piece, or the subscriber's own messages left out
                sent = _push_pieces(connection, pieces, data is not None, messages,
                                    None if subscription.echo else connection.id)
                if not sent:
                    continue
            delivered += sent
            connection.sent += sent
            if not connection.dirty:
                connection.dirty = True
                dirty.append(connection)
        stats = self.stats
        stats.delivered += delivered
        stats.channel_messages[channel] += count
        self._flush_times.extend([message.time for message in messages])
        # New ones to write, or a lingering one waits for this message; else each is
        # written when its window ends.
        if len(dirty) > known or self._due_on_arrival <= time.monotonic():
            self._wakeup.set()

    def send(self, connection: Connection, frame: bytes) -> None:
        """Queue a frame of a connection's own (an ack, an error), after the messages gathered
        so far; the flusher writes it."""
        self.settle()
        connection.push(frame)
        self.mark_dirty(connection)

    def mark_dirty(self, connection: Connection) -> None:
        """A connection queued frames outside fan-out; the flusher will write them."""
        if not connection.dirty:
            connection.dirty = True
            self._dirty.append(connection)
        self._wakeup.set()

    def _flusher(self) -> None:
        """Write what is due; while a client's input is still being fanned out (a burst:
        the messages that will reach the same sockets are already read), hold the pass
        until that input is handled, at most one more write delay: a burst then costs a
        ``send`` or two per socket, not one per window it takes to fan out."""
        wakeup = self._wakeup
        timeout: float | None = None
        held = 0.0  # when the pass began to wait for input being handled (0.0: it does not)
        while True:
            wakeup.wait(timeout)
            wakeup.clear()
            if input_pending() and self.write_delay:
                now = time.monotonic()
                held = held or now
                if now - held < self.write_delay:
                    let_others_run()
                    timeout = 0.0
                    continue
            held = 0.0
            timeout = self.flush_pending()

    def flush_pending(self) -> float | None:
        """Write every dirty connection's queue that is due, each in one non-blocking write;
        return the seconds until the first of those left waiting is due (None: none waits).

        A connection is due when its last write is at least ``write_delay`` ago
        (:func:`~wsrelay.pacing.write_at`); the others stay in the list, and
        what reaches them meanwhile joins the same write. Every connection this
        pass writes counts as written at its start, so they are all due again
        together: a thousand sockets written one after another over a few
        milliseconds would otherwise fall due one after another, and the next
        window would take a pass for each few of them.
        """
        self.settle()
        now = time.monotonic()
        delay = self.write_delay
        dirty, self._dirty = self._dirty, []
        waiting = self._dirty
        first_due = due_on_arrival = math.inf
        lingered = 0.0
        for connection in dirty:
            due = write_at(connection.written, now, delay)
            if due > now:
                waiting.append(connection)
                linger = getattr(connection, "linger", 0.0)
                if linger:  # due on the next message, or once it has lingered
                    due_on_arrival = min(due_on_arrival, due)
                    due += linger
                    lingered = max(lingered, linger)
                if due < first_due:
                    first_due = due
                continue
            connection.dirty = False
            written = connection.written
            try:
                connection.flush()
                if connection.written != written:  # it wrote: its window starts with this
                    connection.written = now  # pass, like everyone's written in it
            except Exception:  # a bug in one connection must not stop the others
                log.exception("flush failed; dropping connection %s", connection.id)
                connection.abort()
        self._due_on_arrival = due_on_arrival
        if self._flush_times:
            self._record_latencies(delay + lingered if waiting else 0.0)
        return first_due - now if waiting else None

    def _record_latencies(self, age: float) -> None:
        """Record the latency of the messages published at least ``age`` seconds ago: with
        connections still waiting, only those older than the window are surely written
        (each connection waits at most that long). A time ahead of this host's clock (another
        host's) is recorded at once, so nothing is kept for longer than the window."""
        times, self._flush_times = self._flush_times, []
        wall = time.time()
        record = self.stats.record_latency
        for published in times:
            if 0 <= wall - published < age:
                self._flush_times.append(published)
            else:
                record(wall - published)

    # -- subscriptions --------------------------------------------------------------

    def subscribe(self, subscription: Subscription, since: MessageId | None) -> History:
        """Add a live subscription; first queue what it missed after ``since``.

        Live messages that arrive while history is read are held, then
        queued after it without the ones history already held: no gap, no
        duplicate, whatever the broker's latency. Without ``since`` the read
        still fixes where "live" starts, so a message already in flight from
        another worker is not delivered as if it were new. A subscription is
        told of a gap before the replay, by its encoder's ``reset``; one whose
        encoding cannot say so (the raw relay's) gets nothing and is removed
        again: the returned page says ``reset``, and its caller reports the gap
        (the raw mode closes the connection).
        """
        channel = subscription.channel
        subscription.held = []
        self._add_interest(channel, subscription)
        try:
            page = self.broker.history(channel, since)
        except BaseException:
            self.unsubscribe(subscription)
            raise
        self.settle()  # what a reader gathered while history was read is held, not live
        held, subscription.held = subscription.held or [], None
        connection = subscription.connection
        encoder = subscription.encoder
        pushed = False
        if page.reset:
            notice = encoder.reset(channel, page.cursor)
            if notice is None:
                self.unsubscribe(subscription)
                return page
            connection.push(notice)
            pushed = True
        for message in page.messages:
            connection.push(encoder.message(message))
            pushed = True
        for message in held:
            if message.id > page.cursor and (subscription.echo or connection.id != message.sender):
                connection.push(encoder.message(message))
                pushed = True
        if pushed:  # a caught-up long-poll costs the flusher nothing
            self.mark_dirty(connection)
        return page

    def unsubscribe(self, subscription: Subscription) -> None:
        self.settle()  # what was published before it left reaches it
        channel = subscription.channel
        members = self._channels.get(channel)
        if members is None or subscription not in members:
            return
        members.discard(subscription)
        if not members:
            del self._channels[channel]
            self.broker.unwatch(channel)
        if subscription.counted:
            self._presence_may_change(channel)
        else:
            self._uncounted[channel] -= 1
            if not self._uncounted[channel]:
                del self._uncounted[channel]

    def _add_interest(self, channel: str, subscription: Subscription) -> None:
        self.settle()  # what was published before it came is not its to hold
        members = self._channels.get(channel)
        if members is None:
            self.broker.watch(channel)
            members = self._channels[channel] = set()
        members.add(subscription)
        if subscription.counted:
            self._presence_may_change(channel)
        else:
            self._uncounted[channel] += 1

    def _local_presence(self, channel: str) -> int:
        return len(self._channels.get(channel, ())) - self._uncounted[channel]

    def presence(self, channel: str) -> int:
        """WebSocket subscribers of ``channel`` on every worker sharing the broker."""
        return self.broker.presence(channel, self._local_presence(channel))

    def _presence_may_change(self, channel: str) -> None:
        if self.broker.shared:
            self._presence_changed.add(channel)

    def _report_presence(self) -> None:
        """Tell a shared broker the local counts that changed, in one batch a second.

        A report that failed is retried for the channels that still have
        subscribers; a count that dropped to zero and could not be withdrawn
        goes stale by itself (see the broker), so nothing is kept for channels
        everyone left."""
        for tick in itertools.count(1):
            gevent.sleep(PRESENCE_INTERVAL)
            changed, self._presence_changed = self._presence_changed, set()
            if tick % PRESENCE_REFRESH == 0:
                changed |= set(self._channels)
            if changed:
                counts = {name: self._local_presence(name) for name in changed}
                try:
                    self.broker.report_presence(counts)
                except Exception:
                    log.exception("presence report failed")
                    self._presence_changed |= changed & self._channels.keys()

    def counts(self) -> dict[str, int]:
        """Numbers for health checks and tests: ``subscribers`` counts the connections'
        subscriptions, not the SSE streams' and long-polls' (``waiters``)."""
        return {
            "connections": len(self.connections),
            "channels": len(self._channels),
            "subscribers": sum(len(members) for members in self._channels.values())
            - sum(self._uncounted.values()),
            # a group of long-polls (transports.poll_lane) is one stream holding several
            "waiters": sum(getattr(stream, "holds", 1) for stream in self.streams),
        }

    # -- heartbeats -----------------------------------------------------------------

    def _heartbeat(self) -> None:
        while True:
            gevent.sleep(self.ping_interval)
            self.ping_all(time.monotonic())
            try:
                self.broker.sweep()
            except Exception:
                log.exception("broker housekeeping failed")

    def ping_all(self, now: float) -> None:
        """Ping every connection; drop the ones silent for longer than interval + timeout."""
        deadline = now - self.ping_interval - self.ping_timeout
        for connection in list(self.connections):
            if connection.last_seen < deadline:
                log.info("dropping %s: no answer to pings", connection.id)
                connection.abort()
            else:
                connection.ping()


def _encode(encoder: Encoder, messages: Sequence[Message]) -> tuple[list[bytes], bytes | None]:
    """Each message's encoding, and them all joined when the encoder's pieces join (one
    message's is its own)."""
    pieces = [encoder.message(message) for message in messages]
    if len(pieces) == 1:
        return pieces, pieces[0]
    return pieces, b"".join(pieces) if getattr(encoder, "joins", False) else None


def _push_pieces(connection: Connection, pieces: list[bytes], joins: bool,
                 messages: Sequence[Message], leave_out: str | None) -> int:
    """Queue ``pieces`` (joined, if ``joins``) but those of messages ``leave_out`` sent;
    return how many messages that was."""
    if leave_out is not None:
        pieces = [piece for piece, message in zip(pieces, messages, strict=True)
                  if message.sender != leave_out]
    if joins:
        if pieces:
            connection.push(b"".join(pieces))
    else:
        for piece in pieces:
            connection.push(piece)
    return len(pieces)


def _payload(data: bytes | str, binary: bool | None) -> tuple[bytes, bool]:
    """A message's bytes and kind: ``str`` is text, ``bytes`` binary unless ``binary=False``."""
    if isinstance(data, str):
        return data.encode("utf-8"), False if binary is None else binary
    return bytes(data), True if binary is None else binary
