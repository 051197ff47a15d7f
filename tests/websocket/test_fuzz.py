"""Property-based tests of what a hostile client controls: frames, channel names, ids, headers.

The WebSocket session is checked against a model written from RFC 6455 (and
the order in which wsrelay checks a frame: opcode and mask, then size from
the header, then reserved bits and control-frame rules, then the message
sequence, then UTF-8): for any sequence of valid and invalid frames, split
into reads at any points, the session relays exactly the messages the model
predicts, answers exactly its pings, and ends with the close code it
predicts. Arbitrary bytes never make it raise.
"""

from __future__ import annotations

import base64
import codecs
import itertools
import math
import re
import struct
import time
from typing import NamedTuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import client_frame, examples, server_frames
from wsrelay.channels import InvalidChannel, check_channel
from wsrelay.errors import ApiError
from wsrelay.ids import InvalidMessageId, MessageId
from wsrelay.limits import TokenBucket
from wsrelay.websocket.handshake import accept_key, is_upgrade_request
from wsrelay.websocket.protocol import SMALL_FRAGMENT, WebSocketSession

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
LIMIT = 300  # small, so that fragments cross it
FUZZ = settings(max_examples=examples(1000), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


class Spec(NamedTuple):
    opcode: int
    payload: bytes
    fin: bool = True
    rsv: int = 0
    masked: bool = True

    def wire(self) -> bytes:
        return client_frame(self.opcode, self.payload, self.fin, self.rsv, self.masked)


def valid_close_code(code: int) -> bool:
    return code in {1000, 1001, 1002, 1003, *range(1007, 1015)} or 3000 <= code < 5000


def model(frames: list[Spec], allowance: float = math.inf) -> list[tuple]:
    """What RFC 6455 says a server does with these frames: ``("message", data, binary)``,
    ``("pong", payload)`` and a final ``("close", code, echoed payload or None)``; and, once
    a frame valid in itself exceeds the ``allowance`` of pings, pongs and small fragments
    that do not end their message, ``("close", 1008, None)``."""
    events: list[tuple] = []
    parts: list[bytes] | None = None  # the fragmented message under way
    binary = False
    decoder = None
    for frame in frames:
        opcode, payload = frame.opcode, frame.payload
        if opcode not in (CONT, TEXT, BINARY, CLOSE, PING, PONG) or not frame.masked:
            return [*events, ("close", 1002, None)]
        room = LIMIT - sum(map(len, parts)) if parts is not None else LIMIT
        if len(payload) > room:
            return [*events, ("close", 1009, None)]
        if frame.rsv or (opcode >= CLOSE and (len(payload) > 125 or not frame.fin)):
            return [*events, ("close", 1002, None)]
        if opcode == CLOSE:
            if not payload:
                return [*events, ("close", 1000, struct.pack("!H", 1000))]
            if len(payload) == 1:
                return [*events, ("close", 1002, None)]
            try:
                payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                return [*events, ("close", 1007, None)]
            code = struct.unpack("!H", payload[:2])[0]
            if not valid_close_code(code):
                return [*events, ("close", 1002, None)]
            return [*events, ("close", code, payload)]
        control = opcode in (PING, PONG)
        in_sequence = control or (opcode == CONT) == (parts is not None)
        if not control and in_sequence:
            if opcode != CONT:
                parts, binary = [], opcode == BINARY
                decoder = None if binary else codecs.getincrementaldecoder("utf-8")()
            if decoder is not None:
                try:
                    decoder.decode(payload, frame.fin)
                except UnicodeDecodeError:
                    return [*events, ("close", 1007, None)]
        if control or (not frame.fin and len(payload) < SMALL_FRAGMENT):
            allowance -= 1
            if allowance < 0:
                return [*events, ("close", 1008, None)]
        if opcode == PING:
            events.append(("pong", payload))
            continue
        if opcode == PONG:
            continue
        if not in_sequence:
            return [*events, ("close", 1002, None)]
        parts.append(payload)
        if frame.fin:
            events.append(("message", b"".join(parts), binary))
            parts = None
    return events


def output_events(data: bytes) -> list[tuple]:
    events = []
    for opcode, payload in server_frames(data):
        assert opcode in (PONG, CLOSE), f"the session itself only sends pongs and a close: {opcode}"
        if opcode == PONG:
            events.append(("pong", payload))
        else:
            assert len(payload) >= 2, "every close frame carries a code"
            payload[2:].decode("utf-8")
            events.append(("close", struct.unpack("!H", payload[:2])[0], payload))
    return events


def run_session(chunks: list[bytes], allowance: int | None = None) -> list[tuple]:
    """Feed the chunks like the connection does; return everything the session produced.
    ``allowance``: the control frames the client may send (None: any number)."""
    rate = None if allowance is None else TokenBucket(1e-9, allowance, time.monotonic())
    session = WebSocketSession(max_message_size=LIMIT, control_rate=rate)
    events: list[tuple] = []
    ended = False
    for chunk in chunks:
        before = len(events)
        for message in session.receive_data(chunk):
            events += output_events(message.replies)
            events.append(("message", message.data, message.binary))
        pongs, close, eof = session.take_output()
        events += output_events(pongs + close)  # pongs go out first, as the connection does
        assert not (ended and len(events) > before), "nothing after the close frame"
        ended = ended or eof
        assert ended == session.finished == any(e[0] == "close" for e in events)
        session.park()  # as the connection does once it read all: the parser may go back
    if not session.closed_by_peer:  # 1011 echoed to a client that sent it is no failure
        assert all(e[1] != 1011 for e in events if e[0] == "close"), "the parser failed"
    return events


def same_outcome(actual: list[tuple], expected: list[tuple]) -> bool:
    """Equal, except that a failure's close reason is the server's to word."""
    if expected and expected[-1][0] == "close" and expected[-1][2] is None:
        return bool(actual) and actual[:-1] == expected[:-1] and actual[-1][:2] == expected[-1][:2]
    return actual == expected


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# -- strategies -------------------------------------------------------------------------

#: Short payloads, and long ones that cross LIMIT alone or in a few fragments.
binary_payloads = st.one_of(st.binary(max_size=30), st.binary(min_size=120, max_size=400))
text_payloads = st.one_of(
    st.text(max_size=30).map(str.encode),
    st.text(min_size=60, max_size=120).map(str.encode),
    st.binary(max_size=40),  # mostly invalid UTF-8
    st.sampled_from([b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"ok\xe2\x82",
                     "€𝄞κόσμε".encode()]),
)
close_payloads = st.one_of(
    st.binary(max_size=3),
    st.builds(lambda code, reason: struct.pack("!H", code) + reason,
              st.one_of(st.sampled_from([1000, 1001, 1005, 1006, 1015, 1016, 3000, 4999, 5000]),
                        st.integers(0, 65535)),
              st.one_of(st.text(max_size=20).map(str.encode), st.binary(max_size=8))),
)
control_frames = st.one_of(
    st.binary(max_size=130).map(lambda payload: Spec(PING, payload)),
    st.binary(max_size=20).map(lambda payload: Spec(PONG, payload)),
)
close_frames = close_payloads.map(lambda payload: Spec(CLOSE, payload))
any_frame = st.tuples(
    st.integers(0, 15), binary_payloads, st.booleans(),
    st.sampled_from([0, 0, 0, 1, 4, 7]), st.sampled_from([True, True, True, False]),
).map(lambda fields: Spec(*fields))


@st.composite
def messages(draw) -> list[Spec]:
    """A text or binary message cut into fragments, control frames between them; now and
    then one frame spoiled (a reserved bit, no mask, the FIN bit flipped)."""
    binary = draw(st.booleans())
    payload = draw(binary_payloads if binary else text_payloads)
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
    pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    frames = []
    for index, piece in enumerate(pieces):
        opcode = (BINARY if binary else TEXT) if index == 0 else CONT
        frames.append(Spec(opcode, piece, index == len(pieces) - 1))
        if index < len(pieces) - 1 and draw(st.booleans()):
            frames.append(draw(st.one_of(control_frames, close_frames)))
    if draw(st.integers(0, 3)) == 0:
        index = draw(st.integers(0, len(frames) - 1))
        frame = frames[index]
        frames[index] = draw(st.sampled_from([
            frame._replace(rsv=4), frame._replace(masked=False), frame._replace(fin=not frame.fin),
        ]))
    return frames


conversations = st.lists(
    st.one_of(messages(), messages(), messages(), control_frames.map(lambda f: [f]),
              close_frames.map(lambda f: [f]), any_frame.map(lambda f: [f])),
    min_size=1, max_size=8,
).map(lambda groups: [frame for group in groups for frame in group])


# -- the session against the model ------------------------------------------------------

@FUZZ
@given(conversations, st.lists(st.integers(0, 10**6), max_size=8))
def test_session_does_what_the_rfc_model_predicts(frames, cuts):
    wire = b"".join(frame.wire() for frame in frames)
    actual = run_session(split(wire, cuts))
    expected = model(frames)
    assert same_outcome(actual, expected), (actual, expected)


@FUZZ
@given(conversations, st.integers(0, 6), st.lists(st.integers(0, 10**6), max_size=8))
def test_control_frames_past_the_allowance_fail_with_1008_where_the_model_says(
    frames, allowance, cuts
):
    wire = b"".join(frame.wire() for frame in frames)
    actual = run_session(split(wire, cuts), allowance)
    expected = model(frames, allowance)
    assert same_outcome(actual, expected), (actual, expected)


@FUZZ
@given(conversations, st.integers(0, 10**6), st.lists(st.integers(0, 10**6), max_size=4))
def test_truncated_input_fails_only_early_never_wrongly(frames, end, cuts):
    """The stream stops anywhere: what the complete frames call for happens; the partial
    last frame may only add an early 1007 (invalid text already visible), nothing else."""
    wires = [frame.wire() for frame in frames]
    wire = b"".join(wires)
    end %= len(wire) + 1
    complete, total = [], 0
    for frame, frame_wire in zip(frames, wires, strict=True):
        if total + len(frame_wire) > end:
            break
        complete.append(frame)
        total += len(frame_wire)
    actual = run_session(split(wire[:end], cuts))
    expected = model(complete)
    if same_outcome(actual, expected):
        return
    # Only a failure visible before the frame ends: opcode, mask, size, invalid text so far.
    assert len(complete) < len(frames) and not any(e[0] == "close" for e in expected)
    whole = model([*complete, frames[len(complete)]])
    assert whole[-1][0] == "close", (actual, expected)
    assert same_outcome(actual, [*expected, ("close", whole[-1][1], None)]), (actual, whole)


@FUZZ
@given(st.binary(max_size=600), st.lists(st.integers(0, 10**6), max_size=8))
def test_arbitrary_bytes_never_raise(data, cuts):
    events = run_session(split(data, cuts))
    closes = [e for e in events if e[0] == "close"]
    assert len(closes) <= 1 and (not closes or closes[0] is events[-1])
    if closes:
        assert valid_close_code(closes[0][1])


@FUZZ
@given(st.text(max_size=200).map(str.encode), st.lists(st.integers(0, 10**6), max_size=6))
def test_valid_text_is_accepted_whatever_the_fragment_boundaries(text, cuts):
    points = sorted({c % (len(text) + 1) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    frames = [Spec(TEXT if i == 0 else CONT, p, i == len(pieces) - 1) for i, p in
              enumerate(pieces)]
    wire = b"".join(frame.wire() for frame in frames)
    for chunking in ([wire], [wire[i : i + 1] for i in range(len(wire))]):
        assert run_session(chunking) == [("message", text, False)]


# -- channel names, ids and handshake headers: the pure checks ---------------------------

CHANNEL_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")


@settings(max_examples=examples(500))
@given(st.one_of(st.text(max_size=140), st.text(alphabet=sorted(CHANNEL_CHARS), max_size=140)))
def test_channel_names_are_exactly_the_contract(name):
    allowed = 1 <= len(name) <= 128 and set(name) <= CHANNEL_CHARS
    try:
        assert check_channel(name) == name
    except InvalidChannel:
        assert not allowed
    else:
        assert allowed


ID_TEXT = re.compile(r"([0-9]{1,16})-([0-9]{1,19})")


@settings(max_examples=examples(500))
@given(st.one_of(
    st.text(max_size=40),
    st.from_regex(r"\A[0-9]{1,18}-[0-9]{1,21}\Z"),
    st.builds(lambda a, b: f"{a}-{b}", st.text("0123456789\u0661\u0662\u0969", max_size=3),
              st.text("0123456789\u0661", max_size=3)),  # with Arabic and Devanagari digits
))
def test_since_ids_are_exactly_the_contract(text):
    match = ID_TEXT.fullmatch(text)
    try:
        parsed = MessageId.parse(text)
    except InvalidMessageId:
        assert match is None
    else:
        assert match is not None
        assert parsed == (int(match.group(1)), int(match.group(2)))
        assert MessageId.parse(str(parsed)) == parsed


latin1 = st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=40)
keys = st.one_of(latin1, st.binary(min_size=14, max_size=18).map(
    lambda raw: base64.b64encode(raw).decode()))


@settings(max_examples=examples(500))
@given(keys, st.one_of(st.just("13"), latin1), st.sampled_from(["GET", "POST", "get"]),
       st.sampled_from(["HTTP/1.1", "HTTP/1.0"]), st.one_of(st.just("relay.example"), latin1),
       latin1, latin1)
def test_handshake_headers_are_checked_exactly(key, version, method, protocol, host, upgrade,
                                               connection):
    """Header values reach WSGI as latin-1 text; whatever they hold, the check answers the
    Sec-WebSocket-Accept of RFC 6455 4.2.2 or an HTTP error, and nothing else."""
    environ = {"REQUEST_METHOD": method, "SERVER_PROTOCOL": protocol, "HTTP_HOST": host,
               "HTTP_SEC_WEBSOCKET_KEY": key, "HTTP_SEC_WEBSOCKET_VERSION": version,
               "HTTP_UPGRADE": upgrade, "HTTP_CONNECTION": connection}
    assert is_upgrade_request(environ) in (True, False)
    stripped = key.strip(" \t")
    try:
        decoded = base64.b64decode(stripped.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        decoded = b""
    valid = (method == "GET" and protocol == "HTTP/1.1" and host.strip(" \t") != ""
             and version.strip(" \t") == "13" and len(decoded) == 16)
    try:
        accept = accept_key(environ)
    except ApiError as exc:
        assert not valid
        assert exc.status in (400, 405, 426)
    else:
        assert valid
        assert len(base64.b64decode(accept, validate=True)) == 20
