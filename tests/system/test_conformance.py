"""RFC 6455 conformance of ``/ws/<channel>``, end to end, with hand-built frames.

Organised like the Autobahn testsuite's categories (1 framing, 2 pings and
pongs, 3 reserved bits, 4 opcodes, 5 fragmentation, 6 UTF-8, 7 close
handling, 9 limits) plus the opening handshake of section 4.2. Each case
sends raw bytes over a real socket to a real server, the way Autobahn's
fuzzing client does, and checks every frame that comes back: the relay
echoes a client's own messages to it, so "echo" below means "relayed back".
The expectations come from the RFC (section numbers in the docstrings);
where the RFC allows a choice, the docstring says which one wsrelay makes.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import time

import pytest

from tests.support import (
    ServerProcess,
    client_frame,
    handshake_request,
    server_frames,
    wait_until,
)
from wsrelay.websocket.handshake import GUID

pytestmark = pytest.mark.e2e  # its tests start processes (servers, manage.py) themselves

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


class Peer:
    """One upgraded connection driven by hand: frames out, every server frame checked in."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(handshake_request(path, port))
        status, _headers, self.data = read_response_head(self.sock)
        assert status == 101
        self.eof = False

    def close(self) -> None:
        self.sock.close()

    def send(self, *frames: bytes, chop: int = 0) -> None:
        """Send frames at once, or in pieces of ``chop`` bytes the server reads one by one."""
        wire = b"".join(frames)
        try:
            if not chop:
                self.sock.sendall(wire)
                return
            for start in range(0, len(wire), chop):
                self.sock.sendall(wire[start : start + chop])
                time.sleep(0.002)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server gave up on us; what it sent before says why

    def read(self, count: int | None = None, timeout: float = 5) -> list[tuple[int, bytes]]:
        """Frames received so far, reading until ``count`` of them, or until the server
        closes the TCP connection (``count=None``), or ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            frames = server_frames(self.data)
            if count is not None and len(frames) >= count:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                break
            except ConnectionResetError:
                chunk = b""
            self.data += chunk
            self.eof = not chunk
        return server_frames(self.data)

    def expect(self, *expected: tuple[int, bytes]) -> None:
        """Exactly these frames arrive, and the connection stays open."""
        assert self.read(len(expected)) == list(expected)
        assert not self.eof, "the server closed the connection"

    def expect_close(self, code: int, timeout: float = 5) -> list[tuple[int, bytes]]:
        """The server sends one close frame with ``code`` and then closes TCP; return the
        frames that came before it."""
        frames = self.read(timeout=timeout)
        assert self.eof, f"the server did not close the connection; got {frames}"
        assert frames, "the connection was dropped without a close frame"
        opcode, payload = frames[-1]
        assert opcode == CLOSE, f"the last frame is not a close frame: {frames}"
        assert len(payload) >= 2, "every close frame wsrelay sends carries a code"
        received = struct.unpack("!H", payload[:2])[0]
        reason = payload[2:].decode("utf-8")  # a close reason is UTF-8 (5.5.1)
        assert received == code, f"closed with {received} {reason!r}, expected {code}"
        before = frames[:-1]
        assert all(op != CLOSE for op, _ in before), "only one close frame"
        return before

    def quiet(self, seconds: float) -> None:
        """Nothing arrives for ``seconds`` and the connection stays open."""
        before = len(server_frames(self.data))
        assert len(self.read(before + 1, timeout=seconds)) == before, "an unexpected frame"
        assert not self.eof, "the server closed the connection"


@pytest.fixture(scope="module")
def server():
    """A server of this module's own whose heartbeat never fires during a case: its pings
    would be frames the cases do not expect."""
    proc = ServerProcess.serve(env={"WSRELAY_PING_INTERVAL": "3600"})
    yield proc
    proc.stop()


@pytest.fixture
def peer(server, channel):
    client = Peer(server.port, f"/ws/{channel}")
    yield client
    client.close()


def read_response_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and the bytes after the head of an HTTP response."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed during the response head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ", 2)[1]), headers, rest


# -- 1 framing: payload lengths at every boundary of the length encoding --------------

LENGTHS = [0, 1, 125, 126, 127, 128, 65535, 65536]


@pytest.mark.parametrize("length", LENGTHS)
def test_1_1_text_of_every_length_class_is_echoed(peer, length):
    payload = b"*" * length
    peer.send(client_frame(TEXT, payload))
    peer.expect((TEXT, payload))


@pytest.mark.parametrize("length", LENGTHS)
def test_1_2_binary_of_every_length_class_is_echoed(peer, length):
    payload = bytes([0xFE]) * length
    peer.send(client_frame(BINARY, payload))
    peer.expect((BINARY, payload))


def test_1_1_8_a_frame_sent_in_997_byte_chops_is_echoed(peer):
    payload = b"*" * 65536
    peer.send(client_frame(TEXT, payload), chop=997)
    peer.expect((TEXT, payload))


def test_1_3_non_minimal_length_encoding_is_read_correctly(peer):
    """RFC 5.2 asks senders for the minimal encoding; a longer one still parses."""
    payload = b"short"
    key = b"\x01\x02\x03\x04"
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    peer.send(bytes([0x81, 0x80 | 127]) + struct.pack("!Q", len(payload)) + key + masked)
    peer.expect((TEXT, payload))


def test_1_4_unmasked_client_frame_is_1002(peer):
    """5.1: a server MUST close the connection on an unmasked client frame."""
    peer.send(client_frame(TEXT, b"not masked", mask=False))
    assert peer.expect_close(1002) == []


# -- 2 pings and pongs ----------------------------------------------------------------

@pytest.mark.parametrize("payload", [
    b"", b"Hello, world!", b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff", b"\xfe" * 125,
], ids=["empty", "text", "binary", "125-bytes"])
def test_2_1_to_2_4_ping_is_answered_with_its_payload(peer, payload):
    peer.send(client_frame(PING, payload))
    peer.expect((PONG, payload))


def test_2_5_ping_over_125_bytes_is_1002(peer):
    peer.send(client_frame(PING, b"\xfe" * 126))
    assert peer.expect_close(1002) == []


def test_2_6_ping_sent_byte_by_byte_is_answered(peer):
    payload = b"\xfe" * 125
    peer.send(client_frame(PING, payload), chop=1)
    peer.expect((PONG, payload))


@pytest.mark.parametrize("payload", [b"", b"unsolicited pong payload"])
def test_2_7_2_8_unsolicited_pong_gets_no_answer(peer, payload):
    peer.send(client_frame(PONG, payload))
    peer.quiet(0.3)
    peer.send(client_frame(CLOSE, close_payload(1000)))
    assert peer.expect_close(1000) == []


def test_2_9_pong_then_ping_answers_only_the_ping(peer):
    peer.send(client_frame(PONG, b"unsolicited"), client_frame(PING, b"ping"))
    peer.expect((PONG, b"ping"))


@pytest.mark.parametrize("chop", [0, 1], ids=["together", "byte-by-byte"])
def test_2_10_2_11_ten_pings_get_ten_pongs_in_order(peer, chop):
    peer.send(*(client_frame(PING, f"ping {i}".encode()) for i in range(10)), chop=chop)
    peer.expect(*((PONG, f"ping {i}".encode()) for i in range(10)))


# -- 3 reserved bits: no extension is ever negotiated, so any RSV bit is an error ----

@pytest.mark.parametrize("rsv,opcode,payload", [
    (1, TEXT, b"Hello"), (2, TEXT, b"Hello"), (3, TEXT, b"Hello"), (4, TEXT, b"Hello"),
    (5, BINARY, b"\x00\xff"), (6, PING, b"ping"), (7, CLOSE, close_payload(1000)),
])
@pytest.mark.parametrize("chop", [0, 1], ids=["together", "byte-by-byte"])
def test_3_reserved_bits_are_1002_after_what_came_before(peer, rsv, opcode, payload, chop):
    """5.2: a nonzero RSV bit without a negotiated extension fails the connection; the
    valid message before it is still relayed, the ping after it never answered."""
    peer.send(client_frame(TEXT, b"before"), client_frame(opcode, payload, rsv=rsv),
              client_frame(PING, b"after"), chop=chop)
    assert peer.expect_close(1002) == [(TEXT, b"before")]


def header_only(first: int, length: int) -> bytes:
    """A masked frame header announcing ``length`` bytes, to be sent without its payload."""
    if length < 126:
        return bytes([first, 0x80 | length]) + b"mask"
    return bytes([first, 0x80 | 127]) + struct.pack("!Q", length) + b"mask"


@pytest.mark.parametrize("first,length", [
    (0x80 | 0x40 | TEXT, 100_000), (0x80 | 0x10 | BINARY, 10), (0x80 | PING, 1000),
    (PING, 10), (0x80 | CLOSE, 126),
], ids=["rsv1-text", "rsv3-binary", "long-ping", "fragmented-ping", "long-close"])
def test_3_5_invalid_header_is_1002_before_any_payload(peer, first, length):
    """Reserved bits and control-frame rules show in the header: the connection fails
    there, without waiting for (or buffering) a payload that cannot be valid."""
    peer.send(header_only(first, length))
    assert peer.expect_close(1002, timeout=2) == []


# -- 4 opcodes: reserved opcodes fail the connection ----------------------------------

@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
@pytest.mark.parametrize("payload", [b"", b"reserved opcode payload"], ids=["empty", "payload"])
def test_4_reserved_opcode_is_1002_after_what_came_before(peer, opcode, payload):
    peer.send(client_frame(TEXT, b"before"), client_frame(opcode, payload),
              client_frame(PING, b"after"))
    assert peer.expect_close(1002) == [(TEXT, b"before")]


# -- 5 fragmentation ------------------------------------------------------------------

@pytest.mark.parametrize("opcode", [PING, PONG])
def test_5_1_5_2_fragmented_control_frame_is_1002(peer, opcode):
    peer.send(client_frame(opcode, b"frag1", fin=False), client_frame(CONT, b"frag2"))
    assert peer.expect_close(1002) == []


@pytest.mark.parametrize("chop", [0, 3, 1], ids=["together", "chopped", "byte-by-byte"])
def test_5_3_to_5_5_fragmented_text_is_echoed_as_one_message(peer, chop):
    peer.send(client_frame(TEXT, b"frag1", fin=False), client_frame(CONT, b"frag2"), chop=chop)
    peer.expect((TEXT, b"frag1frag2"))


@pytest.mark.parametrize("chop", [0, 3, 1], ids=["together", "chopped", "byte-by-byte"])
def test_5_6_to_5_8_ping_between_fragments_is_answered_first(peer, chop):
    """5.4: control frames may come between fragments; the pong answers a frame that came
    before the message ended, so it comes before the relayed message."""
    peer.send(client_frame(TEXT, b"frag1", fin=False), client_frame(PING, b"ping"),
              client_frame(CONT, b"frag2"), chop=chop)
    peer.expect((PONG, b"ping"), (TEXT, b"frag1frag2"))


@pytest.mark.parametrize("fin", [True, False])
@pytest.mark.parametrize("chop", [0, 1], ids=["together", "byte-by-byte"])
def test_5_9_to_5_14_continuation_without_a_start_is_1002(peer, fin, chop):
    peer.send(client_frame(CONT, b"nothing to continue", fin=fin),
              client_frame(TEXT, b"frag1", fin=False), client_frame(CONT, b"frag2"), chop=chop)
    assert peer.expect_close(1002) == []


def test_5_15_continuation_after_a_finished_message_is_1002(peer):
    peer.send(client_frame(TEXT, b"frag1", fin=False), client_frame(CONT, b"frag2"),
              client_frame(CONT, b"frag3", fin=False), client_frame(TEXT, b"frag4"))
    assert peer.expect_close(1002) == [(TEXT, b"frag1frag2")]


@pytest.mark.parametrize("second", [TEXT, BINARY])
@pytest.mark.parametrize("fin", [True, False])
def test_5_16_to_5_18_new_data_frame_inside_a_fragmented_message_is_1002(peer, second, fin):
    peer.send(client_frame(TEXT, b"frag1", fin=False), client_frame(second, b"frag2", fin=fin))
    assert peer.expect_close(1002) == []


@pytest.mark.parametrize("chop", [0, 1], ids=["together", "byte-by-byte"])
def test_5_19_5_20_pings_between_fragments_sent_over_time(peer, chop):
    peer.send(client_frame(TEXT, b"f1", fin=False), client_frame(CONT, b"f2", fin=False),
              client_frame(PING, b"pongme 1!"), chop=chop)
    peer.expect((PONG, b"pongme 1!"))
    peer.send(client_frame(CONT, b"f3", fin=False), client_frame(CONT, b"f4", fin=False),
              client_frame(PING, b"pongme 2!"), client_frame(CONT, b"f5"), chop=chop)
    assert peer.read(3) == [(PONG, b"pongme 1!"), (PONG, b"pongme 2!"), (TEXT, b"f1f2f3f4f5")]


# -- 6 UTF-8 --------------------------------------------------------------------------

def test_6_1_empty_text_and_empty_fragments_are_echoed(peer):
    peer.send(client_frame(TEXT, b""))
    peer.send(client_frame(TEXT, b"", fin=False), client_frame(CONT, b"", fin=False),
              client_frame(CONT, b""))
    peer.send(client_frame(TEXT, b"", fin=False), client_frame(CONT, b"middle", fin=False),
              client_frame(CONT, b""))
    peer.expect((TEXT, b""), (TEXT, b""), (TEXT, b"middle"))


SAMPLE = "Hello-µ@ßöäüàá-UTF-8!! κόσμε 𝄞".encode()


def test_6_2_valid_text_split_at_every_byte_boundary_is_accepted(peer):
    """Fragment boundaries may fall inside a code point (5.6: the text is the whole
    message); cut into two fragments at every byte, and into one fragment per byte."""
    for cut in range(len(SAMPLE) + 1):
        peer.send(client_frame(TEXT, SAMPLE[:cut], fin=False), client_frame(CONT, SAMPLE[cut:]))
    frames = [client_frame(TEXT, SAMPLE[:1], fin=False)]
    frames += [client_frame(CONT, SAMPLE[i : i + 1], fin=False) for i in range(1, len(SAMPLE))]
    peer.send(*frames, client_frame(CONT, b""))
    count = len(SAMPLE) + 2
    assert peer.read(count) == [(TEXT, SAMPLE)] * count


VALID_UTF8 = {
    "nul": b"\x00",
    "last-2-byte": b"\xdf\xbf",
    "before-surrogates": b"\xed\x9f\xbf",
    "after-surrogates": b"\xee\x80\x80",
    "noncharacter-fffe": b"\xef\xbf\xbe",
    "noncharacter-ffff": b"\xef\xbf\xbf",
    "max-code-point": b"\xf4\x8f\xbf\xbf",
}


@pytest.mark.parametrize("payload", VALID_UTF8.values(), ids=VALID_UTF8.keys())
def test_6_x_valid_boundary_code_points_are_accepted(peer, payload):
    peer.send(client_frame(TEXT, payload))
    peer.expect((TEXT, payload))


INVALID_UTF8 = {
    "surrogate": "κόσμε".encode() + b"\xed\xa0\x80edited",
    "overlong-slash": b"\xc0\xaf",
    "overlong-3-byte": b"\xe0\x80\xaf",
    "overlong-4-byte": b"\xf0\x80\x80\xaf",
    "above-max": b"\xf4\x90\x80\x80",
    "5-byte-sequence": b"\xf8\x88\x80\x80\x80",
    "byte-fe": b"\xfe",
    "byte-ff": b"\xff",
    "lone-continuation": b"\x80",
    "missing-continuation": b"\xc2 ",
    "truncated-at-end": b"ok \xe2\x82",
}


@pytest.mark.parametrize("payload", INVALID_UTF8.values(), ids=INVALID_UTF8.keys())
@pytest.mark.parametrize("fragmented", [False, True])
def test_6_x_invalid_utf8_is_1007(peer, payload, fragmented):
    """8.1: invalid UTF-8 in a text message fails the connection, with 1007 (7.4.1)."""
    if fragmented:
        frames = [client_frame(TEXT, payload[:1], fin=False), client_frame(CONT, payload[1:])]
    else:
        frames = [client_frame(TEXT, payload)]
    peer.send(*frames, client_frame(PING, b"after"))
    assert peer.expect_close(1007) == []


def test_6_x_binary_messages_are_not_checked(peer):
    payload = b"\xff\xfe\xed\xa0\x80"
    peer.send(client_frame(BINARY, payload))
    peer.expect((BINARY, payload))


FAIL_FAST = {
    "6.4.1": ("κόσμε".encode(), b"\xf4\x90\x80\x80", b"edited"),
    "6.4.2": ("κόσμε".encode() + b"\xf4", b"\x90", b"\x80\x80edited"),
}


@pytest.mark.parametrize("parts", FAIL_FAST.values(), ids=FAIL_FAST.keys())
def test_6_4_1_6_4_2_invalid_fragment_fails_before_the_message_ends(peer, parts):
    first, bad, _never_sent = parts
    peer.send(client_frame(TEXT, first, fin=False))
    peer.quiet(0.3)
    peer.send(client_frame(CONT, bad, fin=False))
    assert peer.expect_close(1007, timeout=2) == []  # the last fragment is never sent


@pytest.mark.parametrize("parts", FAIL_FAST.values(), ids=["6.4.3", "6.4.4"])
def test_6_4_3_6_4_4_invalid_bytes_fail_before_the_frame_ends(peer, parts):
    """Within one frame: the close comes as soon as the invalid bytes arrive, while the
    rest of the frame's payload is still unsent."""
    first, bad, never_sent = parts
    wire = client_frame(TEXT, first + bad + never_sent)
    head = len(wire) - len(first + bad + never_sent)
    peer.send(wire[: head + len(first)])
    peer.quiet(0.3)
    peer.send(wire[head + len(first) : head + len(first) + len(bad)])
    assert peer.expect_close(1007, timeout=2) == []


