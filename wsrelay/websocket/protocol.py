"""The WebSocket protocol without I/O: bytes in, whole messages and bytes to send out.

Frame parsing, masking (in C), size limits read from the frame header,
control frames and the closing handshake come from the Sans-I/O core of the
``websockets`` library. This module adds what that core leaves to its I/O
layers, and puts right two details of its closing handshake:

- UTF-8 of text messages is validated incrementally, frame by frame, inside
  the core's parser, so an invalid frame stops the parser there: nothing the
  client sent after it (a ping, a close) is answered. A text frame still
  arriving is validated as its bytes come in, so invalid text fails at the
  first read that shows it, not when the frame or the message completes;
  reserved bits and bad control frames fail from the header, like the size.
- A close frame in the middle of a fragmented message is an ordinary close
  (RFC 6455 5.4 lets control frames interleave); the core calls it a
  protocol error. An empty close frame is answered with 1000, so every close
  frame the server sends carries a code. A ping that arrives once the server
  has sent its close frame is not answered: nothing may follow that frame.

The common frame, a whole, masked, unfragmented TEXT or BINARY frame that
needs nothing but unmasking (and UTF-8 validation), is parsed here directly
when it begins between frames, at a fraction of the core's cost; every other
frame, and every frame that would fail, is the core's, so errors, close codes
and limits stay exactly what the core and the checks below make of them.

It also bounds what costs the server work without carrying a message:
pings, pongs and small fragments that do not end their message are counted
against a token bucket, and past it the connection fails with 1008. Pongs
are handed out apart from the close frame, so that the I/O layer can
coalesce those still unwritten (RFC 6455 5.5.3).
"""

from __future__ import annotations

import codecs
import time
from enum import IntEnum
from typing import TYPE_CHECKING, NamedTuple, cast

from websockets.frames import Close, Frame, Opcode, apply_mask
from websockets.protocol import SERVER, Protocol, State
from websockets.typing import BytesLike

from ..limits import TokenBucket
from .deflate import Inflater

if TYPE_CHECKING:
    from .handshake import Deflate


class CloseCode(IntEnum):
    """The close codes wsrelay sends: RFC 6455's, and one of the range it leaves to
    applications (4000-4999)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    #: wsrelay's own: raw mode's ``since`` is older than what history retains.
    HISTORY_GAP = 4410


class InboundMessage(NamedTuple):
    """A whole message a client sent: the bytes as received, and their type.

    ``replies`` are the control frames (pongs) answering frames the client
    sent before this message's last frame: written before the message is
    relayed, so the client sees answers in the order it asked.
    """

    data: bytes
    binary: bool
    replies: bytes = b""


class Output(NamedTuple):
    """What the session has to send besides messages: ``pongs`` (to be written before
    anything not yet begun; pongs still unwritten may be dropped for newer ones), then
    ``close``, the close frame if one is due; ``eof``: close TCP after it."""

    pongs: bytes
    close: bytes
    eof: bool


def encode_frame(data: bytes, *, binary: bool, compressed: bool = False) -> bytes:
    """One unmasked server frame; built once per message and shared by every subscriber.
    ``compressed``: ``data`` is a permessage-deflate payload (RSV1 set). The header is
    written here (RFC 6455 5.2): it is what ``Frame.serialize`` writes, at a fifth of its
    cost, on every message's way out."""
    first = (0x82 if binary else 0x81) | (0x40 if compressed else 0)
    length = len(data)
    if length < 126:
        return bytes((first, length)) + data
    if length < 0x10000:
        return bytes((first, 126)) + length.to_bytes(2, "big") + data
    return bytes((first, 127)) + length.to_bytes(8, "big") + data


PING_FRAME = Frame(Opcode.PING, b"wsrelay").serialize(mask=False, extensions=[])

_Utf8Decoder = codecs.getincrementaldecoder("utf-8")
#: The longest frame header: 2 bytes, an 8-byte length, a 4-byte masking key.
_MAX_HEADER = 14
_NORMAL_CLOSE = Close(CloseCode.NORMAL, "").serialize()
#: A fragment shorter than this that does not end its message costs as much to parse as a
#: ping and carries about as little: it counts against the control frame rate.
SMALL_FRAGMENT = 1024
_PONG_BYTE = 0x80 | Opcode.PONG  # the first byte of every pong the server sends


