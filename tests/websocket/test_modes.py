"""What a WebSocket's messages may do: the per-connection policy (without sockets), and how
many publishes a connection may have in flight (on a real Redis)."""

import time
import uuid
from types import SimpleNamespace

import redis

from tests.support import wait_until
from wsrelay.broker.redis import RedisBroker
from wsrelay.hub import MessageServer
from wsrelay.ids import MessageId
from wsrelay.websocket.modes import MAX_IN_FLIGHT, Policy, RawMode
from wsrelay.websocket.protocol import InboundMessage


def test_a_policy_remembers_only_a_few_channels():
    """A wsrelay.v1 connection's memory of allowed channels stays small however many it
    names; a forgotten channel is simply checked again."""
    checked: list[str] = []
    policy = Policy(lambda channel, action: checked.append(channel), None,
                    max_subscriptions=10)
    for n in range(300):
        policy.check(f"c{n}", "subscribe")
        policy.check(f"c{n}", "subscribe")
    assert len(checked) == 300  # each once while remembered
    assert len(policy._allowed) <= 20
    policy.check("c0", "subscribe")
    assert checked[-1] == "c0"


def test_a_raw_publisher_reads_on_until_128_publishes_await_redis_then_waits(
    redis_server, channel
):
    """The connection goes on reading while its publishes are in flight, but a client whose
    publishes Redis has not answered yet is slowed at 128, not buffered without limit."""
    broker = RedisBroker(redis_server.url, history_size=1000, history_ttl=60.0,
                         prefix=f"test-{uuid.uuid4().hex[:10]}", timeout=5.0)
    hub = MessageServer(broker)
    closed: list[int] = []
    connection = SimpleNamespace(hub=hub, id="publisher",
                                 close=lambda code, reason: closed.append(code))
    mode = RawMode(channel, None, may_publish=True, rate=None)
    try:
        hub.publish(channel, "warm up")  # connected, scripts loaded
        redis.Redis.from_url(redis_server.url).execute_command("CLIENT", "PAUSE", 1500, "ALL")
        started = time.monotonic()
        for n in range(MAX_IN_FLIGHT):
            mode.receive(connection, InboundMessage(b"m%d" % n, False))
        assert time.monotonic() - started < 1.0  # read on, nothing answered yet
        assert mode.in_flight.count == MAX_IN_FLIGHT
        mode.receive(connection, InboundMessage(b"one more", False))  # waits for an answer
        assert time.monotonic() - started >= 1.0
        wait_until(lambda: mode.in_flight.count == 0, 10)
        page = broker.history(channel, MessageId(hub.publish(channel, "x").id.epoch, 1))
        assert [m.data for m in page.messages][:-1] == [
            b"m%d" % n for n in range(MAX_IN_FLIGHT)] + [b"one more"]
        assert closed == []
    finally:
        hub.stop()
        broker.close()
