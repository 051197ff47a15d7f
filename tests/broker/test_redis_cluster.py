"""ClusterBroker specifics: shards, sharded pub/sub connections, epochs per shard.

The behaviour every broker shares runs on a cluster in ``test_broker.py``; the
failovers and slot moves under load, across servers, in ``tests/system/test_redis_cluster.py``.
"""

from __future__ import annotations

import uuid

import gevent
import pytest
import redis

from tests.broker.test_broker import Recorder
from tests.support import RedisClusterProcesses, free_port, wait_until
from wsrelay.broker import BrokerUnavailable
from wsrelay.broker.redis import ClusterBroker
from wsrelay.broker.redis.broker import CONTROL_CHANNEL
from wsrelay.broker.redis.slots import channel_slot

pytestmark = pytest.mark.e2e  # starts redis-servers


def on_each_master(cluster: RedisClusterProcesses) -> dict:
    """A channel on each master."""
    owners, found = cluster.masters(), {}
    for n in range(10_000):
        found.setdefault(owners[channel_slot(f"c{n}")], f"c{n}")
    return found


def make(url: str, prefix: str) -> ClusterBroker:
    return ClusterBroker(url, history_size=100, history_ttl=60.0, prefix=prefix, timeout=2.0)


def test_one_pub_sub_connection_per_shard_with_watched_channels(redis_cluster):
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    broker = make(redis_cluster.url, prefix)
    try:
        channels = on_each_master(redis_cluster)
        first = next(iter(channels))
        broker.start(Recorder())
        for channel in channels.values():
            broker.publish(channel, b"x")
        broker.watch(channels[first])
        broker.history(channels[first], None)

        def listeners(node) -> int:
            clients = redis.Redis(port=node.port).client_list()
            return sum(c["name"].startswith(f"{prefix}-listener") for c in clients)
        assert [listeners(node) for node in channels] == [1, 0, 0]
        assert broker.status()["ok"] and len(broker.status()["shards"]) == 3
    finally:
        broker.close()


def test_an_unreachable_cluster_refuses_with_broker_unavailable_and_says_so(channel):
    broker = make(f"redis+cluster://127.0.0.1:{free_port()}", "test")
    try:
        broker.watch(channel)  # kept, for the first map to place
        with pytest.raises(BrokerUnavailable):
            broker.history(channel, None)
        with pytest.raises(BrokerUnavailable):
            broker.publish(channel, b"x")
        status = broker.status()
        assert status["ok"] is False and "cannot be connected" in str(status["error"])
    finally:
        broker.close()


def test_a_shard_failover_starts_new_epochs_on_that_shard_only(channel):
    """Its new master may lack the last writes of the old one: the ids it hands out next
    must not be theirs, so its channels start new epochs; other shards' keep theirs."""
    cluster = RedisClusterProcesses.start(masters=3, replicas=1)
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    broker = make(cluster.url, prefix)
    try:
        failing, kept = list(on_each_master(cluster).items())[:2]
        before = {name: broker.publish(name, b"before") for _, name in (failing, kept)}
        wait_until(cluster.replicas_in_sync, 30, 0.2)
        assert redis.Redis(port=failing[0].port).wait(1, 5000) == 1
        replica = cluster.replica_of(failing[0])
        cluster.cli(replica, "CLUSTER", "FAILOVER")
        wait_until(lambda: cluster.masters().get(channel_slot(failing[1])) is replica,
                   30, 0.1)

        def published(name: str):
            try:
                return broker.publish(name, b"after")
            except Exception:  # refused while the broker follows the failover
                return None
        after = wait_until(lambda: published(failing[1]), 20)
        assert after.id.epoch > before[failing[1]].id.epoch and after.id.seq == 1
        page = broker.history(failing[1], before[failing[1]].id)
        assert page.reset is True and [m.id for m in page.messages] == [after.id]
        other = broker.publish(kept[1], b"after")
        assert other.id.epoch == before[kept[1]].id.epoch and other.id.seq == 2
    finally:
        broker.close()
        cluster.stop()


