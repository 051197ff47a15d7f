"""RedisBroker specifics: several workers on one Redis, key layout, faults and recovery.

Everything runs against a real redis-server (the ``redis_server`` fixture); faults
are real too: the server is stopped and restarted, connections are killed.
"""

from __future__ import annotations

import subprocess
import time
import uuid

import gevent
import pytest
import redis

from tests.broker.test_broker import Recorder, ids
from tests.support import RedisServer, free_port, wait_until
from wsrelay.broker import BrokerUnavailable
from wsrelay.broker.redis import RedisBroker, redact
from wsrelay.broker.redis.broker import CONTROL_CHANNEL
from wsrelay.broker.redis.commands import FULL_BATCH, SEND_DELAY
from wsrelay.config import OPTIONS
from wsrelay.ids import MessageId


@pytest.fixture
def make_broker(redis_server):
    """``make_broker(**options)``: RedisBrokers sharing one fresh key prefix; closed after."""
    created: list[RedisBroker] = []
    prefix = f"test-{uuid.uuid4().hex[:10]}"

    def make(**options) -> RedisBroker:
        options = {"history_size": 100, "history_ttl": 60.0, "prefix": prefix, "timeout": 2.0,
                   **options}
        broker = RedisBroker(options.pop("url", redis_server.url), **options)
        created.append(broker)
        return broker

    make.prefix = prefix
    yield make
    for broker in created:
        broker.close()


@pytest.fixture
def client(redis_server):
    connection = redis.Redis.from_url(redis_server.url)
    yield connection
    connection.close()


def watch(broker: RedisBroker, channel: str) -> None:
    broker.watch(channel)
    broker.history(channel, None)


def test_a_second_instance_continues_the_same_sequence(make_broker, channel):
    first, second = make_broker(), make_broker()
    a = [first.publish(channel, b"a%d" % i) for i in range(3)]
    b = [second.publish(channel, b"b%d" % i) for i in range(2)]
    c = first.publish(channel, b"c")
    assert [m.id.seq for m in (*a, *b, c)] == [1, 2, 3, 4, 5, 6]
    assert {m.id.epoch for m in (*a, *b, c)} == {a[0].id.epoch}
    assert first.history(channel, None).cursor == second.history(channel, None).cursor == c.id
    page = second.history(channel, a[0].id)
    assert page.reset is False and [m.data for m in page.messages] == [
        b"a1", b"a2", b"b0", b"b1", b"c"]


def test_keys_of_a_channel_share_one_hash_tag_and_expire(make_broker, client, channel):
    broker = make_broker(history_ttl=0.5)
    first = broker.publish(channel, b"x")
    base = f"{make_broker.prefix}:{{{channel}}}"
    state, log = f"{base}:state", f"{base}:log"
    master = f"{make_broker.prefix}:master"  # a key of no channel: the master's replication id
    assert sorted(client.keys(f"{make_broker.prefix}:*")) == sorted(
        [state.encode(), log.encode(), master.encode()])
    replid = client.info("replication")["master_replid"].encode()
    assert client.get(master) == replid
    assert client.hgetall(state) == {b"epoch": str(first.id.epoch).encode(), b"seq": b"1",
                                     b"master": replid}
    assert client.xrange(log)[0][0] == f"{first.id.epoch}-1".encode()
    assert 0 < client.pttl(state) <= 500 and 0 < client.pttl(log) <= 500
    wait_until(lambda: not client.exists(state, log), 5)
    second = broker.publish(channel, b"y")
    assert second.id.epoch > first.id.epoch and second.id.seq == 1


def test_unreachable_redis_fails_fast_with_broker_unavailable(make_broker, channel):
    broker = make_broker(url=f"redis://127.0.0.1:{free_port()}/0", timeout=1.0)
    broker.start(Recorder())
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        broker.publish(channel, b"x")
    with pytest.raises(BrokerUnavailable):
        broker.history(channel, None)
    assert time.monotonic() - started < 3
    status = broker.status()
    assert status["ok"] is False and status["broker"] == "redis" and status["error"]


def test_status_never_shows_the_password(make_broker):
    assert redact("redis://:s3cret@host:6379/0") == "redis://host:6379/0"
    assert redact("rediss://user:s3cret@host:6380/1") == "rediss://user@host:6380/1"
    assert redact("unix:///tmp/r.sock?db=2&password=s3cret") == "unix:///tmp/r.sock?db=2"
    assert redact("redis://localhost:6379") == "redis://localhost:6379"
    broker = make_broker(url="redis://:s3cret@127.0.0.1:1/0")
    assert "s3cret" not in str(broker.status())


