import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import examples
from wsrelay.ids import MessageId
from wsrelay.message import Message
from wsrelay.websocket import envelopes
from wsrelay.websocket.envelopes import BadRequest, Request, max_request_size, parse_request

ID = MessageId(1700000000000, 3)
LIMIT = 1000


def error_of(text):
    with pytest.raises(BadRequest) as info:
        parse_request(text, LIMIT)
    return json.loads(info.value.envelope)


def test_requests_parse():
    subscribe = {"type": "subscribe", "channel": "a", "since": str(ID), "ack": 1}
    assert parse_request(json.dumps(subscribe), LIMIT) == Request("subscribe", "a", 1, ID)
    unsubscribe = parse_request('{"type":"unsubscribe","channel":"a"}', LIMIT)
    assert unsubscribe == Request("unsubscribe", "a")
    assert parse_request('{"type":"publish","channel":"a","data":"hé"}', LIMIT) == \
        Request("publish", "a", data="hé".encode())
    b64 = base64.b64encode(b"\x00\xff").decode()
    publish = {"type": "publish", "channel": "a", "data": b64, "encoding": "base64", "ack": 7}
    assert parse_request(json.dumps(publish), LIMIT) == Request(
        "publish", "a", 7, data=b"\x00\xff", binary=True
    )
    assert parse_request('{"type":"presence","channel":"a"}', LIMIT).type == "presence"


@pytest.mark.parametrize("text,code", [
    ("not json", "invalid_json"),
    (b"\xff", "invalid_json"),
    ("[1,2]", "invalid_request"),
    ('{"type":"dance","channel":"a"}', "unknown_type"),
    ('{"channel":"a"}', "unknown_type"),
    ('{"type":"subscribe","channel":"a b"}', "invalid_channel"),
    ('{"type":"subscribe"}', "invalid_channel"),
    ('{"type":"subscribe","channel":"a","since":"nope"}', "invalid_since"),
    ('{"type":"publish","channel":"a"}', "invalid_data"),
    ('{"type":"publish","channel":"a","data":5}', "invalid_data"),
    ('{"type":"publish","channel":"a","data":"!!","encoding":"base64"}', "invalid_data"),
    ('{"type":"publish","channel":"a","data":"x","encoding":"hex"}', "invalid_encoding"),
    ('{"type":"publish","channel":"a","data":"x","ack":"1"}', "invalid_ack"),
    ('{"type":"publish","channel":"a","data":"x","ack":true}', "invalid_ack"),
])
def test_bad_requests_get_an_error_naming_them(text, code):
    envelope = error_of(text)
    assert envelope["type"] == "error"
    assert envelope["code"] == code
    assert envelope["reason"]


SURROGATE = "\\ud800"  # a lone surrogate, as JSON escapes it
DEEP = "[" * 100_000 + "]" * 100_000
MANY_LISTS = '{"type":"subscribe","channel":"a","x":[' + ",".join(["[]"] * 200_000) + "]}"


@pytest.mark.parametrize("text,code", [
    ('{"type":["subscribe"],"channel":"a"}', "invalid_request"),
    ('{"type":{"a":1},"channel":"a"}', "invalid_request"),
    ('{"type":7,"channel":"a"}', "unknown_type"),
    ('{"type":null,"channel":"a"}', "unknown_type"),
    ('{"type":true,"channel":"a"}', "unknown_type"),
    (f'{{"type":"{SURROGATE}","channel":"a"}}', "unknown_type"),
    ('{"type":"subscribe","channel":5}', "invalid_channel"),
    ('{"type":"subscribe","channel":["a"]}', "invalid_request"),
    (f'{{"type":"subscribe","channel":"{SURROGATE}"}}', "invalid_channel"),
    ('{"type":"subscribe","channel":"a","ack":1.5}', "invalid_ack"),
    ('{"type":"subscribe","channel":"a","ack":-1}', "invalid_ack"),
    ('{"type":"subscribe","channel":"a","ack":9007199254740992}', "invalid_ack"),
    ('{"type":"subscribe","channel":"a","ack":1e400}', "invalid_ack"),
    ('{"type":"subscribe","channel":"a","ack":' + "9" * 5000 + "}", "invalid_json"),
    ('{"type":"subscribe","channel":"a","ack":' + "9" * 33 + "}", "invalid_json"),
    ('{"type":"subscribe","channel":"a","ack":-' + "9" * 32 + "}", "invalid_ack"),
    ('{"type":"subscribe","channel":"a","ack":NaN}', "invalid_json"),
    ('{"type":"subscribe","channel":"a","ack":Infinity}', "invalid_json"),
    ('{"type":"subscribe","channel":"a","since":5}', "invalid_since"),
    ('{"type":"subscribe","channel":"a","since":true}', "invalid_since"),
    (f'{{"type":"subscribe","channel":"a","since":"{SURROGATE}"}}', "invalid_since"),
    ('{"type":"subscribe","channel":"a","since":"' + "1" * 100_000 + '"}', "invalid_since"),
    ('{"type":"publish","channel":"a","data":null}', "invalid_data"),
    ('{"type":"publish","channel":"a","data":["x"]}', "invalid_request"),
    (f'{{"type":"publish","channel":"a","data":"x{SURROGATE}"}}', "invalid_data"),
    ('{"type":"publish","channel":"a","data":"\u00e9","encoding":"base64"}', "invalid_data"),
    (f'{{"type":"publish","channel":"a","data":"x","encoding":"{SURROGATE}"}}',
     "invalid_encoding"),
    ('{"type":"publish","channel":"a","data":"x","encoding":1}', "invalid_encoding"),
    ('{"type":"publish","channel":"a","data":"' + "x" * (LIMIT + 1) + '"}',
     "request_entity_too_large"),
    ('{"type":"subscribe","channel":"a","extra":{"nested":true}}', "invalid_request"),
    ("{" + ",".join(f'"k{i}":1' for i in range(17)) + "}", "invalid_request"),
    (DEEP, "invalid_request"),
    ('{"a":' * 100_000, "invalid_request"),
    (MANY_LISTS, "invalid_request"),
    ("\x00{}", "invalid_json"),
    ("", "invalid_json"),
], ids=lambda value: value[:40] if isinstance(value, str) else None)
def test_malformed_requests_get_an_error_never_an_exception(text, code):
    envelope = error_of(text)
    assert (envelope["type"], envelope["code"]) == ("error", code)
    assert envelope["reason"] and len(envelope["reason"]) < 300