class _ServerProtocol(Protocol):
    """The ``websockets`` server core, validating text as it parses.

    It overrides the core's ``recv_frame`` and reads its ``reader.buffer``,
    internals that setup.cfg's ``websockets<18`` pins; tests/test_fuzz.py
    checks the whole against a model written from the RFC.
    """

    def __init__(
        self, max_message_size: int, control_rate: TokenBucket | None, deflate: Deflate | None
    ) -> None:
        super().__init__(SERVER, state=State.OPEN, max_size=max_message_size)
        self.control_rate = control_rate
        #: permessage-deflate's inbound side, when negotiated.
        self.inflater = Inflater(deflate) if deflate is not None else None
        if self.inflater is not None:
            self.extensions = [self.inflater]
        #: The UTF-8 decoder of the text message being received, None between messages.
        self.decoder: codecs.IncrementalDecoder | None = None
        self._received = 0  # bytes received so far
        self._frame_start = 0  # where the frame not yet complete starts, in those bytes
        self._head = bytearray()  # its first bytes, up to a whole header
        self._peek: codecs.IncrementalDecoder | None = None  # self.decoder run ahead over it
        self._peeked = 0  # payload bytes of it that _peek validated
        #: For each message completed since the last data_to_send(): len(self.writes) then.
        self.message_marks: list[int] = []
        #: The session's: the data frames of the message being received, and what to send
        #: apart from messages: pongs after the last message returned, and the rest (a
        #: close frame, the end).
        self.fragments: list[BytesLike] = []
        self.pongs: list[bytes] = []
        self.output: list[bytes] = []

    def sort(self, writes: list[bytes]) -> None:
        """Keep the core's writes: pongs apart from the close frame and the end."""
        for write in writes:
            if write and write[0] == _PONG_BYTE:
                self.pongs.append(write)
            else:
                self.output.append(write)

    def idle(self) -> bool:
        """True when nothing in this parser belongs to its connection: open, between
        frames and messages, nothing received or to send, no inflater."""
        return (
            self.state is State.OPEN and self._frame_start == self._received
            and self.current_size is None and self.decoder is None and self.inflater is None
            and self.parser_exc is None and not self.reader.buffer and not self.events
            and not self.writes and not self.message_marks and not self.fragments
            and not self.pongs and not self.output
        )

    def reset_counts(self) -> None:
        """Forget the position in the stream (an idle parser, about to serve another)."""
        self._received = self._frame_start = self._peeked = 0
        self._head.clear()
        self._peek = None

    def receive_data(self, data: bytes | bytearray) -> None:
        """Parse ``data``: whole, valid, unfragmented data frames that begin between frames
        directly (:meth:`_parse_whole`), anything else by the core, one frame at a time, so
        that the frames after one the core took are again parsed directly."""
        while data:
            if self._between_frames():
                taken = self._parse_whole(data)
                if taken:
                    self._received += taken
                    self._frame_start = self._received
                    data = data[taken:]
                    continue
            remaining = self.frame_remaining(data) if self.state is State.OPEN else 0
            if 0 < remaining < len(data):
                self._feed_core(data[:remaining])
                data = data[remaining:]
            else:
                self._feed_core(data)
                return

    def _between_frames(self) -> bool:
        """True when the core's parser waits for the first byte of a frame, between
        messages, with nothing of its own to add (no inflater, no error)."""
        return (
            self._frame_start == self._received and self.state is State.OPEN
            and self.current_size is None and self.inflater is None
            and self.parser_exc is None and not self.reader.buffer
        )

    def _parse_whole(self, data: bytes | bytearray) -> int:
        """Take the whole frames ``data`` begins with that the core would deliver as they are
        (a masked TEXT or BINARY frame with FIN and no reserved bits, within the size limit,
        valid UTF-8 if text), as messages among the core's events; return the bytes taken.

        The first frame that is anything else (or not all there) stops it and is left to
        the core, which fails it or parses it as always: this path never fails a frame,
        so every error and close code stays the core's. A data frame ending its message
        counts nothing against the control frame rate, so that is untouched too.
        """
        limit = self.max_message_size
        events = cast(list[object], self.events)
        marks = self.message_marks
        view = memoryview(data)
        offset = 0
        end = len(data)
        while end - offset >= 6:
            first = data[offset]
            if first != 0x81 and first != 0x82:  # FIN, TEXT or BINARY, no reserved bits
                break
            length = data[offset + 1] ^ 0x80  # above 127 when the mask bit is not set
            start = offset + 6
            if length >= 126:
                if length > 127:
                    break
                size = 2 if length == 126 else 8
                start += size
                length = int.from_bytes(data[offset + 2 : offset + 2 + size], "big")
            stop = start + length
            if stop > end or (limit is not None and length > limit):
                break
            payload = apply_mask(view[start:stop], data[start - 4 : start])
            binary = first == 0x82
            if not binary:
                try:
                    payload.decode()
                except UnicodeDecodeError:
                    break
            events.append(InboundMessage(payload, binary))
            marks.append(len(self.writes))
            offset = stop
        view.release()
        return offset

    def _feed_core(self, data: bytes | bytearray) -> None:
        """Hand ``data`` to the core's parser, keeping the first bytes of the frame under way
        and checking what arrived of it."""
        start = self._received
        self._received += len(data)
        frame_start = self._frame_start
        super().receive_data(data)
        if self._frame_start != frame_start:  # frames completed: a new one begins in data
            offset = self._frame_start - start
            self._head[:] = data[offset : offset + _MAX_HEADER]
        elif len(self._head) < _MAX_HEADER:
            self._head += data[: _MAX_HEADER - len(self._head)]
        if self.state is State.OPEN:
            self._check_partial_frame()

    def frame_remaining(self, upcoming: bytes | bytearray) -> int:
        """Bytes still to come of the frame under way, its header completed from
        ``upcoming`` if need be (0 while the header is not whole)."""
        head = self._head
        if len(head) < _MAX_HEADER:
            head = head + upcoming[: _MAX_HEADER - len(head)]
        header = _parse_header(head)
        if header is None:
            return 0
        _first, length, _mask, size = header
        return self._frame_start + size + length - self._received

    def recv_frame(self, frame: Frame) -> None:
        # The core reads a whole frame before calling this, so what is left in its
        # buffer belongs to the next frame.
        self._frame_start = self._received - len(self.reader.buffer)
        opcode = frame.opcode
        is_data = opcode <= Opcode.BINARY
        try:
            if is_data:
                self._validate_text(frame)
            elif opcode is Opcode.CLOSE:
                self.current_size = None  # an unfinished message ends with the connection
                self.decoder = None
                if not frame.data:
                    frame = Frame(Opcode.CLOSE, _NORMAL_CLOSE)
            # Counted once the frame is known valid in itself, as the partial-frame check
            # would find it, so the close code never depends on how the input was split.
            if self._over_control_rate(frame):
                # As the core does on a close frame: the parser is replaced, input discarded.
                self.fail(CloseCode.POLICY_VIOLATION, "too many control frames or small fragments")
                return
            if opcode is Opcode.PING and self.state is not State.OPEN:
                self.events.append(frame)  # our close frame is out: no pong may follow it
                return
            super().recv_frame(frame)
        except UnicodeDecodeError as exc:  # text or a close reason: the core sends 1007
            exc.reason = f"invalid UTF-8: {exc.reason}"
            raise
        finally:
            self._peek = None
            self._peeked = 0
        if is_data and frame.fin:
            self.message_marks.append(len(self.writes))

    def _over_control_rate(self, frame: Frame) -> bool:
        """Count a ping, a pong or a small fragment that does not end its message; True
        when it is one too many."""
        opcode = frame.opcode
        counted = opcode is Opcode.PING or opcode is Opcode.PONG or (
            opcode <= Opcode.BINARY and not frame.fin and len(frame.data) < SMALL_FRAGMENT
        )
        return counted and self.control_rate is not None and not self.control_rate.take(
            time.monotonic()
        )

    def _validate_text(self, frame: Frame) -> None:
        """Run a text frame through its message's decoder (UnicodeDecodeError if invalid),
        from where the partial-frame check left off."""
        decoder = self._peek or self._text_decoder(frame.opcode)
        if decoder is not None:
            data = frame.data
            decoder.decode(memoryview(data)[self._peeked :] if self._peeked else data, frame.fin)
        self.decoder = None if frame.fin else decoder

    def _text_decoder(self, opcode: int) -> codecs.IncrementalDecoder | None:
        """The decoder for a data frame of a text message in a valid sequence, else None.

        Out-of-sequence frames are left to the core, which fails them with 1002.
        """
        if self.current_size is None:
            return _Utf8Decoder() if opcode == Opcode.TEXT else None
        return self.decoder if opcode == Opcode.CONT else None

    def _check_partial_frame(self) -> None:
        """Fail a frame not yet complete as soon as what arrived shows it invalid.

        The core checks reserved bits and control-frame rules once the whole
        payload is in; here they fail from the header, and text is validated
        as far as it arrived. The payload so far is in the core's buffer,
        which holds exactly that once the header is read; when it does not,
        the frame is checked when complete.
        """
        header = _parse_header(self._head)
        if header is None:
            return
        first, length, mask, size = header
        inflater = self.inflater
        error = _header_error(first, length, inflater)
        if error is not None:
            self.fail(CloseCode.PROTOCOL_ERROR, error)
            return
        buffer = self.reader.buffer
        if not buffer or len(buffer) != self._received - self._frame_start - size:
            return
        if inflater is not None and (first & 0x40 or inflater.in_message):
            return  # compressed: its text is validated once inflated, when the frame is whole
        if self._peek is None:
            decoder = self._text_decoder(first & 0x0F)
            if decoder is None:
                return
            self._peek = _Utf8Decoder()
            self._peek.setstate(decoder.getstate())
        shift = self._peeked % 4
        with memoryview(buffer) as view:
            payload = apply_mask(view[self._peeked :], mask[shift:] + mask[:shift])
        self._peeked = len(buffer)
        try:
            self._peek.decode(payload, False)
        except UnicodeDecodeError as exc:
            self.fail(CloseCode.INVALID_DATA, f"invalid UTF-8: {exc.reason}")
            self.parser_exc = exc