def test_redis_restart_is_reported_and_the_listener_comes_back(
    make_broker, redis_server, channel
):
    broker, other = make_broker(), make_broker()
    recorder = Recorder()
    broker.start(recorder)
    watch(broker, channel)
    before = broker.publish(channel, b"before")
    recorder.wait_for(channel, 1)
    assert broker.status()["ok"] is True

    redis_server.stop()
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            broker.publish(channel, b"lost")
        with pytest.raises(BrokerUnavailable):
            broker.history(channel, before.id)
        assert time.monotonic() - started < 6
        wait_until(lambda: broker.status()["ok"] is False, 5)
        assert broker.status()["listener"] == "disconnected"
    finally:
        redis_server.restart()

    wait_until(lambda: broker.status()["listener"] == "connected", 15,
               message=f"listener did not reconnect: {broker.status()}")
    after = other.publish(channel, b"after")  # another worker, after the restart
    assert [m.data for m in recorder.wait_for(channel, 2, timeout=10)] == [b"before", b"after"]
    page = broker.history(channel, before.id)  # Redis lost the data: a new epoch
    assert page.reset is True and ids(page.messages) == [after.id]
    assert after.id.epoch > before.id.epoch
    assert broker.publish(channel, b"again").id == MessageId(after.id.epoch, 2)
    assert broker.status()["ok"] is True and broker.status()["reconnects"] >= 1


def test_listener_recovers_what_was_published_while_it_was_disconnected(
    make_broker, client, channel
):
    publisher = make_broker()
    listener = make_broker(backoff=(1.0, 2.0))  # waits at least 0.5 s before reconnecting
    recorder = Recorder()
    listener.start(recorder)
    busy, quiet = channel + "-busy", channel + "-quiet"
    watch(listener, busy)
    watch(listener, quiet)
    before = [publisher.publish(busy, b"before%d" % i) for i in range(3)]
    recorder.wait_for(busy, 3)

    entries = [c for c in client.client_list() if c["name"] == listener.listener_name]
    assert len(entries) == 1
    client.client_kill_filter(_id=entries[0]["id"])
    started = time.monotonic()
    during = [publisher.publish(busy, b"during%d" % i) for i in range(5)]
    during_quiet = [publisher.publish(quiet, b"q%d" % i) for i in range(2)]
    assert time.monotonic() - started < 0.5, "published too slowly to be sure they were missed"

    got = recorder.wait_for(busy, 8, timeout=10)
    assert ids(got) == ids(before + during)
    assert ids(recorder.wait_for(quiet, 2)) == ids(during_quiet)
    assert listener.status()["reconnects"] >= 1

    after = publisher.publish(busy, b"after")
    assert ids(recorder.wait_for(busy, 9)) == ids([*before, *during, after])
    gevent.sleep(0.2)
    assert len(recorder.on(busy)) == 9  # nothing delivered twice


def test_history_of_a_watched_channel_waits_for_the_subscription(make_broker, client, channel):
    publisher = make_broker()
    listener = make_broker(backoff=(1.0, 2.0))
    recorder = Recorder()
    listener.start(recorder)
    watch(listener, channel)
    entries = [c for c in client.client_list() if c["name"] == listener.listener_name]
    client.client_kill_filter(_id=entries[0]["id"])
    wait_until(lambda: listener.status()["listener"] == "disconnected", 5)
    started = time.monotonic()
    cursor = listener.history(channel, None).cursor  # waits until subscribed again
    assert time.monotonic() - started > 0.2
    message = publisher.publish(channel, b"live")
    assert message.id > cursor
    assert ids(recorder.wait_for(channel, 1)) == [message.id]


def test_history_returns_only_once_what_it_read_was_delivered_live(make_broker, channel):
    """A message published just after the subscription is both in a history read and on its
    way over pub/sub: the reader must not go live before it is handed over, or its
    subscriber would get it twice (once from history, once live)."""
    publisher, listener = make_broker(), make_broker()
    delivered: list[bytes] = []

    def slow_deliver(message) -> None:
        delivered.append(message.data)
        if message.data == b"slow":
            gevent.sleep(0.5)  # the listener is busy: "in flight" stays in its socket

    listener.start(slow_deliver)
    before = listener.history(channel, None).cursor
    watch(listener, channel)
    publisher.publish(channel, b"slow")
    wait_until(lambda: delivered == [b"slow"], 5)
    in_flight = publisher.publish(channel, b"in flight")
    page = listener.history(channel, before)
    assert [m.data for m in page.messages] == [b"slow", b"in flight"]
    assert page.cursor == in_flight.id
    assert delivered == [b"slow", b"in flight"]  # already handed over when history returned
    publisher.publish(channel, b"after")
    wait_until(lambda: len(delivered) == 3, 5)
    gevent.sleep(0.2)
    assert delivered == [b"slow", b"in flight", b"after"]


