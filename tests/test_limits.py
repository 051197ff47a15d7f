"""Limit bookkeeping without sockets: rates per client, per-IP and per-worker counts."""

import pytest

from wsrelay.errors import ApiError
from wsrelay.limits import Limits, TokenBucket


def limits(**overrides) -> Limits:
    options = {"publish_rate": 2.0, "publish_burst": 3, "max_per_ip": 2, "max_streams": 3,
               "connect_rate": 1.0, "connect_burst": 2}
    return Limits(**{**options, **overrides})


def refusal(call, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as refused:
        call(*args, **kwargs)
    return refused.value


def test_a_bucket_allows_its_burst_then_its_rate():
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after(0.0) == pytest.approx(0.5)
    assert not bucket.take(0.4)
    assert bucket.take(0.5)          # one token per 1/rate seconds
    assert not bucket.take(0.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # never above burst


def test_http_publish_is_counted_per_client():
    limit = limits()
    for _ in range(3):
        limit.check_publish("10.0.0.1", 0.0)
    refused = refusal(limit.check_publish, "10.0.0.1", 0.0)
    assert (refused.status, refused.code) == (429, "rate_limited")
    assert refused.headers["Retry-After"] == "1"
    limit.check_publish("10.0.0.2", 0.0)  # another client has its own bucket
    limit.check_publish("10.0.0.1", 0.5)  # refilled


def test_idle_publishers_are_forgotten_so_the_table_stays_small():
    """The table holds the clients that published within ``burst / rate`` seconds, and at
    most about twice as many: an address seen once does not cost memory for ever."""
    limit = limits()
    for n in range(5000):
        limit.check_publish(f"10.0.{n // 256}.{n % 256}", 0.0)
    for n in range(5000):  # others, later: the first 5000 have refilled by now
        limit.check_publish(f"10.1.{n // 256}.{n % 256}", 10.0)
    assert limit.counts()["publishers"] < 6000  # not 10000
    for _ in range(2):
        limit.check_publish("10.1.0.0", 10.0)
    assert refusal(limit.check_publish, "10.1.0.0", 10.0).code == "rate_limited"  # kept


def test_every_connection_of_a_client_and_its_http_publishes_share_one_rate():
    """Reconnecting, or spreading messages over several sockets, gains nothing."""
    limit = limits()
    first, second = limit.publisher("10.0.0.1"), limit.publisher("10.0.0.1")
    assert [first.take(0.0), second.take(0.0), first.take(0.0)] == [True, True, True]
    assert not second.take(0.0)
    assert refusal(limit.check_publish, "10.0.0.1", 0.0).code == "rate_limited"
    assert limit.publisher("10.0.0.2").take(0.0)  # another client
    assert first.take(0.5) and not second.take(0.5)  # one token per 1/rate seconds, shared


def test_a_token_subject_is_one_publisher_from_any_address():
    """A subject spread over many addresses, or behind a proxy on this host whose address
    is exempt, still has one rate; and its IP's rate still applies to it."""
    limit = limits(exempt=["127.0.0.1"])
    assert limit.publisher("127.0.0.1") is None
    behind_proxy = limit.publisher("127.0.0.1", "alice")
    assert [behind_proxy.take(0.0) for _ in range(4)] == [True, True, True, False]
    elsewhere = limit.publisher("10.0.0.1", "alice")
    assert not elsewhere.take(0.0)
    assert refusal(limit.check_publish, "10.0.0.2", 0.0, "alice").code == "rate_limited"
    assert limit.publisher("127.0.0.1", "bob").take(0.0)
    # Both buckets need room, and a refusal spends from neither.
    assert not elsewhere.take(0.0)
    assert [limit.publisher("10.0.0.1").take(0.0) for _ in range(4)] == [True] * 3 + [False]


def test_connects_of_one_ip_are_rate_limited():
    limit = limits(exempt=["127.0.0.1"])
    limit.check_connect("10.0.0.1", 0.0)
    limit.check_connect("10.0.0.1", 0.0)  # the burst is 2
    refused = refusal(limit.check_connect, "10.0.0.1", 0.2)
    assert (refused.status, refused.code) == (429, "connect_rate_limited")
    assert refused.headers["Retry-After"] == "1"
    limit.check_connect("10.0.0.2", 0.2)  # another address
    limit.check_connect("10.0.0.1", 1.0)  # one per second
    for _ in range(100):
        limit.check_connect("127.0.0.1", 1.0)  # exempt
    assert limit.counts()["connecting"] == 2


def test_an_admission_over_the_connect_rate_takes_no_place():
    limit = limits(max_per_ip=10)
    limit.admit("10.0.0.1", 0.0, stream=True)
    limit.admit("10.0.0.1", 0.0, stream=True)  # the burst is 2
    refused = refusal(limit.admit, "10.0.0.1", 0.2, stream=True)
    assert refused.code == "connect_rate_limited"
    assert limit.counts()["connections"] == 2 and limit.counts()["streams"] == 2


def test_connections_of_one_ip_are_capped_and_released():
    limit = limits()
    limit.enter("10.0.0.1", stream=False)
    limit.enter("10.0.0.1", stream=True)
    refused = refusal(limit.enter, "10.0.0.1", stream=False)
    assert (refused.status, refused.code) == (429, "too_many_connections")
    assert "Retry-After" in refused.headers
    limit.enter("10.0.0.2", stream=False)
    limit.leave("10.0.0.1", stream=True)
    limit.enter("10.0.0.1", stream=False)
    for client, stream in [("10.0.0.1", False), ("10.0.0.1", False), ("10.0.0.2", False)]:
        limit.leave(client, stream=stream)
    assert limit.counts() == {"connections": 0, "addresses": 0, "streams": 0, "publishers": 0,
                              "connecting": 0}


def test_streams_of_a_worker_are_capped_and_websockets_are_not_streams():
    limit = limits(max_per_ip=100)
    for n in range(3):
        limit.enter(f"10.0.0.{n}", stream=True)
    refused = refusal(limit.enter, "10.0.0.9", stream=True)
    assert (refused.status, refused.code) == (503, "too_many_streams")
    assert "Retry-After" in refused.headers
    limit.enter("10.0.0.9", stream=False)
    assert limit.counts()["connections"] == 4  # the refused one was not counted
    limit.leave("10.0.0.0", stream=True)
    limit.enter("10.0.0.9", stream=True)


def test_exempt_addresses_have_no_ip_cap_and_no_rate_but_share_the_stream_cap():
    limit = limits(exempt=["127.0.0.1"])
    for _ in range(10):
        limit.check_connect("127.0.0.1", 0.0)
        limit.enter("127.0.0.1", stream=False)
        limit.check_publish("127.0.0.1", 0.0)
    assert limit.publisher("127.0.0.1") is None
    assert limit.publisher("10.0.0.1") is not None
    for _ in range(3):
        limit.enter("127.0.0.1", stream=True)
    assert refusal(limit.enter, "127.0.0.1", stream=True).code == "too_many_streams"
    for _ in range(3):
        limit.leave("127.0.0.1", stream=True)
    assert limit.counts()["streams"] == 0