def test_presence_counts_each_worker_once_even_after_its_channels_slot_moved(channel):
    cluster = RedisClusterProcesses.start(masters=3)
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    a, b = make(cluster.url, prefix), make(cluster.url, prefix)

    def presence(broker: ClusterBroker, local: int) -> int | None:
        try:
            return broker.presence(channel, local)
        except BrokerUnavailable:  # refused while the slot moves
            return None
    try:
        a.report_presence({channel: 2})
        b.report_presence({channel: 3})
        wait_until(lambda: presence(a, 2) == 5 and presence(b, 3) == 5, 10)
        source = cluster.owner(channel_slot(channel))
        target = next(n for n in set(cluster.masters().values()) if n is not source)
        cluster.move_slot(channel_slot(channel), target)
        wait_until(lambda: presence(a, 2) is not None, 10)  # a follows the move
        a.report_presence({channel: 2})  # its next report goes to the new owner
        wait_until(lambda: presence(b, 3) == 5 and presence(a, 2) == 5, 10,
                   message=f"{presence(a, 2)} {presence(b, 3)}")
    finally:
        a.close()
        b.close()
        cluster.stop()


def test_a_subscription_refused_by_a_stale_map_is_made_on_the_new_owner(channel):
    """The worker still maps the slot to its old owner, which answers ``MOVED`` to the
    ``SSUBSCRIBE``: the map is read again and the channel subscribed where it now lives."""
    cluster = RedisClusterProcesses.start(masters=3)
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    watcher, publisher = make(cluster.url, prefix), make(cluster.url, prefix)
    try:
        recorder = Recorder()
        watcher.start(recorder)
        first = watcher.publish(channel, b"before")  # the route to the old owner is known
        source = cluster.owner(channel_slot(channel))
        target = next(n for n in set(cluster.masters().values()) if n is not source)
        cluster.move_slot(channel_slot(channel), target)
        watcher.watch(channel)
        page = wait_until(lambda: history(watcher, channel, first.id), 10)
        assert page.messages == [] and page.cursor == first.id
        after = publisher.publish(channel, b"after")
        assert [m.id for m in recorder.wait_for(channel, 1)] == [after.id]
        assert after.id.epoch > first.id.epoch  # written under another master: a new epoch
        assert redis.Redis(port=target.port).execute_command(
            "PUBSUB", "SHARDNUMSUB", f"{prefix}:{{{channel}}}")[1] == 1
    finally:
        watcher.close()
        publisher.close()
        cluster.stop()


def history(broker: ClusterBroker, channel: str, since):
    try:
        return broker.history(channel, since)
    except BrokerUnavailable:  # not subscribed yet
        return None


def test_callers_at_once_share_one_shard_per_master(redis_cluster, channel):
    broker = make(redis_cluster.url, f"test-{uuid.uuid4().hex[:10]}")
    try:
        gevent.joinall([gevent.spawn(broker.publish, f"{channel}-{n}", b"x") for n in range(50)],
                       raise_error=True)
        assert len(broker._shards) == 3
        names = [c["name"] for node in redis_cluster.nodes
                 for c in redis.Redis(port=node.port).client_list()
                 if c["name"].startswith(broker._options["prefix"])]
        assert len(names) == 3  # one command connection per master, none left behind
    finally:
        broker.close()


def test_control_messages_reach_every_worker_on_a_cluster(redis_cluster):
    """relay.disconnect's requests (logouts) go through the control channel's shard to
    every worker of the prefix, the sender included; another prefix's workers never see them."""
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    brokers = {"first": make(redis_cluster.url, prefix), "second": make(redis_cluster.url, prefix),
               "stranger": make(redis_cluster.url, f"{prefix}-other")}
    got: dict[str, list[bytes]] = {name: [] for name in brokers}
    try:
        for name, broker in brokers.items():
            broker.start(Recorder())
            broker.listen_control(got[name].append)

        def subscribed(broker: ClusterBroker) -> bool:
            shard = broker._watched.get(CONTROL_CHANNEL)
            watch = shard and shard._listener.watches.get(CONTROL_CHANNEL)
            return bool(watch and watch.subscribed.is_set())
        wait_until(lambda: all(subscribed(b) for b in brokers.values()), 10)
        brokers["first"].send_control(b"logout ada")
        brokers["second"].send_control(b"logout bob")
        wait_until(lambda: got["first"] == got["second"] == [b"logout ada", b"logout bob"], 10,
                   message=str(got))
        assert got["stranger"] == []
    finally:
        for broker in brokers.values():
            broker.close()