# -- 7 close handling -----------------------------------------------------------------

def test_7_1_1_message_then_close_is_echoed_then_closed(peer):
    peer.send(client_frame(TEXT, b"Hello World!"), client_frame(CLOSE, close_payload(1000)))
    assert peer.expect_close(1000) == [(TEXT, b"Hello World!")]


def test_7_1_2_to_7_1_4_nothing_after_a_close_is_processed(peer):
    """1.4/5.5.1: after a close frame the server discards further data: a second close,
    a ping and a message get no answer."""
    peer.send(client_frame(CLOSE, close_payload(1000)), client_frame(CLOSE, close_payload(1001)),
              client_frame(PING, b"ping"), client_frame(TEXT, b"late"))
    assert peer.expect_close(1000) == []


def test_7_1_5_close_between_fragments_is_a_normal_close(peer):
    """5.4: a close frame may come between fragments; the unfinished message is dropped
    and the close is answered normally (websockets' core calls it a 1002)."""
    peer.send(client_frame(TEXT, b"fragment1", fin=False), client_frame(CLOSE, close_payload(1000)),
              client_frame(CONT, b"fragment2"))
    assert peer.expect_close(1000) == []


def test_7_1_6_large_message_then_close_then_ping(peer):
    payload = b"BAsd7&jh23" * 26214  # 256 KiB
    peer.send(client_frame(TEXT, payload), client_frame(CLOSE, close_payload(1000)),
              client_frame(PING, b"ping"))
    assert peer.expect_close(1000) == [(TEXT, payload)]


