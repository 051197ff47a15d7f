"""The Sans-I/O session: bytes in, messages and close frames out."""

import struct
import time

import pytest
from websockets.frames import Close, Frame, Opcode

from tests.support import client_frame, server_frames
from wsrelay.limits import TokenBucket
from wsrelay.websocket.protocol import (
    PING_FRAME,
    CloseCode,
    InboundMessage,
    WebSocketSession,
    close_frame,
    encode_frame,
)


def session(limit: int = 1 << 20) -> WebSocketSession:
    return WebSocketSession(max_message_size=limit)


def sent_close(s: WebSocketSession) -> tuple[int, str]:
    frame = parse_server_frame(s.take_output().close)
    assert frame.opcode is Opcode.CLOSE
    close = Close.parse(frame.data)
    return close.code, close.reason


def parse_server_frame(data: bytes) -> Frame:
    assert data[0] & 0x80, "FIN set"
    assert not data[1] & 0x80, "server frames are not masked"
    length = data[1] & 0x7F
    offset = 2
    if length == 126:
        (length,) = struct.unpack("!H", data[2:4])
        offset = 4
    elif length == 127:
        (length,) = struct.unpack("!Q", data[2:10])
        offset = 10
    return Frame(Opcode(data[0] & 0x0F), data[offset : offset + length])


def test_text_and_binary_messages():
    s = session()
    data = client_frame(Opcode.TEXT, "héllo".encode()) + client_frame(Opcode.BINARY, b"\x00\xff")
    assert s.receive_data(data) == [
        InboundMessage("héllo".encode(), False), InboundMessage(b"\x00\xff", True)
    ]


def test_fragments_are_assembled_even_split_mid_frame():
    s = session()
    wire = (client_frame(Opcode.TEXT, b"ab", fin=False) + client_frame(Opcode.CONT, b"cd", False)
            + client_frame(Opcode.PING, b"p") + client_frame(Opcode.CONT, b"ef"))
    messages = []
    for i in range(len(wire)):
        messages += s.receive_data(wire[i : i + 1])
    assert messages == [InboundMessage(b"abcdef", False)]
    pong = parse_server_frame(s.take_output().pongs)
    assert (pong.opcode, pong.data) == (Opcode.PONG, b"p")


def test_utf8_split_across_fragments_is_valid():
    s = session()
    text = "€".encode()
    wire = client_frame(Opcode.TEXT, text[:1], fin=False) + client_frame(Opcode.CONT, text[1:])
    assert s.receive_data(wire) == [InboundMessage(text, False)]


def test_invalid_utf8_fails_at_the_first_bad_fragment():
    s = session()
    assert s.receive_data(client_frame(Opcode.TEXT, b"ok\xff", fin=False)) == []
    assert sent_close(s)[0] == CloseCode.INVALID_DATA
    assert s.finished


def test_too_big_is_refused_from_the_header():
    s = session(limit=1000)
    header = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 2**62) + b"mask"
    assert s.receive_data(header) == []
    assert sent_close(s)[0] == CloseCode.MESSAGE_TOO_BIG


def test_too_big_across_fragments():
    s = session(limit=1000)
    s.receive_data(client_frame(Opcode.BINARY, b"x" * 600, fin=False))
    s.receive_data(client_frame(Opcode.CONT, b"x" * 600))
    assert sent_close(s)[0] == CloseCode.MESSAGE_TOO_BIG


@pytest.mark.parametrize("wire", [
    client_frame(Opcode.TEXT, b"unmasked", mask=False),
    client_frame(Opcode.CONT, b"no start"),
    client_frame(3, b""),                                            # reserved opcode
    client_frame(Opcode.TEXT, b"x", rsv=4),                          # RSV1, no extension
    client_frame(Opcode.PING, b"x" * 126),                           # control frame too long
    client_frame(Opcode.TEXT, b"a", fin=False) + client_frame(Opcode.TEXT, b"b"),
])
def test_protocol_errors_close_with_1002(wire):
    s = session()
    assert s.receive_data(wire) == []
    assert sent_close(s)[0] == CloseCode.PROTOCOL_ERROR


