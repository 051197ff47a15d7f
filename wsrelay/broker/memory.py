"""The embedded broker: one process, channels in a dict, history in deques.

A channel gets state (its epoch, sequence and history) with its first
message and loses it a TTL after its last use once nothing is retained.
History is bounded per channel (count and age) and as a whole, in bytes
(``history_memory``): past it the oldest messages of the process go first,
whatever their channel, and a cursor that needed them reads as a reset.
Reading or watching a channel stores nothing about it beyond the watch
count, which is gone when the last watcher leaves: a client naming new
channels by the million costs nothing once it has left them.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from ..ids import MessageId, new_epoch
from ..message import Message
from .base import Broker, History, read_after


@dataclass(slots=True)
class _Channel:
    epoch: int
    seq: int = 0
    retained: deque[Message] = field(default_factory=deque)
    touched: float = 0.0


#: What a retained message costs beyond its data (the Message, its id, its deque slots).
MESSAGE_OVERHEAD = 256


def _cost(message: Message) -> int:
    return len(message.data) + MESSAGE_OVERHEAD


def _now_ms() -> int:
    return int(time.time() * 1000)


class MemoryBroker(Broker):
    """Ids, history and delivery within one process.

    Publishing delivers synchronously, so within one gevent process a
    subscriber that reads history and registers without yielding sees every
    message exactly once.
    """

    def __init__(
        self, *, history_size: int, history_ttl: float, history_memory: int = 256 << 20
    ) -> None:
        super().__init__(history_size=history_size, history_ttl=history_ttl)
        self.history_memory = history_memory
        self._channels: dict[str, _Channel] = {}
        #: Every retained message in publish order, for dropping the oldest past
        #: ``history_memory``; entries of messages a channel already dropped linger until
        #: they reach the front or :meth:`_compact` removes them.
        self._order: deque[tuple[_Channel, Message]] = deque()
        self._retained_bytes = 0
        self._dropped_in_order = 0
        #: Local watchers by channel; a channel leaves when its last watcher does.
        self._watched: dict[str, int] = {}
        self._last_epoch = 0
        self._ttl_ms = max(1, round(history_ttl * 1000))
        #: Cursors from before this process started come from a broker whose data is gone.
        self._origin = _now_ms()

    def _touch(self, name: str, now: float) -> _Channel | None:
        """The channel's state, trimmed and marked as used; None when it has none."""
        channel = self._channels.get(name)
        if channel is not None:
            channel.touched = now
            self._trim(channel, now)
        return channel

    def _trim(self, channel: _Channel, now: float) -> None:
        retained = channel.retained
        oldest_kept = now - self.history_ttl
        while retained and (len(retained) > self.history_size or retained[0].time < oldest_kept):
            self._retained_bytes -= _cost(retained.popleft())
            self._dropped_in_order += 1

    def _bound_memory(self) -> None:
        """Drop the oldest messages of the process until history fits ``history_memory``."""
        order = self._order
        while self._retained_bytes > self.history_memory and order:
            state, message = order.popleft()
            if _still_retained(state, message) and self._channels.get(message.channel) is state:
                state.retained.popleft()  # a channel's oldest is the process's oldest of it
                self._retained_bytes -= _cost(message)
            else:
                self._dropped_in_order -= 1
        if self._dropped_in_order > max(1024, len(order) // 2):
            self._compact()

    def _compact(self) -> None:
        """Forget the entries of messages that channels dropped already."""
        self._order = deque(
            (state, message) for state, message in self._order
            if _still_retained(state, message) and self._channels.get(message.channel) is state
        )
        self._dropped_in_order = 0

    def publish(
        self, channel: str, data: bytes, *, binary: bool = False, sender: str | None = None,
        author: str | None = None,
    ) -> Message:
        now = time.time()
        state = self._channels.get(channel)
        if state is None:
            self._last_epoch = new_epoch(self._last_epoch)
            state = self._channels[channel] = _Channel(epoch=self._last_epoch)
        state.touched = now  # trimmed once the message is in: the same as before and after
        state.seq += 1
        message = Message(
            channel, MessageId(state.epoch, state.seq), bytes(data), binary, sender, now, author
        )
        state.retained.append(message)
        self._order.append((state, message))
        self._retained_bytes += _cost(message)
        self._trim(state, now)
        self._bound_memory()
        if self._deliver is not None and channel in self._watched:
            self._deliver(message)
        return message

    def history(self, channel: str, since: MessageId | None) -> History:
        state = self._touch(channel, time.time())
        if state is None:  # a virtual epoch: now, before any message
            return read_after([], _now_ms(), 0, since, ttl_ms=self._ttl_ms, origin=self._origin)
        if since is None or (since.epoch == state.epoch and since.seq == state.seq):
            # nothing after it (a connect without a cursor, a poll that is caught up): the
            # retained messages, up to WSRELAY_HISTORY_SIZE of them, are not copied
            return History([], MessageId(state.epoch, state.seq))
        return read_after(state.retained, state.epoch, state.seq, since,
                          ttl_ms=self._ttl_ms, origin=self._origin)

    def watch(self, channel: str) -> None:
        self._watched[channel] = self._watched.get(channel, 0) + 1

    def unwatch(self, channel: str) -> None:
        count = self._watched.pop(channel, 0) - 1
        if count > 0:
            self._watched[channel] = count
        self._touch(channel, time.time())

    def sweep(self) -> None:
        """Forget channels that retain nothing, have no watcher and were idle for a TTL."""
        now = time.time()
        idle_before = now - self.history_ttl
        for name, state in list(self._channels.items()):
            self._trim(state, now)
            if not state.retained and name not in self._watched and state.touched < idle_before:
                del self._channels[name]
        if self._dropped_in_order > max(1024, len(self._order) // 2):
            self._compact()

    def status(self) -> dict[str, object]:
        return {"broker": "memory", "ok": True, "channels": len(self._channels),
                "watched": len(self._watched), "history_bytes": self._retained_bytes}


def _still_retained(state: _Channel, message: Message) -> bool:
    """Whether ``state`` still holds ``message`` (it drops its oldest first)."""
    return bool(state.retained) and message.id.seq >= state.retained[0].id.seq