def test_a_flat_request_with_many_separators_in_its_data_parses():
    data = '{"nick":"ada","text":"a, b: [c]"}' * 100  # what JSON-in-text looks like
    publish = {"type": "publish", "channel": "a", "data": data, "ack": 1, "extra": None}
    assert parse_request(json.dumps(publish), 10_000).data == data.encode()


def test_a_binary_message_of_the_largest_size_fits_a_request_frame():
    for size in (0, 1, 2, 3, 1000, 1 << 20):
        request = {"type": "publish", "channel": "c" * 128, "data": base64.b64encode(
            b"\xff" * size).decode(), "encoding": "base64", "ack": envelopes.MAX_ACK}
        text = json.dumps(request, indent=1)
        assert len(text) <= max_request_size(size)
        assert parse_request(text, size).data == b"\xff" * size
    assert max_request_size(1 << 20) < 1.34 * (1 << 20) + 2048  # and not much more


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=40))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8)
fields = st.fixed_dictionaries({}, optional={
    "type": st.one_of(values, st.sampled_from(sorted(envelopes.REQUEST_TYPES))),
    "channel": st.one_of(values, st.just("a")),
    "ack": st.one_of(values, st.integers(0, 10)),
    "since": st.one_of(values, st.just(str(ID))),
    "data": st.one_of(values, st.just("AAH/")),
    "encoding": st.one_of(values, st.just("base64")),
})


def answer_of(text: str) -> Request | dict:
    """The request, or the error envelope, which must be valid UTF-8 JSON."""
    try:
        return parse_request(text, LIMIT)
    except BadRequest as exc:
        envelope = json.loads(exc.envelope.decode("utf-8"))
        assert envelope["type"] == "error" and envelope["code"] and envelope["reason"]
        assert set(envelope.get("request", {})) <= {"type", "channel", "ack"}
        return envelope


@settings(max_examples=examples(1000), deadline=None)
@given(fields)
def test_any_json_in_any_field_gets_a_request_or_an_error(request):
    answer = answer_of(json.dumps(request, ensure_ascii=True))  # lone surrogates as escapes
    if isinstance(answer, Request):
        assert answer.type == request["type"] and answer.channel == request["channel"]


@settings(max_examples=examples(500), deadline=None)
@given(st.one_of(values.map(json.dumps), st.text(max_size=200)))
def test_any_text_gets_a_request_or_an_error(text):
    answer_of(text)


flat_values = st.one_of(st.none(), st.booleans(), st.integers(-10**31, 10**31),
                       st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30))


@settings(max_examples=examples(500), deadline=None)
@given(st.dictionaries(st.text(max_size=8), flat_values, max_size=envelopes.MAX_MEMBERS),
       st.sampled_from([None, 0, 2]), st.booleans())
def test_a_flat_object_reads_as_json_reads_it(request, indent, ascii_only):
    """The request parser walks the top level itself: it must agree with json."""
    text = json.dumps(request, indent=indent, ensure_ascii=ascii_only)
    assert envelopes._load(text) == json.loads(text)


@settings(max_examples=examples(500), deadline=None)
@given(values.map(json.dumps))
def test_any_json_is_read_as_json_reads_it_or_refused(text):
    try:
        request = envelopes._load(text)
    except BadRequest:
        return
    assert request == json.loads(text)


def test_error_repeats_type_channel_and_ack_but_not_data():
    envelope = error_of('{"type":"publish","channel":"a","data":"x","encoding":"hex","ack":4}')
    assert envelope["request"] == {"type": "publish", "channel": "a", "ack": 4}


def test_server_envelopes():
    text = json.loads(envelopes.message(Message("a", ID, "hé".encode(), time=1.0)))
    assert text == {"type": "message", "channel": "a", "id": str(ID), "data": "hé", "time": 1000}
    binary = json.loads(envelopes.message(Message("a", ID, b"\x00", binary=True)))
    assert binary["encoding"] == "base64" and base64.b64decode(binary["data"]) == b"\x00"
    assert json.loads(envelopes.ack(3, id=str(ID))) == {"type": "ack", "ack": 3, "id": str(ID)}
    assert json.loads(envelopes.reset("a", ID)) == {"type": "reset", "channel": "a",
                                                    "cursor": str(ID)}


def test_error_repeats_only_what_is_valid():
    request = {"type": "publish", "channel": "a b", "data": "x", "ack": [1] * 3}
    assert error_of(json.dumps(request))["code"] == "invalid_request"  # a list: not flat
    request = {"type": "publish", "channel": "x" * 200, "data": 5, "ack": 2**60}
    assert error_of(json.dumps(request)).get("request") == {"type": "publish"}
    request = {"type": "dance", "channel": "a", "ack": 3}
    assert error_of(json.dumps(request))["request"] == {"channel": "a", "ack": 3}