def test_7_3_1_empty_close_is_answered_with_1000(peer):
    """5.5.1: no code received; the answer carries 1000 (1005 may not be sent, 7.4.1)."""
    peer.send(client_frame(CLOSE, b""))
    assert peer.expect_close(1000) == []


def test_7_3_2_one_byte_close_payload_is_1002(peer):
    peer.send(client_frame(CLOSE, b"\x03"))
    assert peer.expect_close(1002) == []


@pytest.mark.parametrize("reason", [b"", b"Hello World!", b"*" * 123])
def test_7_3_3_to_7_3_5_close_with_reason_is_echoed(peer, reason):
    peer.send(client_frame(CLOSE, close_payload(1000, reason)))
    assert peer.expect_close(1000) == []
    assert server_frames(peer.data)[-1][1] == close_payload(1000, reason)


def test_7_3_6_close_reason_over_123_bytes_is_1002(peer):
    peer.send(client_frame(CLOSE, close_payload(1000, b"*" * 124)))
    assert peer.expect_close(1002) == []


def test_7_5_1_close_reason_invalid_utf8_is_1007(peer):
    """The reason is UTF-8 (5.5.1) and invalid UTF-8 fails the connection (8.1). Autobahn
    accepts 1002 or 1007; wsrelay answers 1007, the code for data inconsistent with its
    type (7.4.1)."""
    reason = "κόσμε".encode() + b"\xed\xa0\x80edited"
    peer.send(client_frame(CLOSE, close_payload(1000, reason)))
    assert peer.expect_close(1007) == []


VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
               3000, 3999, 4000, 4999]


@pytest.mark.parametrize("code", VALID_CODES)
def test_7_7_valid_close_codes_are_echoed(peer, code):
    """7.4: defined and registered codes, 3000-4999 for libraries and applications."""
    peer.send(client_frame(CLOSE, close_payload(code, b"reason")))
    assert peer.expect_close(code) == []


INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


@pytest.mark.parametrize("code", INVALID_CODES)
def test_7_9_7_13_invalid_close_codes_are_1002(peer, code):
    """7.4.1/7.4.2: 0-999 unused, 1004-1006 and 1015 reserved (never sent on the wire),
    1016-2999 for future RFCs, 5000+ undefined."""
    peer.send(client_frame(CLOSE, close_payload(code)))
    assert peer.expect_close(1002) == []


def test_7_x_server_initiated_close_carries_code_and_reason(make_server, channel):
    server = make_server(env={"WSRELAY_MAX_MESSAGE_SIZE": "1000",
                              "WSRELAY_SUBSCRIBER_BUFFER": "100000"})
    client = Peer(server.port, f"/ws/{channel}")
    try:
        client.send(client_frame(TEXT, b"x" * 1001))
        client.expect_close(1009)
        reason = server_frames(client.data)[-1][1][2:]
        assert b"1001" in reason and b"1000" in reason, reason
    finally:
        client.close()


