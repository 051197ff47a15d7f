"""How a message travels through Redis: the scripts write it, :func:`decode` reads it.

``publish.lua`` encodes a message once, as ``epoch seq ms binary sender_len
author_len\\n`` followed by the sender, the author and the data, and stores
those bytes in the channel's history and PUBLISHes the same bytes, so a
message reads alike from both. A head without ``author_len`` (written before
authors existed, by a worker not yet upgraded) reads as no author.

Every message each worker receives passes through :func:`decode`, so it
reads the parts in place by offset (one copy, of the data) instead of
splitting the payload into pieces first.
"""

from __future__ import annotations

from ...ids import MessageId
from ...message import Message


def decode(channel: str, payload: bytes) -> Message:
    """A message of ``channel`` as the scripts encode it."""
    start = payload.index(b"\n") + 1
    head = payload[:start].split()
    end = start + int(head[4])
    sender = payload[start:end].decode("utf-8") if end > start else None
    author = None
    if len(head) > 5 and head[5] != b"0":
        start, end = end, end + int(head[5])
        author = payload[start:end].decode("utf-8")
    return Message(channel, MessageId(int(head[0]), int(head[1])), payload[end:],
                   head[3] == b"1", sender, int(head[2]) / 1000, author)