def test_many_greenlets_publishing_at_once_get_distinct_gapless_ids(make_broker, channel):
    broker = make_broker(max_pending=16)  # most of them wait for room

    def publish_some(n: int) -> list[MessageId]:
        return [broker.publish(channel, b"%d" % n).id for _ in range(5)]

    jobs = [gevent.spawn(publish_some, n) for n in range(100)]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    seqs = sorted(seq for job in jobs for _, seq in job.value)
    assert seqs == list(range(1, 501))


def test_publishes_queued_behind_one_of_their_channel_share_its_script_call(
        make_broker, client, channel):
    """A flood from many greenlets costs far fewer script calls than publishes; each publish
    still gets its own id, its data in the history, and each greenlet's order is kept."""
    broker = make_broker()
    broker.publish(channel, b"first")  # connected: what follows queues behind round trips

    def publish_some(n: int) -> list[tuple[MessageId, bytes]]:
        sent = []
        for i in range(20):
            data = b"%d-%d" % (n, i)
            sent.append((broker.publish_async(channel, data, sender=f"s{n}"), data))
        return [(publishing.result(5).id, data) for publishing, data in sent]

    commands = broker.status()["commands"]
    jobs = [gevent.spawn(publish_some, n) for n in range(50)]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    answers = [answer for job in jobs for answer in job.value]
    assert sorted(seq for (_, seq), _ in answers) == list(range(2, 1002))
    for job in jobs:  # each greenlet's publishes in its order
        assert [mid for mid, _ in job.value] == sorted(mid for mid, _ in job.value)
    assert broker.status()["commands"] - commands < 1000 / 8
    log = f"{make_broker.prefix}:{{{channel}}}:log"
    stored = {entry_id.decode(): fields[b"m"] for entry_id, fields in client.xrange(log)}
    retained = {f"{mid.epoch}-{mid.seq}": data for mid, data in answers
                if f"{mid.epoch}-{mid.seq}" in stored}
    assert len(retained) == 100  # history_size
    assert all(stored[mid].endswith(data) for mid, data in retained.items())


def steady_stream(broker: RedisBroker, channel: str, count: int) -> tuple[list, int, int]:
    """Publish ``count`` messages a millisecond apart, as a busy worker's clients do: their
    answers, and the round trips and script calls they took."""
    before = broker.status()
    pending = []
    for i in range(count):
        pending.append(broker.publish_async(channel, b"%d" % i))
        gevent.sleep(0.001)
    messages = [publishing.result(5) for publishing in pending]
    after = broker.status()
    return (messages, after["round_trips"] - before["round_trips"],
            after["commands"] - before["commands"])


def test_a_steady_stream_of_publishes_shares_round_trips_and_script_calls(make_broker, channel):
    """A busy worker gathers its publishes for the send delay between round trips: a round
    trip and a script call carry several, each still answered with its own id, in order,
    and every one is delivered, in order."""
    recorder = Recorder()
    broker = make_broker(send_delay=0.05)
    broker.start(recorder)
    watch(broker, channel)
    messages, round_trips, calls = steady_stream(broker, channel, 100)
    assert [m.id.seq for m in messages] == list(range(1, 101))
    assert round_trips < 50 and calls < 50  # one each per publish without the delay
    wait_until(lambda: len(recorder.messages) == 100, 5)
    assert [m.data for m in recorder.messages] == [b"%d" % i for i in range(100)]


def test_without_a_send_delay_each_publish_of_a_steady_stream_has_its_round_trip(
        make_broker, channel):
    messages, round_trips, _ = steady_stream(make_broker(send_delay=0), channel, 100)
    assert [m.id.seq for m in messages] == list(range(1, 101))
    assert round_trips > 50


def test_a_command_after_a_quiet_spell_goes_at_once_the_next_waits_for_the_window(
        make_broker, channel):
    broker = make_broker(send_delay=1.0)
    broker.publish(channel, b"connected")
    gevent.sleep(1.1)  # quiet for longer than the window
    started = time.monotonic()
    broker.publish(channel, b"lone")
    lone = time.monotonic() - started
    started = time.monotonic()
    broker.publish(channel, b"right after")
    right_after = time.monotonic() - started
    assert lone < 0.5 < right_after  # about 0 and about the window


