"""The ``wsrelay.v1`` subprotocol end to end: many channels over one real WebSocket."""

import base64
import json
import time

import gevent
import pytest
import requests
from gevent.event import Event

from tests.support import Closed, Refused, ServerProcess, WSClient, untimed, wait_until
from wsrelay.websocket.envelopes import max_request_size

V1 = ["wsrelay.v1"]


class JsonClient:
    """A wsrelay.v1 client over WSClient: send requests, read envelopes."""

    def __init__(self, url: str, **kwargs) -> None:
        self.ws = WSClient(url, subprotocols=V1, **kwargs)
        self.acks = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.ws.close()

    def request(self, **fields) -> int:
        self.acks += 1
        self.ws.send(json.dumps({**fields, "ack": self.acks}))
        return self.acks

    def next(self, timeout: float = 5) -> dict:
        return json.loads(self.ws.recv(timeout=timeout))

    def until(self, kind: str, timeout: float = 5) -> dict:
        """The next envelope of ``kind``; fails if another kind comes first."""
        envelope = self.next(timeout)
        assert envelope["type"] == kind, envelope
        return envelope

    def call(self, **fields) -> dict:
        """Send a request and return its answer, an ack or an error naming it; what came
        before it is kept in ``before``."""
        number = self.request(**fields)
        before = []
        while True:
            envelope = self.next()
            if number in (envelope.get("ack"), envelope.get("request", {}).get("ack")):
                envelope["before"] = before
                return envelope
            before.append(envelope)

    def message_after(self, answer: dict) -> dict:
        """The message a publish delivered to us: before its ack (the broker delivered it
        at once) or after it."""
        messages = [e for e in answer["before"] if e["type"] == "message"]
        return messages[0] if messages else self.until("message")


def json_url(server, path="/ws") -> str:
    return server.ws_url + path


def test_subprotocol_is_negotiated_and_raw_mode_stays_the_default(server, channel):
    with JsonClient(json_url(server)) as client:
        assert client.ws.conn.getsubprotocol() == "wsrelay.v1"
    with WSClient(f"{server.ws_url}/ws/{channel}") as raw:
        assert raw.conn.getsubprotocol() is None
        raw.send("plain")
        assert raw.recv() == "plain"


def test_ws_without_channel_needs_the_subprotocol(server):
    with pytest.raises(Refused) as info:
        WSClient(f"{server.ws_url}/ws")
    assert info.value.status == 400
    assert b"channel_required" in info.value.body


def test_many_channels_over_one_socket_with_acks_and_ids(server, channel):
    a, b = f"{channel}-a", f"{channel}-b"
    with JsonClient(json_url(server)) as client:
        assert "cursor" in client.call(type="subscribe", channel=a)
        client.call(type="subscribe", channel=b)
        ack_a = client.call(type="publish", channel=a, data="to a")
        assert untimed([client.message_after(ack_a)]) == [
            {"type": "message", "channel": a, "id": ack_a["id"], "data": "to a"}]
        http_id = requests.post(f"{server.url}/publish/{b}", data="to b", timeout=5).json()["id"]
        assert untimed([client.until("message")]) == [
            {"type": "message", "channel": b, "id": http_id, "data": "to b"}]
        binary = client.call(type="publish", channel=b, data="AAH/", encoding="base64")
        message = client.message_after(binary)
        assert (message["id"], message["encoding"], message["data"]) == (
            binary["id"], "base64", "AAH/")
        poll = requests.get(f"{server.url}/poll/{a}", timeout=5,
                            params={"since": f"{ack_a['id'].split('-')[0]}-0", "timeout": 0})
        assert [m["id"] for m in poll.json()["messages"]] == [ack_a["id"]]


def test_unsubscribe_stops_one_channel_only(server, channel):
    a, b = f"{channel}-a", f"{channel}-b"
    with JsonClient(json_url(server)) as client:
        client.call(type="subscribe", channel=a)
        client.call(type="subscribe", channel=b)
        client.call(type="unsubscribe", channel=a)
        requests.post(f"{server.url}/publish/{a}", data="gone", timeout=5)
        requests.post(f"{server.url}/publish/{b}", data="kept", timeout=5)
        assert client.until("message")["data"] == "kept"