def test_close_handshake_echoes_the_code():
    s = session()
    s.receive_data(client_frame(Opcode.CLOSE, Close(1000, "bye").serialize()))
    assert sent_close(s) == (1000, "bye")
    assert s.finished
    assert s.close_code == 1000


def test_server_close_carries_code_and_reason():
    s = session()
    s.close(CloseCode.TRY_AGAIN_LATER, "x" * 300)
    code, reason = sent_close(s)
    assert code == 1013
    assert len(reason.encode()) <= 123
    assert not s.open


def test_prebuilt_frames():
    frame = parse_server_frame(encode_frame(b"x" * 70000, binary=True))
    assert (frame.opcode, len(frame.data)) == (Opcode.BINARY, 70000)
    assert parse_server_frame(PING_FRAME).opcode is Opcode.PING
    close = Close.parse(parse_server_frame(close_frame(1008, "no")).data)
    assert (close.code, close.reason) == (1008, "no")


def test_invalid_text_fails_before_its_frame_is_complete():
    s = session()
    wire = client_frame(Opcode.TEXT, "κόσμε".encode() + b"\xf4\x90\x80\x80 and more")
    assert s.receive_data(wire[:17]) == []  # the header and κόσμε
    assert s.take_output() == (b"", b"", False)
    assert s.receive_data(wire[17:19]) == []  # \xf4\x90: no code point starts like that
    assert sent_close(s)[0] == CloseCode.INVALID_DATA


def test_nothing_after_an_invalid_frame_is_answered():
    s = session()
    s.receive_data(client_frame(Opcode.TEXT, b"\xff") + client_frame(Opcode.PING, b"p"))
    pongs, close, eof = s.take_output()
    assert eof
    assert pongs == b""
    assert [(opcode, payload[:2]) for opcode, payload in server_frames(close)] == [
        (Opcode.CLOSE, b"\x03\xef")  # 1007, and no pong
    ]


def test_pongs_answering_frames_before_a_message_come_with_it():
    s = session()
    wire = (client_frame(Opcode.TEXT, b"a", fin=False) + client_frame(Opcode.PING, b"1")
            + client_frame(Opcode.CONT, b"b") + client_frame(Opcode.PING, b"2"))
    (message,) = s.receive_data(wire)
    assert message.data == b"ab"
    assert parse_server_frame(message.replies).data == b"1"
    assert parse_server_frame(s.take_output().pongs).data == b"2"


def test_close_between_fragments_and_empty_close_are_normal_closes():
    s = session()
    s.receive_data(client_frame(Opcode.TEXT, b"a", fin=False) + client_frame(Opcode.CLOSE, b""))
    assert sent_close(s) == (1000, "")
    assert s.finished


def test_closed_by_peer_tells_an_echo_from_our_own_close():
    echoed = session()
    echoed.receive_data(client_frame(Opcode.CLOSE, Close(1011, "client trouble").serialize()))
    assert sent_close(echoed)[0] == 1011 and echoed.closed_by_peer
    failed = session()
    failed.receive_data(client_frame(Opcode.TEXT, b"\xff"))
    assert sent_close(failed)[0] == 1007 and not failed.closed_by_peer
    ours = session()
    ours.close(1001, "going away")
    ours.take_output()
    ours.receive_data(client_frame(Opcode.CLOSE, Close(1001, "").serialize()))
    assert not ours.closed_by_peer


def limited(burst: int, rate: float = 1e-9) -> WebSocketSession:
    """A session whose client may send ``burst`` control frames, then ``rate`` a second."""
    return WebSocketSession(
        max_message_size=1 << 20, control_rate=TokenBucket(rate, burst, time.monotonic())
    )