# -- 9 limits: size checked from the header, and across fragments ---------------------

@pytest.mark.parametrize("length", [2**63 - 1, 2**63, 2**64 - 1, (1 << 20) + 1])
def test_9_oversized_frame_is_1009_from_its_header_alone(peer, length):
    """The header announces more than WSRELAY_MAX_MESSAGE_SIZE (1 MiB by default): closed
    at once, with no payload sent and nothing read or allocated for it."""
    peer.send(header_only(0x80 | BINARY, length))
    assert peer.expect_close(1009, timeout=2) == []


def test_9_message_of_exactly_the_limit_is_echoed(peer):
    payload = bytes(range(256)) * 4096  # 1 MiB
    peer.send(client_frame(BINARY, payload))
    assert peer.read(1, timeout=10) == [(BINARY, payload)]


def test_9_message_over_the_limit_across_fragments_is_1009_at_the_header(peer):
    half = b"\x00" * (1 << 19)
    peer.send(client_frame(BINARY, half, fin=False), client_frame(CONT, half, fin=False))
    over = client_frame(CONT, b"x")
    peer.send(over[:6])  # the header of one more byte, and no payload
    assert peer.expect_close(1009, timeout=2) == []


# -- keep-alive (5.5.2, 5.5.3) --------------------------------------------------------

