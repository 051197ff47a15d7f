"""The metrics made from the hub's counters: differences applied once, labels bounded."""

import json

import pytest
from prometheus_client import CollectorRegistry

from tests.support import FakeConnection
from wsrelay.broker import MemoryBroker
from wsrelay.hub import MessageServer, Subscription
from wsrelay.ops.metrics import (
    SAMPLES,
    Metrics,
    MetricsSync,
    close_code_label,
    observe_all,
    read_totals,
    sum_samples,
)
from wsrelay.websocket.encoders import RAW


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def hub() -> MessageServer:
    """A hub without its greenlets: the tests flush and sync themselves."""
    return MessageServer(MemoryBroker(history_size=100, history_ttl=60))


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    assert found is not None, f"no sample {name}{labels}"
    return found


def test_the_real_hub_path_counts_publishes_deliveries_and_latencies(hub, registry):
    sync = MetricsSync(hub, Metrics(registry))
    connections = [FakeConnection(f"s{i}") for i in range(3)]
    for connection in connections:
        hub.attach(connection)
        hub.subscribe(Subscription(connection, "room", RAW), None)
    for i in range(4):
        hub.publish("room", f"m{i}")
    hub.flush_pending()  # what the flusher greenlet does: write, then record the latencies
    sync.sync()
    assert value(registry, "wsrelay_messages_published_total") == 4
    assert value(registry, "wsrelay_messages_delivered_total") == 12
    assert value(registry, "wsrelay_connections", transport="websocket") == 3
    assert value(registry, "wsrelay_publish_latency_seconds_count") == 4
    assert value(registry, "wsrelay_publish_latency_seconds_bucket", le="10.0") == 4


def test_each_sync_adds_only_what_changed_since_the_last(hub, registry):
    sync = MetricsSync(hub, Metrics(registry))
    stats = hub.stats
    stats.published, stats.delivered, stats.bytes_sent = 3, 7, 1000
    sync.sync()
    sync.sync()  # nothing new: nothing added
    assert value(registry, "wsrelay_messages_published_total") == 3
    assert value(registry, "wsrelay_messages_delivered_total") == 7
    assert value(registry, "wsrelay_bytes_sent_total") == 1000
    stats.published += 2
    stats.slow_consumer_closes += 1
    hub.broker.errors += 5
    sync.sync()
    assert value(registry, "wsrelay_messages_published_total") == 5
    assert value(registry, "wsrelay_messages_delivered_total") == 7
    assert value(registry, "wsrelay_slow_consumer_closes_total") == 1
    assert value(registry, "wsrelay_broker_errors_total") == 5


def test_two_hubs_of_one_process_add_up(registry):
    metrics = Metrics(registry)
    hubs = [MessageServer(MemoryBroker(history_size=10, history_ttl=60)) for _ in range(2)]
    syncs = [MetricsSync(hub, metrics) for hub in hubs]
    hubs[0].stats.published, hubs[1].stats.published = 2, 5
    hubs[0].stats.connections["sse"], hubs[1].stats.connections["sse"] = 1, 2
    for sync in syncs:
        sync.sync()
    assert value(registry, "wsrelay_messages_published_total") == 7
    assert value(registry, "wsrelay_connections", transport="sse") == 3


def test_the_connections_gauge_goes_up_and_down(hub, registry):
    sync = MetricsSync(hub, Metrics(registry))
    for transport in ("websocket", "sse", "poll"):  # every series exists before any client
        assert value(registry, "wsrelay_connections", transport=transport) == 0
    hub.stats.connections["websocket"] += 4
    hub.stats.connections["poll"] += 1
    sync.sync()
    assert value(registry, "wsrelay_connections", transport="websocket") == 4
    hub.stats.connections["websocket"] -= 3
    hub.stats.connections["poll"] -= 1
    sync.sync()
    assert value(registry, "wsrelay_connections", transport="websocket") == 1
    assert value(registry, "wsrelay_connections", transport="poll") == 0


