"""The observer hub (seed 002's ``MessageServer``): channels, fan-out, pruning.

The hub never writes to a socket while fanning out: each message is framed
once, the same bytes are queued on every subscriber, and a single flusher
greenlet then gives each socket its pending frames in one non-blocking
write. A subscriber that cannot keep up only grows its own bounded queue and
is closed when the queue is full; nobody else waits for it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Protocol

import gevent
from gevent.event import Event

from .broker import Broker, History
from .ids import MessageId
from .message import Message
from .protocol import PING_FRAME, encode_frame

log = logging.getLogger(__name__)


class Subscriber(Protocol):
    """What the hub needs of a live subscriber (a WebSocket connection)."""

    id: str
    echo: bool
    #: While not None, the subscriber is replaying history and live messages wait here.
    held: list[Message] | None
    last_seen: float
    #: Owned by the hub: True while the subscriber waits in the flusher's list.
    dirty: bool

    def push(self, frame: bytes) -> None: ...

    def flush(self) -> None: ...

    def close(self, code: int, reason: str) -> None: ...

    def abort(self) -> None: ...


class MessageServer:
    """Channel -> subscribers, fan-out through a flusher, heartbeats, waiters for HTTP."""

    def __init__(
        self, broker: Broker, *, ping_interval: float = 20.0, ping_timeout: float = 20.0
    ) -> None:
        self.broker = broker
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._channels: dict[str, set[Subscriber]] = {}
        self._waiters: dict[str, set[Event]] = {}
        self._dirty: list[Subscriber] = []
        self._wakeup = Event()
        self._greenlets: list[gevent.Greenlet] = []
        broker.start(self.deliver)

    # -- life cycle -----------------------------------------------------------------

    def start(self) -> None:
        """Start the flusher and the heartbeat; idempotent."""
        if not self._greenlets:
            self._greenlets = [gevent.spawn(self._flusher), gevent.spawn(self._heartbeat)]

    def stop(self) -> None:
        gevent.killall(self._greenlets)
        self._greenlets = []

    # -- publishing and delivery ----------------------------------------------------

    def publish(
        self, channel: str, data: bytes | str, *, binary: bool | None = None,
        sender: str | None = None,
    ) -> Message:
        """Publish to a channel; ``str`` is text, ``bytes`` binary unless ``binary=False``."""
        if isinstance(data, str):
            payload, is_binary = data.encode("utf-8"), False if binary is None else binary
        else:
            payload, is_binary = bytes(data), True if binary is None else binary
        return self.broker.publish(channel, payload, binary=is_binary, sender=sender)

    def deliver(self, message: Message) -> None:
        """Called by the broker, in order, for every message of a watched channel."""
        subscribers = self._channels.get(message.channel)
        if subscribers:
            frame = encode_frame(message.data, binary=message.binary)
            sender = message.sender
            for subscriber in tuple(subscribers):
                if subscriber.held is not None:
                    subscriber.held.append(message)
                elif subscriber.echo or subscriber.id != sender:
                    subscriber.push(frame)
                    if not subscriber.dirty:
                        subscriber.dirty = True
                        self._dirty.append(subscriber)
            self._wakeup.set()
        waiters = self._waiters.get(message.channel)
        if waiters:
            for event in waiters:
                event.set()

    def mark_dirty(self, subscriber: Subscriber) -> None:
        """A subscriber queued frames of its own (control frames); the flusher will write them."""
        if not subscriber.dirty:
            subscriber.dirty = True
            self._dirty.append(subscriber)
        self._wakeup.set()

    def _flusher(self) -> None:
        while True:
            self._wakeup.wait()
            self._wakeup.clear()
            self.flush_pending()

    def flush_pending(self) -> None:
        """Write every dirty subscriber's queue, each in one non-blocking write."""
        dirty, self._dirty = self._dirty, []
        for subscriber in dirty:
            subscriber.dirty = False
            try:
                subscriber.flush()
            except Exception:  # a bug in one subscriber must not stop the others
                log.exception("flush failed; dropping subscriber")
                subscriber.abort()

    # -- subscriptions --------------------------------------------------------------

    def subscribe(self, channel: str, subscriber: Subscriber, since: MessageId | None) -> History:
        """Add a live subscriber; first queue what it missed after ``since``.

        Live messages that arrive while history is read are held, then
        queued after it without the ones history already held: no gap, no
        duplicate, whatever the broker's latency. Without ``since`` the read
        still fixes where "live" starts, so a message already in flight from
        another worker is not delivered as if it were new.
        """
        subscriber.held = []
        self._add_interest(channel, self._channels, subscriber)
        try:
            page = self.broker.history(channel, since)
        except BaseException:
            self.unsubscribe(channel, subscriber)
            raise
        held, subscriber.held = subscriber.held or [], None
        for message in page.messages:
            subscriber.push(encode_frame(message.data, binary=message.binary))
        for message in held:
            if message.id > page.cursor and (subscriber.echo or subscriber.id != message.sender):
                subscriber.push(encode_frame(message.data, binary=message.binary))
        self.mark_dirty(subscriber)
        return page

    def unsubscribe(self, channel: str, subscriber: Subscriber) -> None:
        self._remove_interest(channel, self._channels, subscriber)

    @contextlib.contextmanager
    def watch(self, channel: str) -> Iterator[Event]:
        """An event set whenever a message of ``channel`` arrives (long-poll and SSE)."""
        event = Event()
        self._add_interest(channel, self._waiters, event)
        try:
            yield event
        finally:
            self._remove_interest(channel, self._waiters, event)

    def _add_interest(self, channel: str, table: dict, member: object) -> None:
        if not self._channels.get(channel) and not self._waiters.get(channel):
            self.broker.watch(channel)
        table.setdefault(channel, set()).add(member)

    def _remove_interest(self, channel: str, table: dict, member: object) -> None:
        members = table.get(channel)
        if members is None or member not in members:
            return
        members.discard(member)
        if not members:
            del table[channel]
        if not self._channels.get(channel) and not self._waiters.get(channel):
            self.broker.unwatch(channel)

    def subscribers(self) -> Iterator[Subscriber]:
        for members in self._channels.values():
            yield from members

    def counts(self) -> dict[str, int]:
        """Numbers for health checks and tests."""
        return {
            "channels": len(self._channels),
            "subscribers": sum(len(members) for members in self._channels.values()),
            "waiters": sum(len(members) for members in self._waiters.values()),
        }

    # -- heartbeats -----------------------------------------------------------------

    def _heartbeat(self) -> None:
        while True:
            gevent.sleep(self.ping_interval)
            self.ping_all(time.monotonic())
            try:
                self.broker.sweep()
            except Exception:
                log.exception("broker sweep failed")

    def ping_all(self, now: float) -> None:
        """Ping every subscriber; drop the ones silent for longer than interval + timeout."""
        deadline = now - self.ping_interval - self.ping_timeout
        for subscriber in list(self.subscribers()):
            if subscriber.last_seen < deadline:
                log.info("dropping %s: no answer to pings", subscriber.id)
                subscriber.abort()
            else:
                subscriber.push(PING_FRAME)
                self.mark_dirty(subscriber)