def test_peer_answering_pings_is_kept_and_a_silent_one_dropped(make_server, channel):
    server = make_server(env={"WSRELAY_PING_INTERVAL": "0.2", "WSRELAY_PING_TIMEOUT": "0.3"})
    client = Peer(server.port, f"/ws/{channel}")
    try:
        deadline = time.monotonic() + 1.5  # three times interval + timeout
        answered = 0
        while time.monotonic() < deadline:
            for opcode, payload in client.read(answered + 1, timeout=1)[answered:]:
                assert opcode == PING
                client.send(client_frame(PONG, payload))
                answered += 1
        assert answered >= 4 and not client.eof
        assert server.health()["subscribers"] == 1
        files = server.open_files()
        wait_until(lambda: server.health()["subscribers"] == 0, timeout=5,
                   message="a peer that stopped answering pings was kept")
        wait_until(lambda: server.open_files() <= files - 1, message="its socket left open")
    finally:
        client.close()


# -- 4.2 the opening handshake --------------------------------------------------------

def handshake(server, channel: str, **headers: str | None) -> tuple[int, dict[str, str]]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(handshake_request(f"/ws/{channel}", server.port, **headers))
        status, response_headers, _rest = read_response_head(sock)
    return status, response_headers


def test_4_2_accept_key_follows_the_rfc(server, channel):
    key = base64.b64encode(b"0123456789abcdef").decode()
    status, headers = handshake(server, channel, Sec_WebSocket_Key=key)
    assert status == 101
    expected = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    assert headers["sec-websocket-accept"] == expected
    assert headers["upgrade"].lower() == "websocket"
    assert "upgrade" in headers["connection"].lower()


