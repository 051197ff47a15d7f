"""How a message travels through Redis: the scripts write it, :func:`decode` reads it.

``publish.lua`` encodes a message once, as ``epoch seq ms binary sender_len
author_len\\n`` followed by the sender, the author and the data, and stores
those bytes in the channel's history and PUBLISHes the same bytes, so a
message reads alike from both. A head without ``author_len`` (written before
authors existed, by a worker not yet upgraded) reads as no author.
"""

from __future__ import annotations

from ...ids import MessageId
from ...message import Message


def decode(channel: str, payload: bytes) -> Message:
    """A message of ``channel`` as the scripts encode it."""
    head, _, rest = payload.partition(b"\n")
    epoch, seq, ms, binary, sender_len, *author_len = (int(part) for part in head.split())
    sender = rest[:sender_len].decode("utf-8") if sender_len else None
    author_end = sender_len + (author_len[0] if author_len else 0)
    author = rest[sender_len:author_end].decode("utf-8") if author_end > sender_len else None
    return Message(channel, MessageId(epoch, seq), rest[author_end:], bool(binary), sender,
                   ms / 1000, author)