def test_pings_past_the_control_frame_burst_fail_the_connection_with_1008():
    s = limited(burst=3)
    wire = b"".join(client_frame(Opcode.PING, b"%d" % n) for n in range(5))
    assert s.receive_data(wire + client_frame(Opcode.TEXT, b"after")) == []
    pongs, close, eof = s.take_output()
    assert [payload for _opcode, payload in server_frames(pongs)] == [b"0", b"1", b"2"]
    assert Close.parse(parse_server_frame(close).data) == Close(
        CloseCode.POLICY_VIOLATION, "too many control frames or small fragments"
    )
    assert eof and s.finished
    assert s.receive_data(client_frame(Opcode.PING, b"later")) == []
    assert s.take_output() == (b"", b"", False), "nothing is read after the failure"


def test_small_fragments_that_do_not_end_a_message_count_as_control_frames():
    s = limited(burst=3)
    counted = [client_frame(Opcode.TEXT, b"", fin=False), client_frame(Opcode.CONT, b"x", False),
               client_frame(Opcode.CONT, b"x" * 1023, fin=False)]
    free = [client_frame(Opcode.CONT, b"x" * 1024, fin=False),  # large enough to carry data
            client_frame(Opcode.CONT, b""),  # ends its message
            client_frame(Opcode.TEXT, b"")]  # a whole (empty) message: the publish rate's
    assert s.receive_data(b"".join(counted + free)) == [
        InboundMessage(b"x" * 2048, False), InboundMessage(b"", False)
    ]
    assert not s.finished
    s.receive_data(client_frame(Opcode.PONG, b""))  # the fourth
    assert sent_close(s)[0] == CloseCode.POLICY_VIOLATION


def test_the_control_frame_rate_refills_with_time():
    s = limited(burst=1, rate=1000)
    s.receive_data(client_frame(Opcode.PING, b"1"))
    time.sleep(0.01)
    s.receive_data(client_frame(Opcode.PING, b"2"))
    assert [payload for _op, payload in server_frames(s.take_output().pongs)] == [b"1", b"2"]
    assert not s.finished


def test_pongs_and_the_close_frame_are_handed_out_apart():
    s = session()
    s.receive_data(client_frame(Opcode.PING, b"p") + client_frame(Opcode.CLOSE, b""))
    pongs, close, eof = s.take_output()
    assert server_frames(pongs) == [(Opcode.PONG, b"p")]
    assert server_frames(close) == [(Opcode.CLOSE, struct.pack("!H", 1000))]
    assert eof


def test_a_ping_after_the_servers_close_frame_is_not_answered():
    """Nothing may follow the close frame; the client's close is still awaited."""
    s = session()
    s.close(CloseCode.GOING_AWAY, "bye")
    s.take_output()
    assert s.receive_data(client_frame(Opcode.PING, b"late")) == []
    assert s.take_output() == (b"", b"", False)
    s.receive_data(client_frame(Opcode.CLOSE, Close(1001, "").serialize()))
    assert s.finished


def test_frame_remaining_is_what_a_large_frame_still_needs():
    s = session()
    wire = client_frame(Opcode.BINARY, b"x" * 100_000)
    assert s.frame_remaining() == 0
    assert s.frame_remaining(wire[:1]) == 0, "not enough for a header"
    assert s.frame_remaining(wire[:20]) == len(wire), "the header that comes tells"
    s.receive_data(wire[:1])
    assert s.frame_remaining(wire[1:20]) == len(wire) - 1
    s.receive_data(wire[1:1000])
    assert s.frame_remaining() == len(wire) - 1000
    following = client_frame(Opcode.TEXT, b"next")
    assert s.receive_data(wire[1000:] + following[:3]) == [InboundMessage(b"x" * 100_000, True)]
    assert s.frame_remaining() == 0, "the next frame's header is not whole yet"
    assert s.frame_remaining(following[3:]) == len(following) - 3


# -- parking: an idle session holds no parser ----------------------------------------------


def test_a_session_between_messages_gives_its_parser_back():
    s = session()
    assert s._protocol is None, "nothing is parsed before the first byte"
    assert s.receive_data(client_frame(Opcode.TEXT, b"hi")) == [InboundMessage(b"hi", False)]
    s.park()
    assert s._protocol is None
    assert s.open and not s.finished and s.close_code is None and s.close_reason == ""
    assert s.take_output() == (b"", b"", False)
    assert s.receive_data(client_frame(Opcode.PING, b"p")) == []
    assert server_frames(s.take_output().pongs) == [(Opcode.PONG, b"p")]