def test_4_2_header_values_are_case_insensitive_tokens(server, channel):
    status, _ = handshake(server, channel, Upgrade="WebSocket", Connection="keep-alive, UPGRADE")
    assert status == 101


def test_4_2_no_extension_or_subprotocol_is_accepted_unasked(server, channel):
    """Offered extensions it does not know are declined by leaving them out of the 101, so
    any RSV bit afterwards is an error (5.2, 9.1); permessage-deflate, the one it knows, is
    answered (RFC 7692; tests/transports/test_websocket_deflate.py)."""
    status, headers = handshake(server, channel,
                                Sec_WebSocket_Extensions="x-webkit-deflate-frame",
                                Sec_WebSocket_Protocol="chat")
    assert status == 101
    assert "sec-websocket-extensions" not in headers
    assert "sec-websocket-protocol" not in headers
    status, headers = handshake(
        server, channel, Sec_WebSocket_Extensions="x-webkit-deflate-frame, permessage-deflate"
    )
    assert status == 101
    assert headers["sec-websocket-extensions"] == "permessage-deflate; server_no_context_takeover"


@pytest.mark.parametrize("headers,status", [
    ({"Sec_WebSocket_Key": None}, 400),
    ({"Sec_WebSocket_Key": "not base64!"}, 400),
    ({"Sec_WebSocket_Key": base64.b64encode(b"x" * 15).decode()}, 400),
    ({"Sec_WebSocket_Key": base64.b64encode(b"x" * 17).decode()}, 400),
    ({"Host": None}, 400),
    ({"Connection": "keep-alive"}, 400),
    ({"Sec_WebSocket_Version": "8"}, 426),
    ({"Sec_WebSocket_Version": None}, 426),
    ({"Sec_WebSocket_Version": "13, 8"}, 426),
], ids=["no-key", "key-not-base64", "key-15-bytes", "key-17-bytes", "no-host",
        "no-upgrade-token", "version-8", "no-version", "two-versions"])
def test_4_2_bad_handshake_is_an_http_error(server, channel, headers, status):
    got, response_headers = handshake(server, channel, **headers)
    assert got == status
    if status == 426:  # 4.4: the versions the server speaks
        assert response_headers["sec-websocket-version"] == "13"


def test_4_2_http_1_0_handshake_is_400(server, channel):
    request = handshake_request(f"/ws/{channel}", server.port).replace(b"HTTP/1.1", b"HTTP/1.0")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(request)
        assert read_response_head(sock)[0] == 400


def test_4_2_non_get_handshake_is_refused(server, channel):
    request = handshake_request(f"/ws/{channel}", server.port).replace(b"GET ", b"POST ")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(request)
        assert 400 <= read_response_head(sock)[0] < 500