def test_each_channel_resumes_from_its_own_id(server, channel):
    a, b = f"{channel}-a", f"{channel}-b"
    ids = {name: [requests.post(f"{server.url}/publish/{name}", data=f"{name}{i}",
                                timeout=5).json()["id"] for i in range(3)] for name in (a, b)}
    with JsonClient(json_url(server)) as client:
        ack = client.call(type="subscribe", channel=a, since=ids[a][0])
        assert [m["data"] for m in ack["before"]] == [f"{a}1", f"{a}2"]
        ack = client.call(type="subscribe", channel=b, since=ids[b][1])
        assert [m["data"] for m in ack["before"]] == [f"{b}2"]


def test_a_gap_is_reported_with_reset(make_server, channel):
    server = make_server(env={"WSRELAY_HISTORY_SIZE": "2"})
    ids = [requests.post(f"{server.url}/publish/{channel}", data=str(i), timeout=5).json()["id"]
           for i in range(5)]
    with JsonClient(json_url(server)) as client:
        ack = client.call(type="subscribe", channel=channel, since=ids[0])
        reset, *replayed = ack["before"]
        assert reset == {"type": "reset", "channel": channel, "cursor": ids[-1]}
        assert [m["data"] for m in replayed] == ["3", "4"]


@pytest.mark.parametrize("frame,code", [
    ("{not json", "invalid_json"),
    ('{"type": "dance", "channel": "x"}', "unknown_type"),
    ('{"type": "subscribe", "channel": "bad name"}', "invalid_channel"),
    ('{"type": "publish", "channel": "x"}', "invalid_data"),
])
def test_bad_requests_get_errors_and_the_connection_stays(server, channel, frame, code):
    with JsonClient(json_url(server)) as client:
        client.ws.send(frame)
        error = client.until("error")
        assert error["code"] == code and error["reason"]
        client.ws.send(b"\x00binary")
        assert client.until("error")["code"] == "invalid_request"
        assert "cursor" in client.call(type="subscribe", channel=channel)  # still serving


SURROGATE = "\\ud800"  # a lone surrogate, escaped as JSON allows
MALFORMED = [
    ("[" * 100_000, "invalid_request"),                       # 100k nesting
    ('{"a":' * 100_000, "invalid_request"),
    ('{"type":"subscribe","channel":"x","n":[' + ",".join(["[]"] * 300_000) + "]}",
     "invalid_request"),                                       # ~1 MB of tiny lists
    ("{" + ",".join(f'"k{i}":{i}' for i in range(50_000)) + "}", "invalid_request"),
    ('{"type":"publish","channel":"x","data":"' + "\\u0000" * 150_000 + '","ack":' + "9" * 30
     + "}", "invalid_ack"),                                    # escapes, and a large number
    ('{"type":"subscribe","channel":"x","ack":' + "9" * 5000 + "}", "invalid_json"),
    ('{"type":"subscribe","channel":"x","ack":NaN}', "invalid_json"),
    ('"just a string"', "invalid_request"),
    ("null", "invalid_request"),
    ('{"type":["publish"],"channel":"x","data":"d"}', "invalid_request"),
    ('{"type":{"publish":1},"channel":"x"}', "invalid_request"),
    ('{"type":5,"channel":"x"}', "unknown_type"),
    ('{"type":null,"channel":"x"}', "unknown_type"),
    ('{"type":false,"channel":"x"}', "unknown_type"),
    (f'{{"type":"{SURROGATE}","channel":"x"}}', "unknown_type"),
    ('{"type":"subscribe","channel":["x"]}', "invalid_request"),
    ('{"type":"subscribe","channel":7}', "invalid_channel"),
    ('{"type":"subscribe","channel":null}', "invalid_channel"),
    (f'{{"type":"subscribe","channel":"{SURROGATE}"}}', "invalid_channel"),
    ('{"type":"subscribe","channel":"x","ack":"1"}', "invalid_ack"),
    ('{"type":"subscribe","channel":"x","ack":true}', "invalid_ack"),
    ('{"type":"subscribe","channel":"x","ack":1e400}', "invalid_ack"),
    ('{"type":"subscribe","channel":"x","ack":{"n":1}}', "invalid_request"),
    ('{"type":"subscribe","channel":"x","since":12}', "invalid_since"),
    ('{"type":"subscribe","channel":"x","since":["1-1"]}', "invalid_request"),
    (f'{{"type":"subscribe","channel":"x","since":"{SURROGATE}"}}', "invalid_since"),
    ('{"type":"publish","channel":"x","data":7}', "invalid_data"),
    ('{"type":"publish","channel":"x","data":false}', "invalid_data"),
    ('{"type":"publish","channel":"x","data":{"text":"hi"}}', "invalid_request"),
    (f'{{"type":"publish","channel":"x","data":"hi {SURROGATE}"}}', "invalid_data"),
    ('{"type":"publish","channel":"x","data":"\u00e9t\u00e9","encoding":"base64"}',
     "invalid_data"),
    ('{"type":"publish","channel":"x","data":"aGk=","encoding":["base64"]}', "invalid_request"),
    ('{"type":"publish","channel":"x","data":"aGk=","encoding":64}', "invalid_encoding"),
    (f'{{"type":"publish","channel":"x","data":"aGk=","encoding":"{SURROGATE}"}}',
     "invalid_encoding"),
]


