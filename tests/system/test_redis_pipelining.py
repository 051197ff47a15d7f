"""Redis at memory speed, kept exact: floods of publishes through real servers on a real Redis.

A worker sends its publishes to Redis in pipelines (``wsrelay/broker/redis/commands.py``)
and a WebSocket keeps reading while its publishes are in flight. These tests check what a
user would: nothing a flooding publisher sent is lost or reordered for subscribers on
either server, each publish gets its own answer (one that Redis refuses costs its
neighbours nothing), and when Redis dies under the flood every publish is answered (an
error, never a hang, never an ack for what was not stored) and delivery resumes.
"""

from __future__ import annotations

import json
import time

import gevent
import pytest
import redis
import requests
from gevent.event import Event

from tests.support import Closed, ServerProcess, WSClient, wait_until
from wsrelay.ids import MessageId

pytestmark = pytest.mark.e2e  # starts servers (and, for faults, a redis-server) itself

FLOOD = 3000


@pytest.fixture
def start():
    started: list[ServerProcess] = []

    def serve(url: str) -> ServerProcess:
        started.append(ServerProcess.serve(env={"WSRELAY_BROKER_URL": url}))
        return started[-1]

    yield serve
    for server in started:
        server.stop()


class V1Client:
    """A ``wsrelay.v1`` client that sends without waiting; a greenlet collects what comes back."""

    def __init__(self, server: ServerProcess) -> None:
        self.ws = WSClient(f"{server.ws_url}/ws", subprotocols=["wsrelay.v1"], timeout=10)
        self.answers: dict[int, dict] = {}
        self.closed: Closed | None = None
        self._arrived = Event()
        self._reader = gevent.spawn(self._read)

    def _read(self) -> None:
        while True:
            try:
                envelope = json.loads(self.ws.recv(timeout=60))
            except Closed as closed:
                self.closed = closed
                return
            ack = envelope.get("ack", envelope.get("request", {}).get("ack"))
            if ack is not None:
                self.answers[ack] = envelope
                self._arrived.set()

    def publish(self, channel: str, data: str, ack: int) -> None:
        self.ws.send(json.dumps({"type": "publish", "channel": channel, "data": data,
                                 "ack": ack}))

    def wait_answers(self, acks: range | list[int], timeout: float) -> None:
        wait_until(lambda: all(a in self.answers for a in acks), timeout,
                   message=f"{sum(a not in self.answers for a in acks)} publishes unanswered")

    def close(self) -> None:
        self._reader.kill()
        self.ws.close()


def collect(ws: WSClient, count: int, timeout: float = 30) -> list[str]:
    """``count`` raw messages, each within ``timeout``."""
    return [str(ws.recv(timeout=timeout)) for _ in range(count)]


def cursor(server: ServerProcess, channel: str) -> str:
    return requests.get(f"{server.url}/poll/{channel}", params={"timeout": 0},
                        timeout=10).json()["cursor"]


def test_a_flooding_publisher_loses_nothing_and_keeps_order_on_both_servers(
    start, redis_server, channel
):
    a, b = start(redis_server.url), start(redis_server.url)
    begin = cursor(a, channel)
    subscribers = [a.ws(f"/ws/{channel}?since={begin}"), b.ws(f"/ws/{channel}?since={begin}")]
    readers = [gevent.spawn(collect, ws, FLOOD) for ws in subscribers]
    trips_before = a.health()["round_trips"]
    publisher = V1Client(a)
    try:
        for n in range(FLOOD):
            publisher.publish(channel, f"m{n}", n)
        publisher.wait_answers(range(FLOOD), 60)
    finally:
        publisher.close()
    answers = [publisher.answers[n] for n in range(FLOOD)]
    assert all(answer["type"] == "ack" for answer in answers), answers[:3]
    ids = [MessageId.parse(answer["id"]) for answer in answers]
    assert len({i.epoch for i in ids}) == 1
    assert [i.seq for i in ids] == list(range(ids[0].seq, ids[0].seq + FLOOD))  # in send order
    gevent.joinall(readers, timeout=60, raise_error=True)
    expected = [f"m{n}" for n in range(FLOOD)]
    for reader, ws in zip(readers, subscribers, strict=True):
        assert reader.value == expected  # every one, once, in order, on both servers
        ws.close()
    # The flood went to Redis in pipelines: far fewer round trips than publishes.
    trips = a.health()["round_trips"] - trips_before
    assert trips < FLOOD / 4, trips


