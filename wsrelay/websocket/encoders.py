"""How the hub frames a message for a WebSocket subscription: one encoder per kind.

The hub (:mod:`wsrelay.hub`) knows nothing of WebSocket framing: each
subscription brings one of these shared instances, and the hub encodes each
message once per encoder, whatever the number of subscribers.
"""

from __future__ import annotations

from ..ids import MessageId
from ..message import Message
from . import envelopes
from .protocol import encode_frame


class RawEncoder:
    """The raw relay (``/ws/<channel>``): each message is one frame of its own data, text or
    binary as published. Such frames cannot say that messages were missed: the raw mode
    closes the connection with 4410 instead."""

    __slots__ = ()

    def message(self, message: Message) -> bytes:
        return encode_frame(message.data, binary=message.binary)

    def reset(self, channel: str, cursor: MessageId) -> None:
        return None


class EnvelopeEncoder:
    """``wsrelay.v1``: each message is a ``message`` envelope in a text frame; a gap is told
    with a ``reset`` envelope."""

    __slots__ = ()

    def message(self, message: Message) -> bytes:
        return encode_frame(envelopes.message(message), binary=False)

    def reset(self, channel: str, cursor: MessageId) -> bytes:
        return encode_frame(envelopes.reset(channel, cursor), binary=False)


RAW = RawEncoder()
ENVELOPE = EnvelopeEncoder()
