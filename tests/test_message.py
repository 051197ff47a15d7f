import json

from wsrelay.ids import MessageId
from wsrelay.message import Message

ID = MessageId(1700000000000, 7)


def parse_sse(event: bytes) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    assert event.endswith(b"\n\n")
    for line in event[:-2].decode().split("\n"):
        name, _, value = line.partition(": ")
        fields.setdefault(name, []).append(value)
    return fields


def test_text_to_json():
    item = Message("c", ID, "héllo".encode(), time=1700000000.25).to_json()
    assert item == {"id": str(ID), "data": "héllo", "time": 1700000000250}


def test_binary_to_json_is_base64():
    item = Message("c", ID, bytes([0, 255]), binary=True, time=2.0).to_json()
    assert item == {"id": str(ID), "data": "AP8=", "encoding": "base64", "time": 2000}


def test_multiline_text_to_sse_keeps_lines():
    fields = parse_sse(Message("c", ID, b"one\ntwo\n").to_sse())
    assert fields["id"] == [str(ID)]
    assert "\n".join(fields["data"]) == "one\ntwo\n"
    assert "event" not in fields


def test_binary_and_carriage_return_travel_as_json_events():
    for message in (Message("c", ID, b"\x00\x01", binary=True), Message("c", ID, b"a\rb")):
        fields = parse_sse(message.to_sse())
        assert fields["event"] == ["json"]
        assert json.loads(fields["data"][0]) == message.to_json()


def test_as_json_sends_text_as_a_json_event_with_its_time():
    message = Message("c", ID, b"plain", time=3.5)
    fields = parse_sse(message.to_sse(as_json=True))
    assert fields["event"] == ["json"]
    assert json.loads(fields["data"][0]) == {"id": str(ID), "data": "plain", "time": 3500}