def _parse_header(head: bytes | bytearray) -> tuple[int, int, bytes, int] | None:
    """First byte, payload length, masking key and size of a masked frame header; None
    until it is whole."""
    if len(head) < 2 or not head[1] & 0x80:
        return None
    length = head[1] & 0x7F
    size = 6 + (2 if length == 126 else 8 if length == 127 else 0)
    if len(head) < size:
        return None
    if length >= 126:
        length = int.from_bytes(head[2 : size - 4], "big")
    return head[0], length, bytes(head[size - 4 : size]), size


def _header_error(first: int, length: int, inflater: Inflater | None = None) -> str | None:
    """What RFC 6455 5.2 and 5.5 forbid in a header; with permessage-deflate, RSV1 on the
    first frame of a message (RFC 7692 6), nowhere else."""
    if first & 0x40 and inflater is not None:
        opcode = first & 0x0F
        if opcode != Opcode.TEXT and opcode != Opcode.BINARY:
            return "RSV1 set on a control or continuation frame"
        if first & 0x30:
            return "reserved bits must be 0"
    elif first & 0x70:
        return "reserved bits must be 0"
    if first & 0x08:  # a control frame
        if length > 125:
            return "control frame too long"
        if not first & 0x80:
            return "fragmented control frame"
    return None