@pytest.mark.parametrize("split", [1, 2, 7, 20], ids=lambda n: f"after {n} bytes")
def test_a_session_keeps_its_parser_in_the_middle_of_a_frame(split):
    wire = client_frame(Opcode.TEXT, b"x" * 100)
    s = session()
    assert s.receive_data(wire[:split]) == []
    s.park()
    assert s._protocol is not None
    assert s.receive_data(wire[split:]) == [InboundMessage(b"x" * 100, False)]


def test_a_session_keeps_its_parser_in_the_middle_of_a_message_and_after_its_close():
    s = session()
    s.receive_data(client_frame(Opcode.TEXT, "é".encode()[:1], fin=False))
    s.park()
    assert s._protocol is not None, "the message's text decoder is under way"
    assert s.receive_data(client_frame(Opcode.CONT, "é".encode()[1:])) == [
        InboundMessage("é".encode(), False)]
    s.close(CloseCode.GOING_AWAY, "bye")
    s.park()
    assert sent_close(s) == (CloseCode.GOING_AWAY, "bye")


def test_a_parser_given_back_serves_the_next_session_as_new():
    """The spare carries nothing of its last session: position, rate, close, pongs."""
    first = limited(burst=1)
    first.receive_data(client_frame(Opcode.BINARY, b"one") + client_frame(Opcode.PING, b"1"))
    first.take_output()
    first.park()
    second = limited(burst=2)
    wire = client_frame(Opcode.PING, b"a") + client_frame(Opcode.PING, b"b")
    [message] = second.receive_data(wire + client_frame(Opcode.TEXT, b"two"))
    assert message.data == b"two"
    assert [p for _op, p in server_frames(message.replies)] == [b"a", b"b"]
    second.park()
    assert first.receive_data(client_frame(Opcode.PING, b"2")) == []  # its bucket is empty
    assert sent_close(first)[0] == CloseCode.POLICY_VIOLATION
    assert not second.finished
    assert second.frame_remaining(wire) == len(wire) // 2, "it starts at a frame boundary"


# -- whole frames parsed directly (_ServerProtocol._parse_whole) and the core beside it -----

def run(wire: bytes, cuts: list[int], limit: int = 1 << 20) -> tuple[list, bytes, int | None]:
    """Feed ``wire`` in the pieces ``cuts`` makes, as a connection does: the messages (data,
    type), every pong in the order sent, and the close code sent (None: none)."""
    s = session(limit)
    messages, pongs = [], b""
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        for message in s.receive_data(wire[start:end]):
            pongs += message.replies
            messages.append(InboundMessage(message.data, message.binary))
        pongs += s.take_output().pongs
    return messages, pongs, s.close_code if s.finished else None


def every_split(wire: bytes, limit: int = 1 << 20) -> tuple[list, bytes, int | None]:
    """What ``wire`` does fed whole and cut in two at every byte: always the same as fed a
    byte at a time, which never lets a whole frame be parsed directly (the core parses
    every frame); returns that."""
    expected = run(wire, list(range(1, len(wire))), limit)
    assert run(wire, [], limit) == expected
    for cut in range(1, len(wire)):
        assert run(wire, [cut], limit) == expected, f"cut at byte {cut}"
    return expected


def test_whole_frames_of_every_length_encoding_split_anywhere():
    payloads = [b"", b"x" * 125, "é".encode() * 63, b"y" * 126, b"z" * 300]
    wire = b"".join(client_frame(Opcode.TEXT if i % 2 else Opcode.BINARY, p)
                    for i, p in enumerate(payloads))
    assert every_split(wire) == (
        [InboundMessage(p, binary=not i % 2) for i, p in enumerate(payloads)], b"", None)


