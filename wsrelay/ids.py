"""Message ids: ``<epoch>-<seq>``, increasing per channel, comparable across restarts.

The epoch is the millisecond time at which the channel's sequence started
(a broker restart, or a channel whose history expired, starts a new epoch),
so an id from an older epoch is recognised as stale instead of being confused
with a new message that happens to carry the same sequence number. Both parts
are zero-padded so that ids of one channel also sort as plain strings.
"""

from __future__ import annotations

import re
import time
from typing import NamedTuple

_ID_PATTERN = re.compile(r"([0-9]{1,16})-([0-9]{1,19})")  # ASCII digits only


class InvalidMessageId(ValueError):
    """A ``since`` or ``Last-Event-ID`` that is not a wsrelay message id."""


class MessageId(NamedTuple):
    """The position of a message in its channel; tuples order like the ids."""

    epoch: int
    seq: int

    def __str__(self) -> str:
        return f"{self.epoch:013d}-{self.seq:010d}"

    @classmethod
    def parse(cls, text: str) -> MessageId:
        """Parse an id as printed by ``str``; raise :class:`InvalidMessageId` otherwise."""
        match = _ID_PATTERN.fullmatch(text)
        if match is None:
            raise InvalidMessageId(f"not a message id: {text[:64]!r}")
        return cls(int(match.group(1)), int(match.group(2)))


def new_epoch(after: int = 0) -> int:
    """A new epoch: the current time in ms, and always greater than ``after``."""
    return max(int(time.time() * 1000), after + 1)