def test_a_full_batch_goes_at_once_whatever_the_window(make_broker, channel):
    """A flood does not wait for the send delay: its publishes in flight are bounded (128
    per connection), so waiting would only cap its rate."""
    broker = make_broker(send_delay=1.0)
    broker.publish(channel, b"connected")
    gevent.sleep(1.1)
    broker.publish(channel, b"lone")  # goes at once: the window starts
    started = time.monotonic()
    pending = [broker.publish_async(channel, b"%d" % k) for k in range(FULL_BATCH)]
    messages = [publishing.result(5) for publishing in pending]
    assert time.monotonic() - started < 0.5  # not the window's 1 s
    assert [m.id.seq for m in messages] == list(range(3, 3 + FULL_BATCH))


def test_the_send_delay_option_defaults_to_the_brokers_own():
    (option,) = [o for o in OPTIONS if o.name == "WSRELAY_REDIS_SEND_DELAY"]
    assert option.default == SEND_DELAY


def test_publishes_to_other_channels_in_between_keep_every_order(make_broker, channel):
    """Joining only the call queued last: a publisher's A1, B1, A2 are stored in that order."""
    recorder = Recorder()
    broker = make_broker()
    broker.start(recorder)
    other = f"{channel}-b"
    for name in (channel, other):
        watch(broker, name)
    names = [channel, other, channel] * 30
    pending = [broker.publish_async(name, b"%d" % k) for k, name in enumerate(names)]
    messages = [publishing.result(5) for publishing in pending]
    assert [m.id.seq for m in messages if m.channel == channel] == list(range(1, 61))
    assert [m.id.seq for m in messages if m.channel == other] == list(range(1, 31))
    wait_until(lambda: len(recorder.messages) == 90, 5)
    for name in (channel, other):
        assert [m.data for m in recorder.messages if m.channel == name] == [
            m.data for m in messages if m.channel == name]


def test_a_new_epoch_comes_after_any_epoch_left_in_the_history(make_broker, client, channel):
    broker = make_broker()
    log = f"{make_broker.prefix}:{{{channel}}}:log"
    client.xadd(log, {"t": "0", "m": "left over"}, id="9999999999999-7")  # no state
    message = broker.publish(channel, b"x")
    assert message.id == MessageId(10**13, 1)
    assert [entry_id for entry_id, _ in client.xrange(log)] == [b"10000000000000-1"]


def test_heartbeat_detects_a_redis_that_stopped_answering(make_broker, client, channel):
    broker = make_broker(heartbeat=0.2, backoff=(0.05, 0.2))
    recorder = Recorder()
    broker.start(recorder)
    watch(broker, channel)
    broker.unwatch(channel)  # PING outside subscribed mode too
    gevent.sleep(0.5)
    watch(broker, channel)
    gevent.sleep(0.5)  # PING in subscribed mode
    assert broker.status()["reconnects"] == 0
    client.execute_command("CLIENT", "PAUSE", "1500", "ALL")
    wait_until(lambda: broker.status()["listener"] == "disconnected", 3,
               message="the silent connection was not noticed")
    wait_until(lambda: broker.status()["ok"] is True, 10)
    message = broker.publish(channel, b"after")
    assert ids(recorder.wait_for(channel, 1)) == [message.id]


def test_a_redis_owing_answers_for_the_timeout_fails_what_waits_and_is_dropped(
        make_broker, client, channel):
    """No timer per read: a watchdog tells the silence, fails every publish in flight within
    about the timeout, and the next publish connects again."""
    broker = make_broker(timeout=0.5)
    broker.publish(channel, b"before")
    client.execute_command("CLIENT", "PAUSE", "2500", "ALL")
    started = time.monotonic()
    pending = [broker.publish_async(channel, b"%d" % i) for i in range(5)]
    for publishing in pending:
        with pytest.raises(BrokerUnavailable, match="owed answers"):
            publishing.result(5)
    assert 0.4 < time.monotonic() - started < 1.5
    assert broker.status()["ok"] is False
    wait_until(lambda: time.monotonic() - started > 2.6, 5)
    assert broker.publish(channel, b"after").id.seq >= 2


