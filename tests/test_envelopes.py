import base64
import json

import pytest

from wsrelay import envelopes
from wsrelay.envelopes import BadRequest, Request, parse_request
from wsrelay.ids import MessageId
from wsrelay.message import Message

ID = MessageId(1700000000000, 3)


def error_of(text):
    with pytest.raises(BadRequest) as info:
        parse_request(text)
    return json.loads(info.value.envelope)


def test_requests_parse():
    subscribe = {"type": "subscribe", "channel": "a", "since": str(ID), "ack": 1}
    assert parse_request(json.dumps(subscribe)) == Request("subscribe", "a", 1, ID)
    assert parse_request('{"type":"unsubscribe","channel":"a"}') == Request("unsubscribe", "a")
    assert parse_request('{"type":"publish","channel":"a","data":"hé"}') == \
        Request("publish", "a", data="hé".encode())
    b64 = base64.b64encode(b"\x00\xff").decode()
    publish = {"type": "publish", "channel": "a", "data": b64, "encoding": "base64", "ack": 7}
    assert parse_request(json.dumps(publish)) == Request(
        "publish", "a", 7, data=b"\x00\xff", binary=True
    )
    assert parse_request('{"type":"presence","channel":"a"}').type == "presence"


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


def test_error_repeats_type_channel_and_ack_but_not_data():
    envelope = error_of('{"type":"publish","channel":"a","data":"x","encoding":"hex","ack":4}')
    assert envelope["request"] == {"type": "publish", "channel": "a", "ack": 4}


def test_server_envelopes():
    text = json.loads(envelopes.message(Message("a", ID, "hé".encode())))
    assert text == {"type": "message", "channel": "a", "id": str(ID), "data": "hé"}
    binary = json.loads(envelopes.message(Message("a", ID, b"\x00", binary=True)))
    assert binary["encoding"] == "base64" and base64.b64decode(binary["data"]) == b"\x00"
    assert json.loads(envelopes.ack(3, id=str(ID))) == {"type": "ack", "ack": 3, "id": str(ID)}
    assert json.loads(envelopes.reset("a", ID)) == {"type": "reset", "channel": "a",
                                                    "cursor": str(ID)}