def test_each_publish_gets_its_own_answer_when_redis_refuses_a_neighbour(
    start, redis_server, channel
):
    server = start(redis_server.url)
    broken = f"{channel}-broken"
    # A key of the wrong type: Redis answers the publish script for this channel with an error.
    redis.Redis.from_url(redis_server.url).set(f"wsrelay:{{{broken}}}:log", "not a stream")
    subscriber = server.ws(f"/ws/{channel}?since={cursor(server, channel)}")
    publisher = V1Client(server)
    try:
        for n in range(200):  # sent at once: they share pipelines
            publisher.publish(broken if n % 3 == 1 else channel, f"m{n}", n)
        publisher.wait_answers(range(200), 30)
        good = [n for n in range(200) if n % 3 != 1]
        for n in range(200):
            answer = publisher.answers[n]
            if n in good:
                assert answer["type"] == "ack" and "id" in answer, answer
            else:
                assert answer["type"] == "error" and answer["code"] == "broker_unavailable"
                assert answer["request"] == {"type": "publish", "channel": broken, "ack": n}
        seqs = [MessageId.parse(publisher.answers[n]["id"]).seq for n in good]
        assert seqs == list(range(seqs[0], seqs[0] + len(good)))
        assert collect(subscriber, len(good)) == [f"m{n}" for n in good]
        assert publisher.closed is None  # the connection stays open
    finally:
        publisher.close()
        subscriber.close()


def test_redis_killed_under_a_flood_answers_every_publish_and_delivery_resumes(
    start, own_redis, channel
):
    a, b = start(own_redis.url), start(own_redis.url)
    bystander = b.ws(f"/ws/{channel}?since={cursor(b, channel)}")
    publisher = V1Client(a)
    sent = 0
    stop = Event()

    def flood() -> None:
        nonlocal sent
        while not stop.is_set():
            for _ in range(50):
                publisher.publish(channel, f"m{sent}", sent)
                sent += 1
            gevent.sleep(0.005)

    flooding = gevent.spawn(flood)
    try:
        wait_until(lambda: len(publisher.answers) >= 1000, 30)
        own_redis.proc.kill()  # SIGKILL, mid-flood
        killed = time.monotonic()
        wait_until(lambda: any(answer["type"] == "error"
                               for answer in list(publisher.answers.values())), 15)
        refused_after = time.monotonic() - killed
        stop.set()
        flooding.get(timeout=10)
        # Every publish is answered, none hangs: acks for what Redis stored, errors for the rest.
        publisher.wait_answers(range(sent), 20)
        kinds = {answer["type"] for answer in publisher.answers.values()}
        assert kinds == {"ack", "error"}
        errors = [answer for answer in publisher.answers.values() if answer["type"] == "error"]
        assert {error["code"] for error in errors} == {"broker_unavailable"}
        assert publisher.closed is None
        assert refused_after < 10

        own_redis.restart()
        wait_until(lambda: a.health()["ok"] and b.health()["ok"], 20)
        publisher.publish(channel, "after", sent)
        publisher.wait_answers([sent], 10)
        assert publisher.answers[sent]["type"] == "ack"
        # The bystander on the other server gets what follows, whatever the kill cost it.
        while (message := bystander.recv(timeout=10)) != "after":
            assert str(message).startswith("m")
    finally:
        stop.set()
        publisher.close()
        bystander.close()


def test_a_redis_restart_under_a_flood_loses_nothing_that_was_acknowledged(
    start, own_redis, channel
):
    a, b = start(own_redis.url), start(own_redis.url)
    begin = cursor(a, channel)
    subscribers = [a.ws(f"/ws/{channel}?since={begin}"), b.ws(f"/ws/{channel}?since={begin}")]
    received: list[list[str]] = [[], []]

    def read(ws: WSClient, into: list[str]) -> None:
        while True:
            into.append(str(ws.recv(timeout=60)))

    readers = [gevent.spawn(read, ws, into) for ws, into in zip(subscribers, received,
                                                                  strict=True)]
    publisher = V1Client(a)
    sent = 0

    def burst(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            publisher.publish(channel, f"m{sent}", sent)
            sent += 1

    try:
        burst(500)
        wait_until(lambda: len(publisher.answers) >= 300, 30)
        own_redis.stop()  # a clean stop while publishes are in flight
        burst(200)
        publisher.wait_answers(range(sent), 20)
        own_redis.restart()
        wait_until(lambda: a.health()["ok"] and b.health()["ok"], 20)
        burst(300)
        publisher.wait_answers(range(sent), 30)
        acked = [f"m{n}" for n in range(sent) if publisher.answers[n]["type"] == "ack"]
        assert 0 < len(acked) < sent  # some were refused while Redis was down
        wait_until(lambda: all(acked[-1] in got for got in received), 30)
        sent_texts = {f"m{n}" for n in range(sent)}
        for got in received:
            assert len(got) == len(set(got)) and set(got) <= sent_texts  # no duplicate
            order = {text: index for index, text in enumerate(got)}
            assert all(text in order for text in acked)  # nothing acknowledged was lost
            assert [order[text] for text in acked] == sorted(order[text] for text in acked)
    finally:
        publisher.close()
        for reader in readers:
            reader.kill()
        for ws in subscribers:
            ws.close()