@pytest.mark.e2e  # starts a redis-server of its own
def test_unix_socket_url(tmp_path, channel):
    path = tmp_path / "redis.sock"
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(path), "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    broker = None
    try:
        wait_until(path.exists, 10)
        broker = RedisBroker(f"unix://{path}?db=0", history_size=10, history_ttl=60)
        recorder = Recorder()
        broker.start(recorder)
        watch(broker, channel)
        message = broker.publish(channel, b"\x00\xff", binary=True)
        assert recorder.wait_for(channel, 1) == [message]
        assert broker.status()["ok"] is True
    finally:
        if broker is not None:
            broker.close()
        proc.terminate()
        proc.wait(10)


@pytest.mark.e2e  # starts a master and a replica of its own
def test_after_a_failover_that_lost_writes_no_id_is_handed_out_twice(channel):
    """The new master lacks the old one's last writes: its next message starts a new epoch
    instead of taking their ids again, and a cursor among them reads as a gap."""
    master, replica = RedisServer.start(), RedisServer.start()
    brokers: list[RedisBroker] = []

    def broker(url: str) -> RedisBroker:
        brokers.append(RedisBroker(url, history_size=100, history_ttl=60.0, timeout=2.0))
        return brokers[-1]

    try:
        promoted = redis.Redis(port=replica.port)
        promoted.replicaof("127.0.0.1", master.port)
        wait_until(lambda: promoted.info("replication").get("master_link_status") == "up", 10)
        old = broker(master.url)
        kept = [old.publish(channel, b"kept %d" % n) for n in range(5)]
        assert redis.Redis(port=master.port).wait(1, 5000) == 1  # the replica has them
        promoted.replicaof("NO", "ONE")  # promoted: what the old master takes next is lost
        lost = [old.publish(channel, b"lost %d" % n) for n in range(3)]
        master.stop()

        new = broker(replica.url)  # the workers follow the failover to the promoted replica
        gap = new.history(channel, lost[-1].id)
        assert gap.reset is True  # a cursor past what the new master holds is a gap
        after = new.publish(channel, b"after")
        assert after.id.epoch > kept[0].id.epoch  # never one of the lost ids again
        assert after.id not in {m.id for m in (*kept, *lost)}
        page = new.history(channel, kept[-1].id)
        assert page.reset is True and ids(page.messages) == [after.id]
        assert new.publish(channel, b"next").id == MessageId(after.id.epoch, 2)
    finally:
        for made in brokers:
            made.close()
        master.stop()
        replica.stop()


def test_reconnecting_to_the_same_master_keeps_the_epoch(make_broker, channel):
    first = make_broker()
    before = first.publish(channel, b"a")
    first.close()
    assert make_broker().publish(channel, b"b").id == MessageId(before.id.epoch, 2)


def test_control_messages_reach_every_worker_of_the_prefix_even_one_that_was_away(
    make_broker, redis_server, client
):
    """What relay.disconnect sends: every worker sharing the prefix gets it, its sender
    included; a worker whose pub/sub connection was down gets it once it is back (a logout
    is not lost to a Redis blip); another deployment's workers never do."""
    first, second = make_broker(), make_broker(backoff=(1.0, 2.0))
    stranger = RedisBroker(redis_server.url, history_size=10, history_ttl=60.0,
                           prefix=f"{make_broker.prefix}-other")
    got: dict[str, list[bytes]] = {"first": [], "second": [], "stranger": []}
    try:
        for name, broker in (("first", first), ("second", second), ("stranger", stranger)):
            broker.start(Recorder())
            broker.listen_control(got[name].append)
            wait_until(broker._listener.watches[CONTROL_CHANNEL].subscribed.is_set, 5)
        first.send_control(b"logout ada")
        wait_until(lambda: got["first"] == got["second"] == [b"logout ada"], 5, message=str(got))

        entries = [c for c in client.client_list() if c["name"] == second.listener_name]
        client.client_kill_filter(_id=entries[0]["id"])
        wait_until(lambda: second.status()["listener"] == "disconnected", 5)
        first.send_control(b"logout bob")  # while the second worker is away
        first.send_control(b"logout eve")
        wait_until(lambda: got["second"] == [b"logout ada", b"logout bob", b"logout eve"], 10,
                   message=str(got))
        assert second.status()["reconnects"] >= 1
        assert got["first"] == got["second"] and got["stranger"] == []
    finally:
        stranger.close()
    redis_server.stop()
    try:
        with pytest.raises(BrokerUnavailable):
            first.send_control(b"lost")
    finally:
        redis_server.restart()
