"""How the hub frames a message for a WebSocket subscription: one encoder per kind.

The hub (:mod:`wsrelay.hub`) knows nothing of WebSocket framing: each
subscription brings one of these shared instances, and the hub encodes each
message once per encoder, whatever the number of subscribers. With
permessage-deflate, each kind has one compressing encoder per
:class:`~wsrelay.websocket.deflate.Deflater` (:func:`compressed`), so a message
is compressed once for every connection that agreed on the same parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..ids import MessageId
from ..message import Message
from . import envelopes
from .deflate import Deflater
from .protocol import encode_frame

if TYPE_CHECKING:
    from ..hub import Encoder


def frame(data: bytes, *, binary: bool, deflater: Deflater | None) -> bytes:
    """A message's frame, compressed (RSV1 set) when ``deflater`` finds it worth it."""
    payload = deflater.compress(data) if deflater is not None else None
    if payload is None:
        return encode_frame(data, binary=binary)
    return encode_frame(payload, binary=binary, compressed=True)


class RawEncoder:
    """The raw relay (``/ws/<channel>``): each message is one frame of its own data, text or
    binary as published. Such frames cannot say that messages were missed: the raw mode
    closes the connection with 4410 instead."""

    __slots__ = ("deflater",)
    #: Frames of one stream: a run of messages is queued as one piece (see the hub).
    joins = True

    def __init__(self, deflater: Deflater | None = None) -> None:
        self.deflater = deflater

    def message(self, message: Message) -> bytes:
        return frame(message.data, binary=message.binary, deflater=self.deflater)

    def reset(self, channel: str, cursor: MessageId) -> None:
        return None


class EnvelopeEncoder:
    """``wsrelay.v1``: each message is a ``message`` envelope in a text frame; a gap is told
    with a ``reset`` envelope."""

    __slots__ = ("deflater",)
    #: Frames of one stream: a run of messages is queued as one piece (see the hub).
    joins = True

    def __init__(self, deflater: Deflater | None = None) -> None:
        self.deflater = deflater

    def message(self, message: Message) -> bytes:
        return frame(envelopes.message(message), binary=False, deflater=self.deflater)

    def reset(self, channel: str, cursor: MessageId) -> bytes:
        return frame(envelopes.reset(channel, cursor), binary=False, deflater=self.deflater)


RAW = RawEncoder()
ENVELOPE = EnvelopeEncoder()

_compressed: dict[tuple[type, Deflater], RawEncoder | EnvelopeEncoder] = {}


def compressed(encoder: Encoder, deflater: Deflater | None) -> Encoder:
    """``encoder``'s kind compressing with ``deflater``: one instance per kind and deflater
    in the process, the key of the hub's encoding cache. ``encoder`` itself without a
    deflater, or when it is not one of this module's kinds."""
    if deflater is None or not isinstance(encoder, (RawEncoder, EnvelopeEncoder)):
        return encoder
    key = (type(encoder), deflater)
    found = _compressed.get(key)
    if found is None:
        found = _compressed[key] = type(encoder)(deflater)
    return found
