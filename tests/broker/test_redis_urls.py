"""``WSRELAY_BROKER_URL`` for Redis: one server, the master a set of sentinels watches, or a
Redis Cluster."""

from __future__ import annotations

import pytest
from redis.sentinel import SentinelConnectionPool

from wsrelay.broker.redis.urls import (
    ClusterUrl,
    SentinelUrl,
    connection_pool,
    parse_cluster_url,
    parse_sentinel_url,
)


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_db():
    assert parse_sentinel_url("redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2:26380/main/2"
                              "?sentinel_password=other") == SentinelUrl(
        [("10.0.0.1", 26379), ("10.0.0.2", 26380)], "main", 2, None, "s3cret", "other", False)
    assert parse_sentinel_url("rediss+sentinel://app:pw@[::1]:26379/main") == SentinelUrl(
        [("::1", 26379)], "main", 0, "app", "pw", None, True)


@pytest.mark.parametrize("url", [
    "redis+sentinel://host/main",  # no port
    "redis+sentinel://host:26379/",  # no master name
    "redis+sentinel://host:26379/main/zero",
    "redis://host:6379/0",
])
def test_a_bad_sentinel_url_is_refused_with_a_reason(url):
    with pytest.raises(ValueError):
        parse_sentinel_url(url)


def test_a_sentinel_url_makes_a_pool_that_asks_the_sentinels():
    pool = connection_pool("redis+sentinel://127.0.0.1:1/main/3", 1.0)
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.connection_kwargs["db"] == 3 and pool.connection_kwargs["socket_timeout"] == 1.0


def test_a_cluster_url_names_the_nodes_and_gives_each_master_a_plain_url():
    spec = parse_cluster_url("rediss+cluster://app:p%40ss@10.0.0.1:7000,[::1]:7001"
                             "?ssl_cert_reqs=none")
    assert spec == ClusterUrl([("10.0.0.1", 7000), ("::1", 7001)], "app", "p@ss", True,
                              "ssl_cert_reqs=none")
    assert spec.node_url("::1", 7001) == "rediss://app:p%40ss@[::1]:7001/0?ssl_cert_reqs=none"
    assert parse_cluster_url("redis+cluster://h:1").node_url("h", 2) == "redis://h:2/0"


@pytest.mark.parametrize("url", [
    "redis+cluster://host",  # no port
    "redis+cluster://host:7000/3",  # a cluster has database 0 only
    "redis+sentinel://host:26379/main",
])
def test_a_bad_cluster_url_is_refused_with_a_reason(url):
    with pytest.raises(ValueError):
        parse_cluster_url(url)
