"""The embedded broker: one process, channels in a dict, history in deques."""

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
    watchers: int = 0
    touched: float = 0.0


class MemoryBroker(Broker):
    """Ids, history and delivery within one process.

    Publishing delivers synchronously, so within one gevent process a
    subscriber that reads history and registers without yielding sees every
    message exactly once.
    """

    def __init__(self, *, history_size: int, history_ttl: float) -> None:
        super().__init__(history_size=history_size, history_ttl=history_ttl)
        self._channels: dict[str, _Channel] = {}
        self._last_epoch = 0

    def _channel(self, name: str) -> _Channel:
        channel = self._channels.get(name)
        now = time.time()
        if channel is None:
            self._last_epoch = new_epoch(self._last_epoch)
            channel = self._channels[name] = _Channel(epoch=self._last_epoch)
        channel.touched = now
        self._trim(channel, now)
        return channel

    def _trim(self, channel: _Channel, now: float) -> None:
        retained = channel.retained
        oldest_kept = now - self.history_ttl
        while retained and (len(retained) > self.history_size or retained[0].time < oldest_kept):
            retained.popleft()

    def publish(
        self, channel: str, data: bytes, *, binary: bool = False, sender: str | None = None
    ) -> Message:
        state = self._channel(channel)
        state.seq += 1
        message = Message(
            channel, MessageId(state.epoch, state.seq), bytes(data), binary, sender, time.time()
        )
        state.retained.append(message)
        self._trim(state, message.time)
        if self._deliver is not None and state.watchers:
            self._deliver(message)
        return message

    def history(self, channel: str, since: MessageId | None) -> History:
        state = self._channel(channel)
        return read_after(list(state.retained), state.epoch, state.seq, since)

    def watch(self, channel: str) -> None:
        self._channel(channel).watchers += 1

    def unwatch(self, channel: str) -> None:
        state = self._channels.get(channel)
        if state is not None:
            state.watchers -= 1
            state.touched = time.time()

    def sweep(self) -> None:
        """Forget channels that retain nothing, have no watcher and were idle for a TTL."""
        now = time.time()
        idle_before = now - self.history_ttl
        for name, state in list(self._channels.items()):
            self._trim(state, now)
            if not state.retained and not state.watchers and state.touched < idle_before:
                del self._channels[name]

    def status(self) -> dict[str, object]:
        return {"broker": "memory", "ok": True, "channels": len(self._channels)}
