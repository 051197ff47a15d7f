"""permessage-deflate: one compressed payload per message out, bounded inflation in."""

import itertools
import os
import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.frames import Close, Opcode

from tests.support import client_frame, examples
from wsrelay.websocket.deflate import Deflater, deflater
from wsrelay.websocket.handshake import Deflate
from wsrelay.websocket.protocol import CloseCode, InboundMessage, WebSocketSession

TAKEOVER = Deflate(server_max_window_bits=15, client_max_window_bits=15,
                   client_no_context_takeover=False)
NO_TAKEOVER = TAKEOVER._replace(client_no_context_takeover=True)
JSON = b'{"channel": "room", "user": "ada", "text": "hello, hello, hello everyone"}' * 20


def compress(data: bytes, stream=None) -> bytes:
    """What a client sends: a sync-flushed deflate payload without its last 4 bytes."""
    stream = stream or zlib.compressobj(6, zlib.DEFLATED, -15)
    payload = stream.compress(data) + stream.flush(zlib.Z_SYNC_FLUSH)
    assert payload.endswith(b"\x00\x00\xff\xff")
    return payload[:-4]


def inflate(payload: bytes, window_bits: int = 15) -> bytes:
    """What a client does with a compressed message from the server (a fresh stream each
    time, as server_no_context_takeover allows)."""
    return zlib.decompressobj(wbits=-window_bits).decompress(payload + b"\x00\x00\xff\xff")


def session(deflate=TAKEOVER, limit: int = 1 << 20) -> WebSocketSession:
    return WebSocketSession(max_message_size=limit, deflate=deflate)


def close_code(s: WebSocketSession) -> int | None:
    s.take_output()
    return s.close_code


# -- outbound ---------------------------------------------------------------------------