def bystander(server, channel: str, stop: Event) -> tuple[gevent.Greenlet, Event]:
    """A second client's view while an attack runs: a message every 20 ms from one
    WebSocket to another until ``stop``; the greenlet returns (sent, delivery latencies),
    the event is set at the first delivery."""
    ready = Event()

    def run() -> tuple[int, list[float]]:
        latencies: list[float] = []
        with server.ws(f"/ws/{channel}?echo=0") as sender, server.ws(f"/ws/{channel}") as reader:
            def read() -> None:
                while True:
                    latencies.append(time.monotonic() - float(reader.recv(timeout=10)))
                    ready.set()

            reading = gevent.spawn(read)
            sent = 0
            while not stop.is_set():
                sender.send(repr(time.monotonic()))
                sent += 1
                gevent.sleep(0.02)
            wait_until(lambda: len(latencies) >= sent or reading.dead, timeout=10)
            reading.kill()
        return sent, latencies

    return gevent.spawn(run), ready


def test_malformed_requests_get_errors_and_cost_no_one_anything(server, channel):
    """Each malformed request gets an error envelope; the same socket then still publishes
    and subscribes; a bystander's messages all arrive, on time, throughout."""
    stop = Event()
    watcher, watching = bystander(server, f"{channel}-bystander", stop)
    assert watching.wait(timeout=10)
    try:
        with JsonClient(json_url(server), timeout=10) as client:
            client.call(type="subscribe", channel=channel)
            for n, (frame, code) in enumerate(MALFORMED):
                client.ws.send(frame)
                error = client.until("error", timeout=10)
                assert (error["code"], bool(error["reason"])) == (code, True), frame[:80]
                answer = client.call(type="publish", channel=channel, data=f"ok {n}")
                assert client.message_after(answer)["data"] == f"ok {n}"
                assert "cursor" in client.call(type="subscribe", channel=f"{channel}-{n}")
    finally:
        stop.set()
    sent, latencies = watcher.get(timeout=30)
    assert sent >= 2 and len(latencies) == sent
    assert sorted(latencies)[int(0.99 * (len(latencies) - 1))] < 0.5, max(latencies)
    assert "Traceback" not in server.log()


