"""Redis Cluster: channels spread over the shards, a slot moved and a master failed over
under a steady publisher, with no silent gap, no duplicate and no reused id; health per shard.

Real processes: three-master clusters (with a replica each for the failovers) made by
``redis-cli --cluster create``, two ``manage.py serve`` processes on ``redis+cluster://``,
a steady publisher posting to both, subscribers on every transport spread over the two
(see :func:`tests.support.publish_through`). The seconds until publishing succeeds again
are printed (docs/deployment.md quotes them).
"""

from __future__ import annotations

import json
import time

import pytest
import redis
import requests

from tests.support import (
    RedisClusterProcesses,
    RedisServer,
    ServerProcess,
    publish,
    publish_through,
    wait_until,
)
from wsrelay.broker.redis.slots import channel_slot

pytestmark = pytest.mark.e2e  # starts redis-servers and servers itself


def channels_on(cluster: RedisClusterProcesses, base: str) -> dict[RedisServer, str]:
    """A channel named after ``base`` on each master."""
    owners = cluster.masters()
    found: dict[RedisServer, str] = {}
    for n in range(10_000):
        name = f"{base}-{n}"
        found.setdefault(owners[channel_slot(name)], name)
        if len(found) == len(set(owners.values())):
            return found
    raise AssertionError("no channel on some master")


@pytest.fixture
def servers(request):
    """``servers(cluster)``: two relays on the cluster; stopped after."""
    started: list[ServerProcess] = []

    def start(cluster: RedisClusterProcesses, count: int = 2) -> list[ServerProcess]:
        for _ in range(count):
            started.append(ServerProcess.serve(env={"WSRELAY_BROKER_URL": cluster.url}))
        return started

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def own_cluster(request):
    """A cluster of this test alone: three masters and ``request.param`` replicas each."""
    cluster = RedisClusterProcesses.start(masters=3, replicas=getattr(request, "param", 0))
    yield cluster
    cluster.stop()


def test_publish_and_subscribe_across_two_servers_on_every_shard(redis_cluster, servers,
                                                                 channel):
    a, b = servers(redis_cluster)
    by_master = channels_on(redis_cluster, channel)
    assert len(by_master) == 3
    for master, name in by_master.items():
        with a.ws(f"/ws/{name}") as on_a, b.ws(f"/ws/{name}") as on_b:
            wait_until(lambda m=master, n=name: redis.Redis(port=m.port).execute_command(
                "PUBSUB", "SHARDNUMSUB", f"wsrelay:{{{n}}}")[1] == 2, 10,
                message="both servers subscribe on the channel's own shard")
            ids = [publish(a if i % 2 else b, name, f"{name} #{i}") for i in range(6)]
            for ws in (on_a, on_b):
                assert [ws.recv() for _ in ids] == [f"{name} #{i}" for i in range(6)]
            page = requests.get(f"{b.url}/poll/{name}", params={"since": ids[0], "timeout": 0},
                                timeout=5).json()
            assert [m["id"] for m in page["messages"]] == ids[1:]
        # sharded pub/sub: the message stayed on its shard (no node saw a classic channel)
        assert not redis.Redis(port=master.port).pubsub_channels()
    for server in (a, b):
        shards = server.health()["shards"]
        assert len(shards) == 3 and all(s["ok"] for s in shards.values())


def test_a_slot_moved_under_a_steady_publisher_loses_nothing_silently(own_cluster, servers,
                                                                      channel):
    relays = servers(own_cluster)
    source = own_cluster.owner(channel_slot(channel))
    target = next(n for n in set(own_cluster.masters().values()) if n is not source)

    took: list[float] = []

    def move() -> None:
        began = time.monotonic()
        own_cluster.move_slot(channel_slot(channel), target)
        took.append(time.monotonic() - began)
        assert own_cluster.owner(channel_slot(channel)) is target

    watchers = [relay.ws(f"/ws/{channel}") for relay in relays]  # open beyond the run
    outage = publish_through(relays, channel, move)
    print(f"\nslot moved in {took[0]:.1f} s: {outage.refused} publishes refused; publishing "
          f"succeeded again {outage.resumed_after:.1f} s after the move began")
    assert redis.Redis(port=target.port).execute_command(
        "PUBSUB", "SHARDNUMSUB", f"wsrelay:{{{channel}}}")[1] == 2  # both followed the slot
    for ws in watchers:
        ws.close()
    for relay in relays:
        health = relay.health()
        assert health["ok"], json.dumps(health)


@pytest.mark.parametrize("own_cluster", [1], indirect=True)
@pytest.mark.parametrize("how", ["CLUSTER FAILOVER", "SIGKILL"])
def test_a_shard_failover_under_a_steady_publisher_loses_nothing_silently(
    own_cluster, servers, how, channel
):
    wait_until(own_cluster.replicas_in_sync, 30, 0.2, message="replicas not in sync")
    relays = servers(own_cluster)
    master = own_cluster.owner(channel_slot(channel))
    replica = own_cluster.replica_of(master)

    def fail_over() -> None:
        if how == "SIGKILL":
            master.proc.kill()
        else:
            own_cluster.cli(replica, "CLUSTER", "FAILOVER")
        wait_until(lambda: own_cluster.masters().get(channel_slot(channel)) is replica, 30, 0.1,
                   message="no failover")

    outage = publish_through(relays, channel, fail_over)
    print(f"\n{how}: {outage.refused} publishes refused; publishing succeeded again "
          f"{outage.resumed_after:.1f} s after the failover began")
    for relay in relays:
        wait_until(lambda r=relay: r.health()["ok"], 10, message=json.dumps(relay.health()))


def test_health_is_per_shard_and_only_a_dead_shards_channels_answer_503(servers, channel):
    """With ``cluster-require-full-coverage no`` (else the whole cluster refuses writes once
    a slot has no master), a dead master without a replica costs only its own channels."""
    cluster = RedisClusterProcesses.start(3, 0, "--cluster-require-full-coverage", "no")
    try:
        check_health_per_shard(cluster, servers, channel)
    finally:
        cluster.stop()


def check_health_per_shard(cluster: RedisClusterProcesses, servers, channel: str) -> None:
    relay, = servers(cluster, 1)
    by_master = channels_on(cluster, channel)
    dead, *alive = by_master
    sockets = {name: relay.ws(f"/ws/{name}") for name in by_master.values()}
    for name in by_master.values():
        publish(relay, name, "before")
        assert sockets[name].recv() == "before"
    dead.proc.kill()
    wait_until(lambda: cluster.failed(dead), 15, 0.1, message="the cluster missed the death")
    answer = requests.post(f"{relay.url}/publish/{by_master[dead]}", data="x", timeout=10)
    assert answer.status_code == 503 and answer.json()["error"] == "broker_unavailable"
    began = time.monotonic()
    for master in alive:  # a bystander on every other shard: still served on time
        name = by_master[master]
        publish(relay, name, "after")
        assert sockets[name].recv() == "after"
    assert time.monotonic() - began < 2
    ready = requests.get(f"{relay.url}/readyz", timeout=10)
    assert ready.status_code == 503  # a shard with watched channels is unreachable
    shards = ready.json()["shards"]
    assert {name: s["ok"] for name, s in shards.items()} == {
        f"127.0.0.1:{m.port}": m is not dead for m in by_master}
    for ws in sockets.values():
        ws.close()