@pytest.mark.parametrize(("code", "label"), [
    (1000, "1000"), (1006, "1006"), (1015, "1015"), (3000, "3xxx"), (3999, "3xxx"),
    (4000, "4xxx"), (4999, "4xxx"),
    (999, "other"), (1016, "other"), (2999, "other"), (5000, "other"), (65535, "other"),
])
def test_close_code_labels_are_bounded(code, label):
    assert close_code_label(code) == label


def test_closes_are_counted_by_code_with_the_rest_as_other(hub, registry):
    sync = MetricsSync(hub, Metrics(registry))
    closes = hub.stats.closes
    closes[1000] += 2
    closes[1009] += 1
    for code in range(5000, 5100):  # codes a client may pick: no new series each
        closes[code] += 1
    sync.sync()
    closes[1000] += 1
    sync.sync()
    assert value(registry, "wsrelay_closes_total", code="1000") == 3
    assert value(registry, "wsrelay_closes_total", code="1009") == 1
    assert value(registry, "wsrelay_closes_total", code="other") == 100
    series = {sample.labels["code"] for metric in registry.collect()
              for sample in metric.samples if sample.name == "wsrelay_closes_total"}
    assert series == {"1000", "1009", "other"}


def test_latency_samples_are_observed_once_and_never_negative(hub, registry):
    sync = MetricsSync(hub, Metrics(registry))
    for seconds in (0.00005, 0.0002, 0.003, -0.001):  # -0.001: two hosts' clocks disagree
        hub.stats.record_latency(seconds)
    sync.sync()
    sync.sync()
    assert value(registry, "wsrelay_publish_latency_seconds_count") == 4
    assert value(registry, "wsrelay_publish_latency_seconds_bucket", le="0.0001") == 2
    assert value(registry, "wsrelay_publish_latency_seconds_bucket", le="0.00025") == 3
    assert value(registry, "wsrelay_publish_latency_seconds_bucket", le="0.005") == 4
    assert value(registry, "wsrelay_publish_latency_seconds_sum") == pytest.approx(0.00325)


def test_observing_all_at_once_counts_exactly_as_observing_each():
    """The bulk update reads the histogram's own bounds and values: it must agree with
    prometheus_client's ``observe`` sample by sample (bounds included, +Inf, 0, negatives)."""
    samples = [0.0, 0.0001, 0.00010001, 0.004, 0.05, 9.99, 10.0, 11.0, 1e9, -0.5, 0.0025, 0.0025]
    one_by_one, at_once = CollectorRegistry(), CollectorRegistry()
    each = Metrics(one_by_one).latency
    for seconds in samples:
        each.observe(max(seconds, 0.0))
    bulk = Metrics(at_once).latency
    observe_all(bulk, samples)
    observe_all(bulk, [])  # nothing to add: nothing changes

    def series(registry: CollectorRegistry) -> dict:
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for metric in registry.collect() if metric.name == "wsrelay_publish_latency_seconds"
                for sample in metric.samples if not sample.name.endswith("_created")}

    expected = series(one_by_one)
    assert expected[("wsrelay_publish_latency_seconds_count", ())] == len(samples)
    assert series(at_once) == pytest.approx(expected)


def test_the_busiest_channels_are_kept_for_a_window(hub, registry):
    sync = MetricsSync(hub, Metrics(registry))
    hub.stats.channel_messages.update({"a": 5, "b": 9, "c": 1})
    sync.tick()
    assert sync.busiest == [("b", 9), ("a", 5), ("c", 1)]
    assert sync.busiest == [("b", 9), ("a", 5), ("c", 1)]  # readers do not reset it
    hub.stats.channel_messages["a"] += 2
    sync.tick()
    assert sync.busiest == [("a", 2)]
    sync.tick()
    assert sync.busiest == []


def test_read_totals_gives_back_what_was_synced(hub, registry):
    sync = MetricsSync(hub, Metrics(registry))
    stats = hub.stats
    stats.published, stats.delivered, stats.bytes_sent = 4, 8, 640
    stats.closes.update({1000: 2, 1013: 1})
    stats.connections["websocket"] += 2
    stats.record_latency(0.002)
    sync.sync()
    totals = read_totals(registry)
    assert {key: totals[key] for key in ("published", "delivered", "bytes_sent")} == {
        "published": 4, "delivered": 8, "bytes_sent": 640}
    assert totals["closes"] == {"1000": 2, "1013": 1}
    assert totals["connections"] == {"websocket": 2, "sse": 0, "poll": 0}
    assert totals["processes"] == 1
    assert totals["latency"]["count"] == 1
    assert dict(totals["latency"]["buckets"])["0.0025"] == 1
    assert dict(totals["latency"]["buckets"])["0.001"] == 0