class WebSocketSession:
    """One server-side WebSocket after the handshake, as a state machine.

    Feed it what the socket read with :meth:`receive_data`; it returns the
    complete messages. Write out what :meth:`take_output` returns; when its
    ``eof`` is true, the connection is over and the socket should close.
    ``control_rate`` bounds the pings, pongs and small fragments that do not
    end their message (None: unbounded); one too many fails the connection
    with 1008. ``deflate``: permessage-deflate as negotiated (None: not), whose
    compressed messages it inflates.

    The parser (the ``websockets`` core: ~2.5 KiB, 36 µs to build) is taken from
    a shared spare list when input arrives and given back by :meth:`park` once
    the connection waits between frames with nothing pending, so an idle
    connection holds none: its whole state is then "open, between messages".
    A session that negotiated permessage-deflate keeps its own (its inflater
    may carry context from one message to the next).
    """

    __slots__ = ("_binary", "_control_rate", "_max_message_size", "_protocol")

    def __init__(
        self, *, max_message_size: int, control_rate: TokenBucket | None = None,
        deflate: Deflate | None = None,
    ) -> None:
        self._max_message_size = max_message_size
        self._control_rate = control_rate
        #: The parser, None while parked (see :meth:`park`).
        self._protocol: _ServerProtocol | None = None
        if deflate is not None:
            self._protocol = _ServerProtocol(max_message_size, control_rate, deflate)
        self._binary = False

    def _core(self) -> _ServerProtocol:
        """The parser: this session's, or a spare one taken for it."""
        protocol = self._protocol
        if protocol is None:
            protocol = self._protocol = _take_spare(self._max_message_size, self._control_rate)
        return protocol

    def park(self) -> None:
        """Give the parser back to the spare list if nothing of it is this connection's any
        more: open, between frames and messages, nothing to send (else keep it)."""
        protocol = self._protocol
        if protocol is not None and protocol.idle():
            self._protocol = None
            _give_back(protocol)

    @property
    def open(self) -> bool:
        """True until a close frame was sent or received."""
        return self._protocol is None or self._protocol.state is State.OPEN

    @property
    def finished(self) -> bool:
        """True once the server should close the TCP connection."""
        protocol = self._protocol
        return protocol is not None and (protocol.eof_sent or protocol.state is State.CLOSED)

    @property
    def close_code(self) -> int | None:
        """The code of the close frame received, else of the one sent."""
        close = self._close()
        return None if close is None else int(close.code)

    @property
    def closed_by_peer(self) -> bool:
        """True when the client sent the first close frame (ours, if any, echoes it)."""
        protocol = self._protocol
        return protocol is not None and protocol.close_rcvd is not None and bool(
            protocol.close_rcvd_then_sent or protocol.close_sent is None
        )

    @property
    def close_reason(self) -> str:
        close = self._close()
        return "" if close is None else close.reason

    def _close(self) -> Close | None:
        protocol = self._protocol
        return None if protocol is None else protocol.close_rcvd or protocol.close_sent

    def frame_remaining(self, upcoming: bytes = b"") -> int:
        """Bytes still to come of the frame being received, or of the one ``upcoming``
        begins (0 while its header is not whole): feeding that much at once parses one
        frame, however large."""
        return self._core().frame_remaining(upcoming)

    def receive_data(self, data: bytes) -> list[InboundMessage]:
        """Parse bytes from the client; return the messages they complete."""
        self._core().receive_data(data)
        return self._collect()

    def receive_eof(self) -> None:
        """The client closed its side of the TCP connection."""
        protocol = self._core()
        protocol.receive_eof()
        protocol.events_received()

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake (no-op if it already started)."""
        protocol = self._core()
        if protocol.state is State.OPEN:
            protocol.send_close(code, _truncate_reason(reason))

    def take_output(self) -> Output:
        """Pongs and the close frame to write, and whether to close TCP afterwards."""
        protocol = self._protocol
        if protocol is None:
            return _NO_OUTPUT
        protocol.sort(protocol.data_to_send())
        pongs, protocol.pongs = protocol.pongs, []
        chunks, protocol.output = protocol.output, []
        eof = bool(chunks) and chunks[-1] == b""
        return Output(b"".join(pongs), b"".join(chunks), eof)

    def _collect(self) -> list[InboundMessage]:
        """Assemble the data frames the core parsed (all valid) into messages, beside those
        parsed whole (see :meth:`_ServerProtocol._parse_whole`)."""
        protocol = self._core()
        writes, marks = protocol.data_to_send(), protocol.message_marks
        protocol.message_marks = []
        written = 0
        messages: list[InboundMessage] = []
        fragments = protocol.fragments
        # past the handshake (which is not the core's), every event is a frame, or a
        # message the protocol parsed directly (_ServerProtocol._parse_whole)
        for event in cast(list[Frame | InboundMessage], protocol.events_received()):
            if isinstance(event, InboundMessage):
                message = event
            else:
                opcode = event.opcode
                if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                    self._binary = opcode is Opcode.BINARY
                    fragments.clear()
                elif opcode is not Opcode.CONT:
                    continue  # ping, pong and close are answered by the core
                fragments.append(event.data)
                if not event.fin:
                    continue
                data = fragments[0] if len(fragments) == 1 else b"".join(fragments)
                message = InboundMessage(bytes(data), self._binary)
                fragments.clear()
            mark = marks[len(messages)]
            if mark > written:  # pongs the client asked for before this message
                message = message._replace(replies=b"".join(writes[written:mark]))
                written = mark
            messages.append(message)
        protocol.sort(writes[written:])
        return messages


_NO_OUTPUT = Output(b"", b"", False)
#: Parsers given back by idle sessions, by their message size limit: a connection woken by
#: input takes one (building one costs ~36 µs). Only as many as are reading at once are
#: needed; past :data:`SPARES` the rest go.
_spares: dict[int | None, list[_ServerProtocol]] = {}
SPARES = 64


def _take_spare(max_message_size: int, control_rate: TokenBucket | None) -> _ServerProtocol:
    spares = _spares.get(max_message_size)
    if not spares:
        return _ServerProtocol(max_message_size, control_rate, None)
    protocol = spares.pop()
    protocol.control_rate = control_rate
    return protocol


def _give_back(protocol: _ServerProtocol) -> None:
    protocol.control_rate = None
    protocol.reset_counts()
    spares = _spares.setdefault(protocol.max_message_size, [])
    if len(spares) < SPARES:
        spares.append(protocol)


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame for a socket that no session drives (refusals after an early upgrade)."""
    payload = Close(code, _truncate_reason(reason)).serialize()
    return Frame(Opcode.CLOSE, payload).serialize(mask=False, extensions=[])


def _truncate_reason(reason: str) -> str:
    """Close reasons are at most 123 bytes of UTF-8 (RFC 6455 5.5)."""
    encoded = reason.encode("utf-8")[:123]
    return encoded.decode("utf-8", "ignore")
