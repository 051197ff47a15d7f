"""``WSRELAY_BROKER_URL`` for Redis: one server, or the master a set of sentinels watches."""

from __future__ import annotations

import pytest
from redis.sentinel import SentinelConnectionPool

from wsrelay.broker.redis.urls import SentinelUrl, connection_pool, parse_sentinel_url


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
