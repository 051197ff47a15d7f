"""A held long-poll as a connection of the hub: it collects the items of its answer.

A poll subscribes like a WebSocket, from its cursor: the hub queues what
history holds after it, then live messages, with no gap and no duplicate
(:meth:`~wsrelay.hub.MessageServer.subscribe`). Each message's item (the
JSON object of the answer) is encoded once, shared by every poll that
answers with it (:data:`ITEMS`). A poll that found nothing waits; the hub's
flusher wakes it once per batch of deliveries, so one answer carries every
message that arrived meanwhile.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable

from ..hub import Subscription
from ..ids import MessageId
from ..memo import remember
from ..message import Message

_ids = itertools.count(1)
#: Items kept for polls that read them from history: the latest messages, the small ones.
CACHED_ITEMS = 256
CACHED_ITEM_SIZE = 16 * 1024


class ItemEncoder:
    """A message as an item of a long-poll answer (``{"id": ..., "data": ..., "time": ...}``),
    encoded once for every poll: live by the hub's cache, from history by this one's."""

    def __init__(self) -> None:
        self._cache: dict[MessageId, bytes] = {}

    def message(self, message: Message) -> bytes:
        item = self._cache.get(message.id)
        if item is None:
            item = json.dumps(message.to_json(), separators=(",", ":")).encode()
            if len(item) <= CACHED_ITEM_SIZE:
                cache = self._cache
                if len(cache) >= CACHED_ITEMS:
                    del cache[next(iter(cache))]  # the oldest
                cache[message.id] = item
        return item

    def reset(self, channel: str, cursor: MessageId) -> None:
        """A gap is answered at once from the history page (``"reset": true``)."""
        return None

    @staticmethod
    def item_id(item: bytes) -> bytes:
        """The id of an item this encoder made (its first member)."""
        return item[7 : item.index(b'"', 7)]


ITEMS = ItemEncoder()


def _nothing() -> None:
    pass


class PollWaiter:
    """The answer of one long-poll being collected; ``wake`` is called when it should go (by
    the hub's flusher, or when the hub drains; more than once, maybe): it sets the event a
    greenlet waits on, or answers a poll held without a greenlet."""

    __slots__ = ("dirty", "id", "items", "last_seen", "limit", "sent", "size",
                 "subscription", "wake", "written")

    def __init__(self, channel: str, limit: int) -> None:
        """``limit``: the answer's bytes; what comes beyond waits in history for the next."""
        self.id = f"poll-{next(_ids)}"
        self.subscription = Subscription(self, channel, ITEMS, counted=False)
        self.items: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.wake: Callable[[], None] = _nothing
        self.dirty = False
        self.written = 0.0  # never written by the flusher: an answer goes out at once
        self.sent = 0
        self.last_seen = math.inf  # the hub does not ping polls

    def push(self, frame: bytes) -> None:
        if self.size < self.limit:
            self.items.append(frame)
            self.size += len(frame)

    def flush(self) -> None:
        """The hub's flusher, once per batch: answer with what arrived."""
        if self.items:
            self.wake()

    def ping(self) -> None:
        """Nothing: a poll lasts at most its timeout."""

    def close(self, code: int, reason: str) -> None:
        """The hub drains: answer now with what there is."""
        self.wake()

    def abort(self) -> None:
        self.wake()

    def end(self) -> None:
        """The poll is answered: its subscription (which points back at it) goes now, by
        reference counting, instead of waiting for the cyclic garbage collector; a
        collection traverses every live object, and under 1000 held polls it took a
        tenth of the server's time. So does what ``wake`` called (a group of polls that
        holds this waiter)."""
        del self.subscription
        self.wake = _nothing



#: Answers made lately, by the range of messages they carry: every poll woken by the same
#: messages from the same cursor shares one answer (see :func:`answer`).
_answers: dict[tuple[str, int, bytes, bytes], bytes] = {}
ANSWERS_KEPT = 64


def answer(channel: str, cursor: MessageId, items: list[bytes], reset: bool) -> bytes:
    """A long-poll answer's JSON: the items, and the cursor after the last of them (else
    ``cursor``). An answer with messages is made once per range of them: a poll's items are
    consecutive messages of its channel, so their count and their first and last item say
    which (the 1000 polls a message wakes together share one answer)."""
    if not items or reset:
        return _answer(channel, cursor, items, reset)
    return remember(_answers, (channel, len(items), items[0], items[-1]),
                    lambda: _answer(channel, cursor, items, reset), ANSWERS_KEPT)


def _answer(channel: str, cursor: MessageId, items: list[bytes], reset: bool) -> bytes:
    last = ITEMS.item_id(items[-1]) if items else str(cursor).encode()
    return b'{"channel":%s,"cursor":"%s","messages":[%s]%s}' % (
        json.dumps(channel).encode(), last, b",".join(items), b',"reset":true' if reset else b"",
    )