def test_a_v1_publish_carries_a_whole_message_as_base64(make_server, channel):
    limit = 3000
    server = make_server(env={"WSRELAY_MAX_MESSAGE_SIZE": str(limit),
                              "WSRELAY_SUBSCRIBER_BUFFER": str(1 << 20)})
    largest = bytes(range(256)) * (limit // 256) + b"x" * (limit % 256)
    with JsonClient(json_url(server)) as client:
        client.call(type="subscribe", channel=channel)
        answer = client.call(type="publish", channel=channel, encoding="base64",
                             data=base64.b64encode(largest).decode())
        assert base64.b64decode(client.message_after(answer)["data"]) == largest
        too_large = client.call(type="publish", channel=channel, data="y" * (limit + 1))
        assert too_large["code"] == "request_entity_too_large"
        assert "id" in client.call(type="publish", channel=channel, data="still open")
        client.ws.send(json.dumps({"type": "publish", "channel": channel,
                                   "data": "z" * (max_request_size(limit) + 1)}))
        with pytest.raises(Closed) as closed:  # over the frame limit: refused from its header
            while True:
                client.next()
        assert closed.value.code == 1009


def test_private_channel_needs_a_token_per_channel(make_server, channel):
    server = make_server(env={"WSRELAY_SECRET_KEY": "k" * 40})
    with JsonClient(json_url(server)) as client:
        client.request(type="subscribe", channel=f"private-{channel}")
        error = client.until("error")
        assert error["code"] == "token_required"
        assert error["request"]["channel"] == f"private-{channel}"
        assert "cursor" in client.call(type="subscribe", channel=channel)


def test_presence_counts_subscribers(server, channel):
    with JsonClient(json_url(server)) as one, JsonClient(json_url(server)) as two:
        one.call(type="subscribe", channel=channel)
        two.call(type="subscribe", channel=channel)
        with WSClient(f"{server.ws_url}/ws/{channel}"):
            assert wait_until(lambda: one.call(type="presence", channel=channel)["count"] == 3)
        two.ws.send(json.dumps({"type": "presence", "channel": channel}))
        assert two.until("presence") == {"type": "presence", "channel": channel, "count": 2}


def test_presence_across_workers_on_redis(redis_server, channel):
    env = {"WSRELAY_BROKER_URL": redis_server.url}
    first, second = ServerProcess.serve(env=env), ServerProcess.serve(env=env)
    try:
        with JsonClient(json_url(first)) as a, JsonClient(json_url(second)) as b:
            a.call(type="subscribe", channel=channel)
            b.call(type="subscribe", channel=channel)
            wait_until(lambda: a.call(type="presence", channel=channel)["count"] == 2,
                       timeout=10, message="presence did not reach 2 across workers")
            b.call(type="unsubscribe", channel=channel)
            wait_until(lambda: a.call(type="presence", channel=channel)["count"] == 1,
                       timeout=10, message="presence did not drop back to 1")
    finally:
        first.stop()
        second.stop()


def test_path_channel_is_subscribed_at_connect(server, channel):
    requests.post(f"{server.url}/publish/{channel}", data="old", timeout=5)
    first = requests.get(f"{server.url}/poll/{channel}", timeout=5,
                         params={"since": "0000000000000-0000000000", "timeout": 0}).json()
    with JsonClient(f"{server.ws_url}/ws/{channel}?since={first['messages'][0]['id']}") as c:
        requests.post(f"{server.url}/publish/{channel}", data="new", timeout=5)
        assert c.until("message")["data"] == "new"


def test_json_publish_over_the_rate_is_an_error_not_a_close(make_server, channel):
    server = make_server(env={"WSRELAY_LIMITS_EXEMPT": "", "WSRELAY_PUBLISH_RATE": "1",
                              "WSRELAY_PUBLISH_BURST": "2"})
    with JsonClient(json_url(server)) as client:
        answers = [client.call(type="publish", channel=channel, data=str(i)) for i in range(4)]
        codes = [a.get("code") for a in answers if a["type"] == "error"]
        assert "rate_limited" in codes
        assert "cursor" in client.call(type="subscribe", channel=channel)


def test_subscriptions_per_connection_are_capped(make_server, channel):
    server = make_server(env={"WSRELAY_MAX_SUBSCRIPTIONS": "2"})
    with JsonClient(json_url(server)) as client:
        client.call(type="subscribe", channel=f"{channel}-1")
        client.call(type="subscribe", channel=f"{channel}-2")
        assert client.call(type="subscribe", channel=f"{channel}-3")["code"] == (
            "too_many_subscriptions")
        client.call(type="subscribe", channel=f"{channel}-2")  # the same again is fine