def test_a_busy_seconds_samples_are_all_observed(hub, registry):
    """Observed in slices with the event loop let in between: none lost or counted twice."""
    sync = MetricsSync(hub, Metrics(registry))
    for n in range(2500):
        hub.stats.record_latency(0.001 if n % 2 else 0.2)
    sync.sync()
    assert value(registry, "wsrelay_publish_latency_seconds_count") == 2500
    assert value(registry, "wsrelay_publish_latency_seconds_bucket", le="0.001") == 1250


def test_a_sample_a_second_holds_what_grew_and_what_is_open(hub, registry):
    sync = MetricsSync(hub, Metrics(registry))
    connection = FakeConnection("s")
    hub.attach(connection)
    hub.subscribe(Subscription(connection, "room", RAW), None)
    hub.publish("room", "one")
    sync.sample(100.2)
    hub.publish("room", "two")
    hub.publish("room", "three")
    sync.sample(101.2)
    sync.sample(102.2)
    assert [(s["t"], s["published"], s["delivered"]) for s in sync.samples] == [
        (100, 1, 1), (101, 2, 2), (102, 0, 0)]
    assert sync.samples[-1]["connections"] == {"websocket": 1, "sse": 0, "poll": 0}
    for t in range(103, 103 + SAMPLES):  # a ring: five minutes, no more
        sync.sample(t)
    assert len(sync.samples) == SAMPLES and sync.samples[0]["t"] == 103


def test_samples_of_several_workers_add_up_second_by_second():
    def sample(t, published, websocket):
        return {"t": t, "published": published, "delivered": 0, "bytes_sent": 0,
                "connections": {"websocket": websocket, "sse": 0, "poll": 0}}

    one = [sample(10, 1, 2), sample(11, 0, 2), sample(11, 3, 1)]  # two ticks in second 11
    two = [sample(11, 5, 4), sample(12, 1, 4)]
    summed = sum_samples([one, two], 10)
    assert [(s["t"], s["published"], s["connections"]["websocket"]) for s in summed] == [
        (10, 1, 2), (11, 8, 5), (12, 1, 4)]
    assert [s["t"] for s in sum_samples([one, two], 2)] == [11, 12]
    assert sum_samples([one], 0) == []


def test_workers_share_their_samples_through_the_multiprocess_directory(
    hub, registry, tmp_path, monkeypatch
):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    other = {"t": 50, "published": 7, "delivered": 7, "bytes_sent": 70,
             "connections": {"websocket": 3, "sse": 1, "poll": 0}}
    (tmp_path / "wsrelay-samples-999999.json").write_text(json.dumps([other]))
    sync = MetricsSync(hub, Metrics(registry))
    hub.publish("room", "x")
    sync.sample(50.5)
    (summed,) = sync.all_samples(SAMPLES)
    assert (summed["published"], summed["bytes_sent"]) == (8, 70)
    assert summed["connections"] == {"websocket": 3, "sse": 1, "poll": 0}
    assert sync.samples[0]["published"] == 1  # the worker's own, apart


def test_a_workers_samples_file_holds_its_last_five_minutes(hub, registry, tmp_path,
                                                            monkeypatch):
    """Each sample is encoded once and the file is rewritten from those: it still holds
    exactly the samples the worker keeps, oldest first, once older ones have dropped out."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    sync = MetricsSync(hub, Metrics(registry))
    for t in range(100, 100 + SAMPLES + 5):
        hub.publish("room", "x")
        sync.sample(t + 0.5)
    (path,) = tmp_path.glob("wsrelay-samples-*.json")
    written = json.loads(path.read_text())
    assert written == list(sync.samples)
    assert len(written) == SAMPLES and written[0]["t"] == 105 and written[-1]["published"] == 1
