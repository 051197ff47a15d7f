"""permessage-deflate (RFC 7692) in both directions, at zlib's speed.

Outbound, a :class:`Deflater` compresses a message once for every connection
that agreed on the same server window: the server never takes its context
over from one message to the next (it always answers
``server_no_context_takeover``), so a message's compressed payload is the same
bytes for all of them, and the hub queues them as it does plain frames.

Inbound, an :class:`Inflater` is the extension the ``websockets`` core calls
on each data frame it parses: it inflates as it goes, never past what the
message may still hold, and holds no zlib state until the client sends its
first compressed frame.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

from websockets.exceptions import PayloadTooBig, ProtocolError
from websockets.extensions.base import Extension
from websockets.frames import CTRL_OPCODES, Frame, Opcode
from websockets.typing import BytesLike, ExtensionName

if TYPE_CHECKING:
    from .handshake import Deflate

#: The end of a sync flush, which each compressed message leaves out (RFC 7692 7.2.1).
_TAIL = b"\x00\x00\xff\xff"
#: zlib's compression level: compressing happens once per message, whatever the number of
#: subscribers, so the default level (6) costs little per delivery.
LEVEL = 6


def mem_level(window_bits: int) -> int:
    """zlib's ``memLevel`` for a window: its default (8, a hash table of 32 Ki entries) from
    12 bits up, less below, so that the table is at most 8 times the window. zlib slides
    the table each time the window fills: at 9 bits with the default, 64 entries for each
    byte compressed, which made compressing for a client asking for that window five times
    slower than for one taking 15 bits (Autobahn 13.3: 1,000 JSON messages of 128 KiB,
    6.6 ms each instead of 1.1 ms; with 5, 1.6 ms and 1-3 % larger output, 30 Nov, on a
    loaded machine)."""
    return min(8, window_bits - 4)


class Deflater:
    """Compresses the messages of every connection that agreed on ``window_bits`` (9-15).

    One zlib stream serves every message; a full flush ends each one, which empties the
    window too, so no message refers to another (``server_no_context_takeover``).
    """

    __slots__ = ("_stream", "min_size", "window_bits")

    def __init__(self, window_bits: int, min_size: int) -> None:
        self.window_bits = window_bits
        #: Payloads shorter than this are sent as they are (RSV1 clear).
        self.min_size = min_size
        self._stream = zlib.compressobj(
            LEVEL, zlib.DEFLATED, -window_bits, mem_level(window_bits)
        )

    def compress(self, data: bytes) -> bytes | None:
        """The compressed payload of a message, or None when it is shorter than
        ``min_size``, to be sent as it is. Data that does not compress (an image, random
        bytes) grows by a few bytes in 16 KiB: not worth a rule of its own."""
        if len(data) < self.min_size:
            return None
        stream = self._stream
        return (stream.compress(data) + stream.flush(zlib.Z_FULL_FLUSH))[: -len(_TAIL)]


_deflaters: dict[tuple[int, int], Deflater] = {}


def deflater(window_bits: int, min_size: int) -> Deflater:
    """The process's one :class:`Deflater` for these settings, so the hub's cache of one
    encoding per encoder serves every connection that agreed on them."""
    key = (window_bits, min_size)
    found = _deflaters.get(key)
    if found is None:
        found = _deflaters[key] = Deflater(window_bits, min_size)
    return found


class Inflater(Extension):
    """Inflates the client's compressed messages inside the ``websockets`` core's parser.

    The core calls :meth:`decode` on each frame with ``max_size``, what the message
    may still hold; zlib is never asked for more than one byte past it, so a small
    frame that would inflate past the limit fails the connection with 1009 having
    allocated at most the limit. The zlib stream is made on the first compressed
    frame; with ``client_no_context_takeover`` it is dropped at the end of each
    message, else kept (at most ``2 ** client_max_window_bits`` bytes of window
    and zlib's 7 KiB of state). RSV1 is checked by the core's caller
    (:mod:`wsrelay.websocket.protocol`) from the frame header, before the payload.
    """

    name = ExtensionName("permessage-deflate")

    def __init__(self, deflate: Deflate) -> None:
        self.window_bits = deflate.client_max_window_bits
        self.no_context_takeover = deflate.client_no_context_takeover
        #: The zlib stream, None until the first compressed frame (and between messages
        #: without context takeover).
        self.stream: zlib._Decompress | None = None
        #: True from the first frame of a compressed message to its last.
        self.in_message = False

    def decode(self, frame: Frame, *, max_size: int | None = None) -> Frame:
        opcode = frame.opcode
        if opcode in CTRL_OPCODES:
            return frame
        if opcode is Opcode.CONT:
            if not self.in_message:
                return frame
            if frame.rsv1:
                raise ProtocolError("RSV1 set on a continuation frame")
        elif not frame.rsv1:
            return frame
        else:
            self.in_message = True
            if self.stream is None:
                self.stream = zlib.decompressobj(wbits=-self.window_bits)
        stream = self.stream
        assert stream is not None
        try:
            data = _inflate(stream, frame.data, max_size)
            if frame.fin:
                room = None if max_size is None else max_size - len(data)
                tail = _inflate(stream, _TAIL, room)
                if tail:
                    data += tail
        except zlib.error as exc:
            raise ProtocolError(f"invalid compressed data: {exc}") from None
        except PayloadTooBig:
            raise PayloadTooBig(None, max_size) from None
        if frame.fin:
            self.in_message = False
            if self.no_context_takeover:
                self.stream = None
        return Frame(opcode, data, frame.fin, False, frame.rsv2, frame.rsv3)

    def encode(self, frame: Frame) -> Frame:
        """The core sends control frames only (pongs, the close frame), never compressed;
        messages are compressed once for all by a :class:`Deflater`."""
        return frame


def _inflate(stream: zlib._Decompress, data: BytesLike, room: int | None) -> bytes:
    """Inflate ``data`` into at most ``room`` bytes (None: no limit): zlib is asked for one
    byte more and stops there, so getting it means too big (PayloadTooBig)."""
    if room is None:
        return stream.decompress(data)
    inflated = stream.decompress(data, room + 1)
    if len(inflated) > room:
        raise PayloadTooBig(None, room)
    return inflated
