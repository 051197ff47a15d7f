"""One suite for every broker: MemoryBroker, RedisBroker and ClusterBroker must behave alike.

RedisBroker runs against a real redis-server, ClusterBroker against a real three-master
Redis Cluster; each test gets its own key prefix.
Delivery from Redis is asynchronous, so waits are bounded loops on gevent.sleep.
"""

from __future__ import annotations

import time
import uuid

import gevent
import pytest

from tests.support import FakeConnection
from wsrelay.broker import Broker, MemoryBroker
from wsrelay.hub import MessageServer, Subscription
from wsrelay.ids import MessageId
from wsrelay.message import Message
from wsrelay.websocket.encoders import RAW
from wsrelay.websocket.protocol import encode_frame

ALL_BYTES = bytes(range(256))
TEXT = "héllo wörld — 你好 ✓ 🚀"


class Recorder:
    """A deliver callback that keeps what it is given."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def __call__(self, message: Message) -> None:
        self.messages.append(message)

    def on(self, channel: str) -> list[Message]:
        return [m for m in self.messages if m.channel == channel]

    def wait_for(self, channel: str, count: int, timeout: float = 5.0) -> list[Message]:
        deadline = time.monotonic() + timeout
        while len(self.on(channel)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.on(channel))} of {count} messages delivered")
            gevent.sleep(0.01)
        return self.on(channel)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.e2e),
                        pytest.param("cluster", marks=pytest.mark.e2e)])
def make_broker(request):
    """``make_broker(history_size=..., history_ttl=...)``; Redis brokers of one test share
    a key prefix no other test uses (so two of them act as two workers)."""
    created: list[Broker] = []
    prefix = f"test-{uuid.uuid4().hex[:10]}"

    def make(history_size: int = 100, history_ttl: float = 60.0) -> Broker:
        if request.param == "memory":
            broker: Broker = MemoryBroker(history_size=history_size, history_ttl=history_ttl)
        else:
            from wsrelay.broker.redis import ClusterBroker, RedisBroker

            kind = ClusterBroker if request.param == "cluster" else RedisBroker
            broker = kind(make.redis_url, history_size=history_size, history_ttl=history_ttl,
                          prefix=prefix, timeout=2.0)
        created.append(broker)
        return broker

    make.kind, make.prefix = request.param, prefix
    if request.param != "memory":
        fixture = "redis_cluster" if request.param == "cluster" else "redis_server"
        make.redis_url = request.getfixturevalue(fixture).url
    yield make
    for broker in created:
        broker.close()


@pytest.fixture
def broker(make_broker) -> Broker:
    return make_broker()


def watch(broker: Broker, channel: str) -> None:
    """Watch as the hub does: watch, then read history (after which delivery is live)."""
    broker.watch(channel)
    broker.history(channel, None)


def ids(messages: list[Message]) -> list[MessageId]:
    return [m.id for m in messages]


def _redis(make_broker):
    import redis

    if make_broker.kind == "cluster":  # every node's keys
        host, port = make_broker.redis_url.split("//")[1].split(",")[0].split(":")
        return redis.RedisCluster(host, int(port))
    return redis.Redis.from_url(make_broker.redis_url)


def stored(make_broker, broker: Broker) -> set[str]:
    """The channels the broker keeps anything of: Redis keys, memory broker entries."""
    if make_broker.kind == "memory":
        return set(broker._channels) | set(broker._watched)
    with _redis(make_broker) as client:
        keys = [key.decode() for key in client.scan_iter(f"{make_broker.prefix}:{{*")
                if not key.endswith(b"}:origin")]  # a Cluster slot's own key, of no channel
    return {key.split("{", 1)[1].rsplit("}", 1)[0] for key in keys}


def lose_data(make_broker, broker: Broker) -> Broker:
    """A broker after losing its data: a memory broker restarted; every key of the Redis
    relay gone, as after a restart without persistence or a FLUSHALL."""
    if make_broker.kind == "memory":
        return make_broker()
    with _redis(make_broker) as client:
        for key in client.scan_iter(f"{make_broker.prefix}:*"):
            client.delete(key)
    return broker


# -- ids ------------------------------------------------------------------------------


def test_ids_increase_per_channel_and_differ_across_channels(broker, channel):
    a = [broker.publish(channel + "-a", b"x") for _ in range(5)]
    b = [broker.publish(channel + "-b", b"y") for _ in range(3)]
    more_a = broker.publish(channel + "-a", b"z")
    assert [m.id.seq for m in a] == [1, 2, 3, 4, 5]
    assert [m.id.seq for m in b] == [1, 2, 3]
    assert more_a.id.seq == 6 and more_a.id.epoch == a[0].id.epoch
    assert ids(a) == sorted(ids(a)) and len(set(ids(a))) == 5
    assert not set(ids(a)) & set(ids(b))
    assert [str(i) for i in ids(a)] == sorted(str(i) for i in ids(a))


def test_publish_returns_the_message_with_its_id(broker, channel):
    message = broker.publish(channel, b"hello", binary=False, sender="conn-1")
    assert message.channel == channel
    assert message.data == b"hello" and message.binary is False
    assert message.sender == "conn-1"
    assert message.time == pytest.approx(time.time(), abs=5)
    assert MessageId.parse(str(message.id)) == message.id
    assert broker.history(channel, None).cursor == message.id


# -- history --------------------------------------------------------------------------


def test_history_without_since_returns_no_messages_and_the_cursor(broker, channel):
    fresh = broker.history(channel, None)
    assert fresh.messages == [] and fresh.reset is False and fresh.cursor.seq == 0
    published = [broker.publish(channel, b"m%d" % i) for i in range(3)]
    page = broker.history(channel, None)
    assert page.messages == [] and page.reset is False
    assert page.cursor == published[-1].id


def test_cursor_of_a_fresh_channel_continues_without_gap_or_reset(broker, channel):
    cursor = broker.history(channel, None).cursor
    for _ in range(2):  # while nothing is published the cursor stays before any message
        page = broker.history(channel, cursor)
        assert page.messages == [] and page.reset is False and page.cursor.seq == 0
        assert page.cursor.epoch >= cursor.epoch
        cursor = page.cursor
        gevent.sleep(0.01)
    published = [broker.publish(channel, b"m%d" % i) for i in range(3)]
    page = broker.history(channel, cursor)
    assert page.reset is False
    assert ids(page.messages) == ids(published)


def test_a_poll_of_an_empty_channel_then_a_publish_misses_nothing(make_broker, channel):
    """The long-poll of a channel that never had a message stores nothing, yet its cursor
    still leads to the first message without a gap, from any worker."""
    reader = make_broker()
    writer = make_broker() if make_broker.kind != "memory" else reader  # another worker
    cursor = reader.history(channel, None).cursor
    assert cursor.seq == 0 and stored(make_broker, reader) == set()
    message = writer.publish(channel, b"first")
    page = reader.history(channel, cursor)
    assert page.reset is False and ids(page.messages) == [message.id]
    assert page.cursor == message.id


def test_reads_and_watches_of_unknown_channels_store_nothing(make_broker, channel):
    """A client naming channel after channel leaves nothing behind once it has left them:
    no key in Redis, no entry in the memory broker."""
    broker = make_broker()
    broker.start(Recorder())
    names = [f"{channel}-{n}" for n in range(50)]
    for name in names:
        broker.watch(name)
        cursor = broker.history(name, None).cursor
        broker.history(name, cursor)
        broker.history(name, MessageId(cursor.epoch - 10**9, 0))  # stale: a reset, no key
        broker.unwatch(name)
    broker.sweep()
    assert stored(make_broker, broker) == set()
    assert broker.status().get("watched", 0) == 0
    broker.publish(names[0], b"kept")  # a message does create state, for its TTL
    assert stored(make_broker, broker) == {names[0]}


def test_a_seq0_cursor_older_than_the_ttl_reports_reset(make_broker, channel):
    """A whole epoch may have come and expired since: the gap is reported."""
    broker = make_broker(history_ttl=0.3)
    cursor = broker.history(channel, None).cursor
    gevent.sleep(0.4)
    message = broker.publish(channel, b"late")
    page = broker.history(channel, cursor)
    assert page.reset is True and ids(page.messages) == [message.id]


def test_a_seq0_cursor_from_before_the_data_was_lost_reports_reset(make_broker, channel):
    """A memory broker that restarted, or a Redis that restarted empty or was flushed, may
    have lost an epoch before its TTL: a cursor from before that is not trusted."""
    before = make_broker()
    cursor = before.history(channel, None).cursor
    lost = before.publish(channel, b"lost")
    gevent.sleep(0.01)
    after = lose_data(make_broker, before)
    message = after.publish(channel, b"after")
    assert message.id.epoch > lost.id.epoch and message.id.seq == 1
    page = after.history(channel, cursor)
    assert page.reset is True and ids(page.messages) == [message.id]
    fresh = after.history(channel + "-other", None).cursor  # cursors issued since are fine
    other = after.publish(channel + "-other", b"x")
    assert ids(after.history(channel + "-other", fresh).messages) == [other.id]


def test_history_after_a_cursor_returns_exactly_the_newer_messages(broker, channel):
    published = [broker.publish(channel, b"m%d" % i) for i in range(6)]
    page = broker.history(channel, published[1].id)
    assert page.reset is False
    assert ids(page.messages) == ids(published[2:])
    assert [m.data for m in page.messages] == [b"m2", b"m3", b"m4", b"m5"]
    assert page.cursor == published[-1].id
    last = broker.history(channel, published[-1].id)
    assert last.messages == [] and last.reset is False and last.cursor == published[-1].id


class _CountingHistory(list):
    """Retained messages that count how many of them a read looks at."""

    touched = 0

    def __getitem__(self, index):
        self.touched += 1
        return super().__getitem__(index)

    def __iter__(self):
        for message in super().__iter__():
            self.touched += 1
            yield message

    def __reversed__(self):
        for message in super().__reversed__():
            self.touched += 1
            yield message


def test_a_cursor_behind_the_head_is_looked_up_not_scanned():
    """10,000 retained messages, a cursor 3 behind: the read looks at a few dozen of them
    (a bisection and the 3 it returns), not at every one; and it returns what a scan would
    for every cursor."""
    from wsrelay.broker.base import read_after

    epoch = 1_700_000_000_000
    messages = [Message("c", MessageId(epoch, seq), b"", False, None, 0.0)
                for seq in range(1, 10_001)]
    retained = _CountingHistory(messages)
    page = read_after(retained, epoch, 10_000, MessageId(epoch, 9_997), ttl_ms=1000)
    assert [m.id.seq for m in page.messages] == [9_998, 9_999, 10_000]
    assert retained.touched < 40
    short = messages[5:40]  # retained from seq 6
    for seq in range(5, 41):
        page = read_after(short, epoch, 40, MessageId(epoch, seq), ttl_ms=1000)
        assert page.messages == [m for m in short if m.id.seq > seq] and not page.reset


def test_binary_and_text_round_trip_byte_exact(make_broker, channel):
    publisher, receiver = make_broker(), make_broker()
    if make_broker.kind == "memory":
        receiver = publisher
    recorder = Recorder()
    receiver.start(recorder)
    watch(receiver, channel)
    binary = publisher.publish(channel, ALL_BYTES, binary=True)
    text = publisher.publish(channel, TEXT.encode("utf-8"), binary=False)
    empty = publisher.publish(channel, b"", binary=True)
    newline = publisher.publish(channel, b"line\nnext\r\n", binary=False, sender="s\n1")
    expected = [(ALL_BYTES, True, None), (TEXT.encode(), False, None), (b"", True, None),
                (b"line\nnext\r\n", False, "s\n1")]
    since = MessageId(binary.id.epoch, binary.id.seq - 1)
    for messages in (receiver.history(channel, since).messages,
                     recorder.wait_for(channel, 4)):
        assert [(m.data, m.binary, m.sender) for m in messages] == expected
        assert ids(messages) == [binary.id, text.id, empty.id, newline.id]
    assert recorder.on(channel)[1].data.decode("utf-8") == TEXT


# -- bounds ---------------------------------------------------------------------------


def test_history_size_drops_the_oldest_and_reports_reset(make_broker, channel):
    broker = make_broker(history_size=5)
    published = [broker.publish(channel, b"m%d" % i) for i in range(10)]
    page = broker.history(channel, published[0].id)
    assert page.reset is True
    assert ids(page.messages) == ids(published[5:])
    assert page.cursor == published[-1].id
    # The cursor just before the oldest retained message missed nothing.
    page = broker.history(channel, published[4].id)
    assert page.reset is False and ids(page.messages) == ids(published[5:])
    page = broker.history(channel, published[7].id)
    assert page.reset is False and ids(page.messages) == ids(published[8:])


def test_the_memory_broker_keeps_at_most_history_memory_bytes_over_every_channel(channel):
    """Past the byte bound the oldest messages of the process go first, whatever their
    channel; a cursor that needed them reads as a reset; what is kept is the newest."""
    from wsrelay.broker.memory import MESSAGE_OVERHEAD

    size = 10_000
    broker = MemoryBroker(history_size=1000, history_ttl=60,
                          history_memory=25 * (size + MESSAGE_OVERHEAD))
    channels = [f"{channel}-{n}" for n in range(4)]
    published = {name: [] for name in channels}
    for round_ in range(40):  # 160 messages of 10 kB: 6.4 times the bound
        for name in channels:
            published[name].append(broker.publish(name, bytes([round_]) * size))
    assert broker.status()["history_bytes"] <= 25 * (size + MESSAGE_OVERHEAD)
    kept = {name: broker.history(name, MessageId(published[name][0].id.epoch, 0))
            for name in channels}
    assert sum(len(page.messages) for page in kept.values()) in (24, 25)
    for name, page in kept.items():
        assert page.reset is True
        assert ids(page.messages) == ids(published[name][-len(page.messages):])
    # A reader that kept up misses nothing.
    page = broker.history(channels[0], published[channels[0]][-2].id)
    assert page.reset is False and ids(page.messages) == [published[channels[0]][-1].id]
    # Dropped entries do not pile up in the bookkeeping either.
    for round_ in range(5000):
        broker.publish(channels[round_ % 4], b"x" * size)
    assert len(broker._order) <= 2 * 25 + 1024


def test_messages_older_than_the_ttl_are_dropped_and_reported(make_broker, channel):
    broker = make_broker(history_ttl=1.0)
    old = [broker.publish(channel, b"old%d" % i) for i in range(2)]
    gevent.sleep(0.6)
    assert ids(broker.history(channel, MessageId(old[0].id.epoch, 0)).messages) == ids(old)
    gevent.sleep(0.6)  # the old messages are now 1.2 s old; the position is 0.6 s old
    assert broker.history(channel, MessageId(old[0].id.epoch, 0)).messages == []
    new = broker.publish(channel, b"new")
    assert new.id == MessageId(old[0].id.epoch, 3)  # the position survived: same epoch
    page = broker.history(channel, old[1].id)  # nothing was missed after this cursor
    assert page.reset is False and ids(page.messages) == [new.id]
    page = broker.history(channel, old[0].id)  # old[1] was missed
    assert page.reset is True and ids(page.messages) == [new.id]


def test_idle_channel_expires_and_old_cursor_reports_reset(make_broker, channel):
    broker = make_broker(history_ttl=0.3)
    old = broker.publish(channel, b"old")
    gevent.sleep(0.5)
    broker.sweep()
    new = broker.publish(channel, b"new")
    page = broker.history(channel, old.id)
    assert page.reset is True
    assert [m.data for m in page.messages] == [b"new"]
    assert page.cursor == new.id and new.id > old.id


# -- stale and bogus cursors ----------------------------------------------------------


def test_cursor_of_another_epoch_reports_reset(broker, channel):
    published = [broker.publish(channel, b"m%d" % i) for i in range(3)]
    epoch = published[0].id.epoch
    for since in (MessageId(epoch - 1, 1), MessageId(epoch + 1, 1), MessageId(1, 0)):
        page = broker.history(channel, since)
        assert page.reset is True, since
        assert ids(page.messages) == ids(published)
        assert page.cursor == published[-1].id


def test_cursor_from_the_future_reports_reset(broker, channel):
    published = [broker.publish(channel, b"m%d" % i) for i in range(3)]
    for seq in (4, 10**18):
        page = broker.history(channel, MessageId(published[0].id.epoch, seq))
        assert page.reset is True
        assert ids(page.messages) == ids(published)
        assert page.cursor == published[-1].id


# -- delivery -------------------------------------------------------------------------


def test_deliver_gets_watched_channels_in_order_and_not_unwatched(broker, channel):
    recorder = Recorder()
    broker.start(recorder)
    watched, other, marker = channel + "-w", channel + "-o", channel + "-m"
    watch(broker, watched)
    watch(broker, marker)
    sent = []
    for i in range(20):
        sent.append(broker.publish(watched, b"w%d" % i, sender=f"conn-{i % 3}"))
        broker.publish(other, b"o%d" % i)
    broker.publish(marker, b"after")
    recorder.wait_for(marker, 1)
    got = recorder.wait_for(watched, 20)
    assert got == sent
    assert [m.sender for m in got] == [f"conn-{i % 3}" for i in range(20)]
    assert recorder.on(other) == []

    broker.unwatch(watched)
    broker.publish(watched, b"unwatched")
    broker.publish(marker, b"after-2")
    recorder.wait_for(marker, 2)
    assert len(recorder.on(watched)) == 20


def test_watch_counts_and_rewatch(broker, channel):
    recorder = Recorder()
    broker.start(recorder)
    broker.watch(channel)
    broker.watch(channel)
    broker.unwatch(channel)  # still watched once
    broker.history(channel, None)
    first = broker.publish(channel, b"1")
    recorder.wait_for(channel, 1)
    broker.unwatch(channel)
    broker.watch(channel)  # unsubscribe and subscribe again without waiting in between
    broker.history(channel, None)
    second = broker.publish(channel, b"2")
    assert ids(recorder.wait_for(channel, 2)) == [first.id, second.id]


# -- two workers on one Redis, through the hub ----------------------------------------


@pytest.mark.parametrize("make_broker", [pytest.param("redis", marks=pytest.mark.e2e)],
                         indirect=True)  # only Redis is shared
def test_two_workers_see_one_order_and_the_same_ids(make_broker, channel):
    workers = [make_broker(), make_broker()]
    recorders = [Recorder(), Recorder()]
    hubs = [MessageServer(worker) for worker in workers]
    for worker, recorder in zip(workers, recorders, strict=True):
        hub_deliver = worker._deliver
        worker.start(lambda m, r=recorder, d=hub_deliver: (r(m), d(m)))
    subscribers = [FakeConnection("a"), FakeConnection("b")]
    for hub, subscriber in zip(hubs, subscribers, strict=True):
        hub.subscribe(Subscription(subscriber, channel, RAW), None)

    published: list[Message] = []

    def publish_from(hub: MessageServer, name: str) -> None:
        for i in range(25):
            published.append(hub.publish(channel, f"{name}{i}"))

    gevent.joinall([gevent.spawn(publish_from, hubs[0], "a"),
                    gevent.spawn(publish_from, hubs[1], "b")], timeout=20, raise_error=True)
    assert len(published) == 50
    in_order = sorted(published, key=lambda m: m.id)
    assert [m.id.seq for m in in_order] == list(range(1, 51))
    assert len({m.id.epoch for m in in_order}) == 1
    for recorder in recorders:
        assert [(m.id, m.data) for m in recorder.wait_for(channel, 50)] == [
            (m.id, m.data) for m in in_order
        ]
    expected_frames = [encode_frame(m.data, binary=False) for m in in_order]
    for subscriber in subscribers:
        assert subscriber.frames == expected_frames
    assert ids(workers[1].history(channel, MessageId(in_order[0].id.epoch, 0)).messages) == ids(
        in_order
    )