def test_each_compressed_message_inflates_alone_with_a_fresh_stream():
    """No message refers to an earlier one (server_no_context_takeover): a client may
    inflate each with a fresh stream, or keep one stream for all of them."""
    d = Deflater(15, 100)
    messages = [JSON, JSON[::-1], JSON + b"!", JSON]
    payloads = [d.compress(m) for m in messages]
    assert all(p is not None and len(p) < len(JSON) // 4 for p in payloads)
    assert [inflate(p) for p in payloads] == messages
    kept = zlib.decompressobj(wbits=-15)
    assert [kept.decompress(p + b"\x00\x00\xff\xff") for p in payloads] == messages
    assert payloads[0] == payloads[3]  # the same message, the same bytes


def test_small_messages_are_sent_as_they_are():
    d = Deflater(15, 256)
    assert d.compress(JSON[:255]) is None
    assert inflate(d.compress(JSON[:256])) == JSON[:256]


def test_incompressible_data_grows_by_a_few_bytes():
    data = os.urandom(16384)
    payload = Deflater(15, 0).compress(data)
    assert len(data) < len(payload) < len(data) + 16
    assert inflate(payload) == data


def test_a_smaller_window_is_honoured():
    payload = Deflater(9, 0).compress(JSON * 10)
    assert payload is not None
    assert inflate(payload, window_bits=9) == JSON * 10


@pytest.mark.parametrize("window_bits", range(9, 16))
def test_every_window_inflates_within_its_bits(window_bits):
    """A smaller window has a smaller zlib hash table (mem_level): text, binary and random
    bytes still come back whole through an inflater of that window."""
    data = JSON * 40 + bytes(range(256)) * 64 + os.urandom(8192)
    d = Deflater(window_bits, 0)
    for _ in range(2):  # the second message after the first one's flush
        payload = d.compress(data)
        assert payload is not None
        assert inflate(payload, window_bits=window_bits) == data


def test_one_deflater_per_setting_in_the_process():
    assert deflater(15, 300) is deflater(15, 300)
    assert deflater(15, 300) is not deflater(10, 300)


# -- inbound ----------------------------------------------------------------------------


def test_compressed_and_plain_messages_both_arrive():
    s = session()
    wire = (client_frame(Opcode.TEXT, compress(JSON), rsv=4)
            + client_frame(Opcode.BINARY, b"\x00\x01")
            + client_frame(Opcode.BINARY, compress(b"\xff" * 5000), rsv=4))
    assert s.receive_data(wire) == [
        InboundMessage(JSON, False), InboundMessage(b"\x00\x01", True),
        InboundMessage(b"\xff" * 5000, True),
    ]


def test_context_taken_over_from_one_message_to_the_next():
    stream = zlib.compressobj(6, zlib.DEFLATED, -15)
    first, second = compress(JSON, stream), compress(JSON, stream)
    assert len(second) < len(first) // 4  # refers back to the first message
    s = session(TAKEOVER)
    assert s.receive_data(client_frame(Opcode.TEXT, first, rsv=4)) == [InboundMessage(JSON, False)]
    assert s.receive_data(client_frame(Opcode.TEXT, second, rsv=4)) == [
        InboundMessage(JSON, False)
    ]


def test_without_client_context_takeover_the_stream_is_dropped_after_each_message():
    s = session(NO_TAKEOVER)
    for _ in range(3):
        assert s.receive_data(client_frame(Opcode.TEXT, compress(JSON), rsv=4)) == [
            InboundMessage(JSON, False)
        ]
        assert s._protocol.inflater.stream is None


def test_no_zlib_state_until_the_first_compressed_frame():
    s = session(TAKEOVER)
    assert s.receive_data(client_frame(Opcode.TEXT, b"plain")) == [InboundMessage(b"plain", False)]
    assert s._protocol.inflater.stream is None
    s.receive_data(client_frame(Opcode.TEXT, compress(JSON), rsv=4))
    assert s._protocol.inflater.stream is not None


def test_a_fragmented_compressed_message_has_rsv1_on_its_first_frame_only():
    payload = compress(JSON)
    parts = [payload[:10], payload[10:40], payload[40:]]
    wire = (client_frame(Opcode.TEXT, parts[0], fin=False, rsv=4)
            + client_frame(Opcode.PING, b"p")
            + client_frame(Opcode.CONT, parts[1], fin=False)
            + client_frame(Opcode.CONT, parts[2]))
    s = session()
    messages = []
    for i in range(0, len(wire), 7):  # split anywhere, mid-header included
        messages += s.receive_data(wire[i : i + 7])
    assert messages == [InboundMessage(JSON, False)]
    assert s.open


@pytest.mark.parametrize("wire", [
    client_frame(Opcode.TEXT, compress(JSON), rsv=4),              # not negotiated
], ids=["rsv1-not-negotiated"])
def test_rsv1_without_the_extension_fails_with_1002(wire):
    s = WebSocketSession(max_message_size=1 << 20)
    assert s.receive_data(wire) == []
    assert close_code(s) == CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize("wire", [
    client_frame(Opcode.PING, b"x", rsv=4),
    client_frame(Opcode.CLOSE, Close(1000, "").serialize(), rsv=4),
    client_frame(Opcode.TEXT, compress(JSON)[:5], fin=False, rsv=4)
    + client_frame(Opcode.CONT, compress(JSON)[5:], rsv=4),
    client_frame(Opcode.TEXT, b"ab", fin=False) + client_frame(Opcode.CONT, b"cd", rsv=4),
    client_frame(Opcode.TEXT, compress(JSON), rsv=6),                # RSV1 and RSV2
    client_frame(Opcode.TEXT, b"\xff\xff\xff\xff not deflate", rsv=4),
], ids=["ping", "close", "continuation-of-compressed", "continuation-of-plain", "rsv2",
        "not-deflate"])
def test_rsv1_out_of_place_or_bad_data_fails_with_1002(wire):
    s = session()
    assert s.receive_data(wire) == []
    assert close_code(s) == CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize("opcode", [Opcode.PING, Opcode.CONT])
def test_rsv1_out_of_place_fails_from_the_header_alone(opcode):
    s = session()
    if opcode is Opcode.CONT:
        s.receive_data(client_frame(Opcode.TEXT, compress(JSON)[:5], fin=False, rsv=4))
    s.receive_data(client_frame(opcode, b"x" * 100, fin=opcode is Opcode.PING, rsv=4)[:6])
    assert close_code(s) == CloseCode.PROTOCOL_ERROR


def test_invalid_utf8_inside_compressed_text_fails_with_1007():
    s = session()
    assert s.receive_data(client_frame(Opcode.TEXT, compress(b"ok \xff\xfe"), rsv=4)) == []
    assert close_code(s) == CloseCode.INVALID_DATA


def test_compressed_text_split_anywhere_is_not_mistaken_for_invalid_utf8():
    """The partial-frame check validates text as it arrives: compressed bytes must not be
    read as text."""
    text = ("é€𝄞 " * 2000).encode()
    wire = client_frame(Opcode.TEXT, compress(text), rsv=4)
    s = session()
    messages = []
    for i in range(0, len(wire), 500):
        messages += s.receive_data(wire[i : i + 500])
    assert messages == [InboundMessage(text, False)]


def test_a_bomb_fails_with_1009_without_inflating_it_all():
    """A 1 MiB limit, 64 MiB of zeros in about 64 KiB of deflate: closed with 1009 having
    allocated about the limit, not the whole."""
    bomb = compress(b"\x00" * (64 << 20))
    assert len(bomb) < 100_000
    s = session(limit=1 << 20)
    tracemalloc.start()
    try:
        assert s.receive_data(client_frame(Opcode.BINARY, bomb, rsv=4)) == []
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert close_code(s) == CloseCode.MESSAGE_TOO_BIG
    assert peak < 4 << 20


def test_the_limit_counts_inflated_bytes_across_fragments():
    payload = compress(b"a" * 3000)
    wire = (client_frame(Opcode.TEXT, payload[:5], fin=False, rsv=4)
            + client_frame(Opcode.CONT, payload[5:]))
    s = session(limit=2999)
    assert s.receive_data(wire) == []
    assert close_code(s) == CloseCode.MESSAGE_TOO_BIG
    s = session(limit=3000)
    assert s.receive_data(wire) == [InboundMessage(b"a" * 3000, False)]


# -- property: any mix of compressed and plain messages, fragmented, split anywhere -----

LIMIT = 3000
FUZZ = settings(max_examples=examples(200), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
#: Last frames that must fail the connection, and the code they fail it with.
SPOILS = {
    "rsv1 on a continuation": ([
        client_frame(Opcode.TEXT, compress(JSON)[:5], fin=False, rsv=4),
        client_frame(Opcode.CONT, compress(JSON)[5:], rsv=4)], CloseCode.PROTOCOL_ERROR),
    "rsv1 on a ping": ([client_frame(Opcode.PING, b"p", rsv=4)],
                       CloseCode.PROTOCOL_ERROR),
    "rsv1 on a plain continuation": ([
        client_frame(Opcode.BINARY, b"ab", fin=False),
        client_frame(Opcode.CONT, b"cd", rsv=4)], CloseCode.PROTOCOL_ERROR),
    "not deflate": ([client_frame(Opcode.BINARY, b"\xff" * 20, rsv=4)],
                    CloseCode.PROTOCOL_ERROR),
    "inflates past the limit": ([
        client_frame(Opcode.BINARY, compress(b"z" * (LIMIT + 1)), rsv=4)],
        CloseCode.MESSAGE_TOO_BIG),
    "invalid UTF-8 once inflated": ([
        client_frame(Opcode.TEXT, compress(b"valid, then \xc0\xaf"), rsv=4)],
        CloseCode.INVALID_DATA),
}

#: Every message fits in LIMIT (a character is at most 4 bytes of UTF-8).
message_specs = st.lists(st.tuples(
    st.booleans(),                                                   # binary
    st.one_of(st.text(max_size=40).map(str.encode),                  # data
              st.text(min_size=200, max_size=LIMIT // 4).map(str.encode),
              st.binary(max_size=2000)),
    st.booleans(),                                                   # compressed
    st.integers(1, 4),                                               # fragments
    st.booleans(),                                                   # a ping between them
), max_size=6)


def client_wire(specs, takeover: bool) -> tuple[bytes, list[InboundMessage], int]:
    """The frames a client sends for these messages (text that is not UTF-8 sent as
    binary), the messages the server must relay, and the pongs it must send."""
    stream = zlib.compressobj(6, zlib.DEFLATED, -15)
    wire, expected, pings = b"", [], 0
    for binary, data, compressed, fragments, ping in specs:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            binary = True
        payload = data
        if compressed:
            payload = compress(data, stream if takeover else None)
        step = max(1, -(-len(payload) // fragments))
        pieces = [payload[i : i + step] for i in range(0, len(payload), step)] or [b""]
        for index, piece in enumerate(pieces):
            opcode = (Opcode.BINARY if binary else Opcode.TEXT) if index == 0 else Opcode.CONT
            rsv = 4 if compressed and index == 0 else 0
            wire += client_frame(opcode, piece, fin=index == len(pieces) - 1, rsv=rsv)
            if ping and index < len(pieces) - 1:
                wire += client_frame(Opcode.PING, b"between")
                pings += 1
        expected.append(InboundMessage(data, binary))
    return wire, expected, pings


@FUZZ
@given(message_specs, st.booleans(), st.sampled_from([None, *SPOILS]),
       st.lists(st.integers(0, 10**6), max_size=8))
def test_any_mix_of_compressed_and_plain_messages_split_anywhere(specs, takeover, spoil, cuts):
    """Whatever the mix (compressed or not, with or without context takeover, fragmented,
    pings between fragments) and wherever reads split it, every message arrives as sent;
    a spoiled frame after them fails the connection with its code, and only then."""
    wire, expected, pings = client_wire(specs, takeover)
    code = None
    if spoil is not None:
        frames, code = SPOILS[spoil]
        wire += b"".join(frames)
    s = session(TAKEOVER if takeover else NO_TAKEOVER, limit=LIMIT)
    points = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    received: list[InboundMessage] = []
    pongs = 0
    for a, b in itertools.pairwise(points):
        for message in s.receive_data(wire[a:b]):
            pongs += message.replies.count(b"between")
            received.append(message._replace(replies=b""))
        pongs += s.take_output().pongs.count(b"between")
    assert received == expected
    assert pongs == pings
    assert s.close_code == code
