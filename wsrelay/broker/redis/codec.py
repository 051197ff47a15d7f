"""How a message travels through Redis: the scripts write it, :func:`decode` reads it.

``publish.lua`` encodes a message once, as ``epoch seq ms binary sender_len\\n``
followed by the sender and the data, and stores those bytes in the channel's
history and PUBLISHes the same bytes, so a message reads alike from both.
"""

from __future__ import annotations

from ...ids import MessageId
from ...message import Message


def decode(channel: str, payload: bytes) -> Message:
    """A message of ``channel`` as the scripts encode it."""
    head, _, rest = payload.partition(b"\n")
    epoch, seq, ms, binary, sender_len = (int(part) for part in head.split())
    sender = rest[:sender_len].decode("utf-8") if sender_len else None
    return Message(channel, MessageId(epoch, seq), rest[sender_len:], bool(binary), sender,
                   ms / 1000)
