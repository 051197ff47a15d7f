"""The WebSocket protocol without I/O: bytes in, whole messages and bytes to send out.

Frame parsing, masking (in C), size limits read from the frame header,
control frames and the closing handshake come from the Sans-I/O core of the
``websockets`` library, which passes the whole Autobahn suite. This module
adds what that core leaves to its I/O layers: assembling fragments into
messages and validating UTF-8 text incrementally, fragment by fragment, so
invalid text fails as soon as a fragment shows it.
"""

from __future__ import annotations

import codecs
from enum import IntEnum
from typing import NamedTuple

from websockets.frames import Close, Frame, Opcode
from websockets.protocol import SERVER, Protocol, State


class CloseCode(IntEnum):
    """The RFC 6455 close codes wsrelay sends."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


class InboundMessage(NamedTuple):
    """A whole message a client sent: the bytes as received, and their type."""

    data: bytes
    binary: bool


def encode_frame(data: bytes, *, binary: bool) -> bytes:
    """One unmasked server frame; built once per message and shared by every subscriber."""
    return Frame(Opcode.BINARY if binary else Opcode.TEXT, data).serialize(
        mask=False, extensions=[]
    )


PING_FRAME = Frame(Opcode.PING, b"wsrelay").serialize(mask=False, extensions=[])


class WebSocketSession:
    """One server-side WebSocket after the handshake, as a state machine.

    Feed it what the socket read with :meth:`receive_data`; it returns the
    complete messages. Write out what :meth:`take_output` returns; when its
    second item is true, the connection is over and the socket should close.
    """

    def __init__(self, *, max_message_size: int) -> None:
        self._protocol = Protocol(SERVER, state=State.OPEN, max_size=max_message_size)
        self._fragments: list[bytes] = []
        self._binary = False
        self._decoder: codecs.IncrementalDecoder | None = None

    @property
    def open(self) -> bool:
        """True until a close frame was sent or received."""
        return self._protocol.state is State.OPEN

    @property
    def finished(self) -> bool:
        """True once the server should close the TCP connection."""
        return self._protocol.eof_sent or self._protocol.state is State.CLOSED

    @property
    def close_code(self) -> int | None:
        """The code of the close frame received, else of the one sent."""
        close = self._protocol.close_rcvd or self._protocol.close_sent
        return None if close is None else int(close.code)

    @property
    def close_reason(self) -> str:
        close = self._protocol.close_rcvd or self._protocol.close_sent
        return "" if close is None else close.reason

    def receive_data(self, data: bytes) -> list[InboundMessage]:
        """Parse bytes from the client; return the messages they complete."""
        self._protocol.receive_data(data)
        return self._collect()

    def receive_eof(self) -> None:
        """The client closed its side of the TCP connection."""
        self._protocol.receive_eof()
        self._protocol.events_received()

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake (no-op if it already started)."""
        if self._protocol.state is State.OPEN:
            self._protocol.send_close(code, _truncate_reason(reason))

    def take_output(self) -> tuple[bytes, bool]:
        """Bytes to write (control frames, close frames) and whether to close afterwards."""
        chunks = self._protocol.data_to_send()
        eof = bool(chunks) and chunks[-1] == b""
        return b"".join(chunks), eof

    def _collect(self) -> list[InboundMessage]:
        messages: list[InboundMessage] = []
        for frame in self._protocol.events_received():
            opcode = frame.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                self._binary = opcode is Opcode.BINARY
                self._decoder = None if self._binary else _utf8_decoder()
                self._fragments = []
            elif opcode is not Opcode.CONT:
                continue  # ping, pong and close are handled by the protocol core
            if self._decoder is not None:
                try:
                    self._decoder.decode(frame.data, frame.fin)
                except UnicodeDecodeError as exc:
                    self._protocol.fail(CloseCode.INVALID_DATA, f"invalid UTF-8: {exc.reason}")
                    break
            self._fragments.append(frame.data)
            if frame.fin:
                data = self._fragments[0] if len(self._fragments) == 1 else b"".join(
                    self._fragments
                )
                messages.append(InboundMessage(bytes(data), self._binary))
                self._fragments = []
                self._decoder = None
        return messages


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame for a socket that no session drives (refusals after an early upgrade)."""
    payload = Close(code, _truncate_reason(reason)).serialize()
    return Frame(Opcode.CLOSE, payload).serialize(mask=False, extensions=[])


def _utf8_decoder() -> codecs.IncrementalDecoder:
    return codecs.getincrementaldecoder("utf-8")("strict")


def _truncate_reason(reason: str) -> str:
    """Close reasons are at most 123 bytes of UTF-8 (RFC 6455 5.5)."""
    encoded = reason.encode("utf-8")[:123]
    return encoded.decode("utf-8", "ignore")