def test_a_64_bit_length_frame_whole_and_split():
    wire = client_frame(Opcode.BINARY, bytes(range(256)) * 300) + client_frame(Opcode.TEXT, b"a")
    expected = [InboundMessage(bytes(range(256)) * 300, True), InboundMessage(b"a", False)]
    for cuts in ([], [5], [14], [100], [len(wire) - 7], [len(wire) - 1]):
        assert run(wire, cuts)[0] == expected


def test_whole_frames_around_a_fragmented_message_and_a_ping():
    wire = (client_frame(Opcode.TEXT, b"first")
            + client_frame(Opcode.TEXT, b"ab", fin=False) + client_frame(Opcode.PING, b"p")
            + client_frame(Opcode.CONT, b"cd") + client_frame(Opcode.BINARY, b"last"))
    messages, pongs, _ = every_split(wire)
    assert messages == [InboundMessage(b"first", False), InboundMessage(b"abcd", False),
                        InboundMessage(b"last", True)]
    assert parse_server_frame(pongs) == Frame(Opcode.PONG, b"p")
    s = session()
    assert [m.replies for m in s.receive_data(wire)] == [b"", pongs, b""]  # before "abcd"


def test_a_ping_before_a_whole_frame_is_answered_with_it():
    s = session()
    (message,) = s.receive_data(client_frame(Opcode.PING, b"p") + client_frame(Opcode.TEXT, b"hi"))
    assert message.data == b"hi"
    assert parse_server_frame(message.replies) == Frame(Opcode.PONG, b"p")


@pytest.mark.parametrize("bad, code", [
    (client_frame(Opcode.TEXT, b"ok \xc3\x28 no"), CloseCode.INVALID_DATA),
    (client_frame(Opcode.BINARY, b"x" * 1001), CloseCode.MESSAGE_TOO_BIG),
    (client_frame(Opcode.TEXT, b"rsv", rsv=2), CloseCode.PROTOCOL_ERROR),
    (client_frame(Opcode.BINARY, b"rsv", rsv=1), CloseCode.PROTOCOL_ERROR),
    (client_frame(Opcode.TEXT, b"unmasked", mask=False), CloseCode.PROTOCOL_ERROR),
    (client_frame(Opcode.BINARY, b"unmasked", mask=False), CloseCode.PROTOCOL_ERROR),
])
def test_a_bad_frame_after_whole_ones_fails_and_nothing_after_it_is_answered(bad, code):
    good = client_frame(Opcode.TEXT, b"g" * 1000) + client_frame(Opcode.BINARY, b"b")
    wire = good + bad + client_frame(Opcode.PING, b"late") + client_frame(Opcode.TEXT, b"late")
    assert every_split(wire, limit=1000) == (
        [InboundMessage(b"g" * 1000, False), InboundMessage(b"b", True)], b"", code)


def test_whole_frames_are_not_handed_to_the_core(monkeypatch):
    """The common frame costs no trip through the core's parser (what makes it fast)."""
    parsed = []
    original = Frame.parse.__func__  # type: ignore[attr-defined]

    def counting(cls, *args, **kwargs):
        parsed.append(1)
        return (yield from original(cls, *args, **kwargs))

    monkeypatch.setattr(Frame, "parse", classmethod(counting))
    s = session()
    wire = b"".join(client_frame(Opcode.TEXT, b"m%d" % i) for i in range(50))
    assert len(s.receive_data(wire)) == 50
    assert not parsed
    s.receive_data(client_frame(Opcode.PING, b"p") + client_frame(Opcode.TEXT, b"m"))
    assert len(parsed) == 1  # the ping only


def test_a_session_parks_after_whole_frames_and_measures_the_next_one():
    s = session()
    big = client_frame(Opcode.BINARY, b"x" * 5000)
    s.receive_data(client_frame(Opcode.TEXT, b"a") + big[:3])
    assert s.frame_remaining() == 0  # its 2-byte length is in, its masking key is not
    assert s.frame_remaining(big[3:10]) == len(big) - 3
    s.receive_data(big[3:10])
    assert s.frame_remaining() == len(big) - 10
    assert s.receive_data(big[10:]) == [InboundMessage(b"x" * 5000, True)]
    s.park()
    assert s._protocol is None  # between frames: the parser went back
