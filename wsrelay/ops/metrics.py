"""Prometheus metrics, made from the hub's plain counters away from the hot path.

The hub and its connections count into :class:`wsrelay.stats.Stats` (plain
integers: a Prometheus increment costs more than a whole delivery). A
:class:`MetricsSync` per hub applies what changed since its last sync to the
process's metrics: when ``/metrics`` or ``/dashboard/stats`` is read, and once
a second from a greenlet that ``Relay.init_app`` starts and ``Relay.close``
stops, in every process that serves (so that under gunicorn every worker's
numbers are at most a second old whichever worker is scraped, and so the
busiest-channels window has one owner).

Under gunicorn ``gunicorn.conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR`` before
anything imports prometheus-client: each worker then writes its metrics to
files there, and ``/metrics`` adds every worker's up (prometheus-client's
multiprocess mode). One process (``manage.py serve``) uses the default
registry, where an application's own metrics appear next to wsrelay's.
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import time
from bisect import bisect_left
from collections import Counter as Tally
from collections import deque
from typing import TYPE_CHECKING, Any

import gevent
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    from ..hub import MessageServer

log = logging.getLogger(__name__)

#: Seconds between two syncs of a process's counters (and the busiest-channels window).
SYNC_INTERVAL = 1.0

#: The totals exported as counters: field of :meth:`MetricsSync.totals`, name, help.
TOTALS: dict[str, tuple[str, str]] = {
    "published": ("wsrelay_messages_published",
                  "Messages published, each counted once, by the process it was published to"),
    "delivered": ("wsrelay_messages_delivered",
                  "Messages queued to WebSocket subscribers, one per subscriber"),
    "bytes_sent": ("wsrelay_bytes_sent", "Bytes written to WebSocket clients"),
    "slow_consumer_closes": ("wsrelay_slow_consumer_closes",
                             "WebSockets closed with 1013 because their buffer was full"),
    "broker_errors": ("wsrelay_broker_errors", "Failed calls to the broker's backing store"),
}
TRANSPORTS = ("websocket", "sse", "poll")
#: Publish-to-write latency buckets, 0.1 ms to 10 s.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY = "wsrelay_publish_latency_seconds"
#: Per-second samples a process keeps for the dashboard's first picture: five minutes.
SAMPLES = 300
#: The counters a sample holds as what changed in its second.
SAMPLED = ("published", "delivered", "bytes_sent")
#: Where each worker leaves its samples, in the multiprocess directory, for the others.
SAMPLES_FILE = "wsrelay-samples-{pid}.json"


def close_code_label(code: int) -> str:
    """A bounded label for a close code: the protocol's own codes (1000-1015) one by one;
    the registered (3000-3999) and private (4000-4999) ranges, which a client may pick
    freely, one label each; anything else ``other``. At most 18 series."""
    if 1000 <= code <= 1015:
        return str(code)
    if 3000 <= code <= 3999:
        return "3xxx"
    if 4000 <= code <= 4999:
        return "4xxx"
    return "other"


class Metrics:
    """wsrelay's Prometheus metrics, registered in one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.totals = {
            field: Counter(name, help_text, registry=registry)
            for field, (name, help_text) in TOTALS.items()
        }
        self.closes = Counter("wsrelay_closes", "WebSockets ended, by close code (1006: none)",
                              ["code"], registry=registry)
        self.connections = Gauge("wsrelay_connections", "Open client connections, by transport",
                                 ["transport"], multiprocess_mode="livesum", registry=registry)
        self.latency = Histogram(LATENCY, "Seconds from publish to the last local socket write",
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.processes = Gauge("wsrelay_processes", "Processes serving (gunicorn workers alive)",
                               multiprocess_mode="livesum", registry=registry)
        self.processes.set(1)
        for transport in TRANSPORTS:  # every series exists from the start, at 0
            self.connections.labels(transport)


@functools.cache
def process_metrics() -> Metrics:
    """The metrics of this process, in the default registry (one set however many apps)."""
    return Metrics(REGISTRY)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition_registry() -> CollectorRegistry:
    """What ``/metrics`` shows: every worker's metrics under multiprocess mode, else this
    process's default registry."""
    directory = multiprocess_dir()
    if directory is None:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return registry


def reset_multiprocess_dir() -> None:
    """Delete the files of a previous run (gunicorn's ``on_starting``): a run's counters
    must start from zero, and a dead process's gauges must not count."""
    directory = multiprocess_dir()
    if directory is not None:
        os.makedirs(directory, exist_ok=True)
        for path in glob.glob(os.path.join(directory, "*.db")) + glob.glob(
            os.path.join(directory, SAMPLES_FILE.format(pid="*"))
        ):
            os.remove(path)


def _changes(current: Tally, synced: Tally) -> list[tuple[Any, int]]:
    """The keys of ``current`` whose count moved since ``synced``, and by how much;
    ``synced`` is brought up to date."""
    moved = []
    for key, value in current.items():
        delta = value - synced[key]
        if delta:
            synced[key] = value
            moved.append((key, delta))
    return moved


class MetricsSync:
    """One hub's counters carried into the metrics as the differences since the last sync."""

    def __init__(self, hub: MessageServer, metrics: Metrics | None = None) -> None:
        self.hub = hub
        self.metrics = metrics or process_metrics()
        self._totals = dict.fromkeys(TOTALS, 0)
        self._closes: Tally[int] = Tally()
        self._connections: Tally[str] = Tally()
        #: This process's busiest channels in the last window: ``[(channel, messages)]``.
        self.busiest: list[tuple[str, int]] = []
        #: This process's last SAMPLES seconds, oldest first (see :meth:`sample`).
        self.samples: deque[dict[str, Any]] = deque(maxlen=SAMPLES)
        #: The same samples as JSON, each encoded once: the file a worker leaves every second
        #: is these joined, not five minutes of samples encoded anew.
        self._encoded: deque[str] = deque(maxlen=SAMPLES)
        self._sampled = dict.fromkeys(SAMPLED, 0)
        self._greenlet: gevent.Greenlet | None = None

    def totals(self) -> dict[str, int]:
        """This hub's totals since start, by :data:`TOTALS` field."""
        stats = self.hub.stats
        return {
            "published": stats.published,
            "delivered": stats.delivered,
            "bytes_sent": stats.bytes_sent,
            "slow_consumer_closes": stats.slow_consumer_closes,
            "broker_errors": self.hub.broker.errors,
        }

    def sync(self) -> None:
        """Apply what changed since the last sync; observe the waiting latency samples."""
        metrics = self.metrics
        for field, value in self.totals().items():
            if value > self._totals[field]:
                metrics.totals[field].inc(value - self._totals[field])
                self._totals[field] = value
        stats = self.hub.stats
        for code, delta in _changes(stats.closes, self._closes):
            metrics.closes.labels(close_code_label(code)).inc(delta)
        for transport, delta in _changes(stats.connections, self._connections):
            metrics.connections.labels(transport).inc(delta)
        observe_all(metrics.latency, stats.take_latencies())

    def tick(self) -> None:
        """The periodic step: sync, and end the busiest-channels window. ``take_busiest``
        starts counting anew, so this is the only place that calls it."""
        self.sync()
        self.busiest = self.hub.stats.take_busiest()
        self.sample(time.time())

    def sample(self, now: float) -> None:
        """Keep one second: ``t`` (whole seconds since the epoch), what each of
        :data:`SAMPLED` grew by since the last sample, and the open connections; under
        gunicorn also leave the samples where the other workers read them."""
        stats = self.hub.stats
        sample: dict[str, Any] = {"t": int(now)}
        for name in SAMPLED:
            value = getattr(stats, name)
            sample[name] = max(value - self._sampled[name], 0)
            self._sampled[name] = value
        sample["connections"] = {name: stats.connections[name] for name in TRANSPORTS}
        self.samples.append(sample)
        directory = multiprocess_dir()
        if directory is not None:
            self._encoded.append(json.dumps(sample))
            path = os.path.join(directory, SAMPLES_FILE.format(pid=os.getpid()))
            with open(path + ".tmp", "w") as file:
                file.write("[" + ",".join(self._encoded) + "]")
            os.replace(path + ".tmp", path)

    def all_samples(self, count: int) -> list[dict[str, Any]]:
        """The last ``count`` seconds summed over every worker (this process's alone
        without multiprocess mode), oldest first."""
        directory = multiprocess_dir()
        if directory is None:
            return sum_samples([list(self.samples)], count)
        series = []
        for path in glob.glob(os.path.join(directory, SAMPLES_FILE.format(pid="*"))):
            try:
                with open(path) as file:
                    series.append(json.load(file))
            except (OSError, ValueError):  # a worker gone, or its file half-way replaced
                continue
        return sum_samples(series, count)

    def start(self) -> None:
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        """Stop the greenlet and sync a last time: a stopping worker's last second counts."""
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None
        self.sync()

    def _run(self) -> None:
        while True:
            gevent.sleep(SYNC_INTERVAL)
            try:
                self.tick()
            except Exception:  # a metrics bug must not stop the counting
                log.exception("metrics sync failed")


def observe_all(histogram: Histogram, samples: list[float]) -> None:
    """What ``histogram.observe`` of each sample does (a negative one counts as 0: clocks of
    two hosts can disagree), with one update per bucket that grew and one of the sum.

    Every update is a locked write to a shared file under gunicorn (prometheus_client's
    multiprocess mode), and a busy second holds thousands of samples: one update each
    cost a worker as much as delivering them. Uses the histogram's bounds and values
    (``_upper_bounds``, ``_buckets``, ``_sum``), as ``observe`` does; a test holds the two
    to the same result.
    """
    if not samples:
        return
    bounds = histogram._upper_bounds
    counts = [0] * len(bounds)
    total = 0.0
    for seconds in samples:
        if seconds < 0.0:
            seconds = 0.0
        total += seconds
        counts[bisect_left(bounds, seconds)] += 1  # the first bound >= it, as observe finds
    histogram._sum.inc(total)
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)


def sum_samples(series: list[list[dict[str, Any]]], count: int) -> list[dict[str, Any]]:
    """Add up the samples of several processes second by second: the counters' growth,
    and each process's open connections as its last sample of that second says. The
    last ``count`` seconds, oldest first."""
    seconds: dict[int, dict[str, Any]] = {}
    for samples in series:
        mine: dict[int, dict[str, Any]] = {}
        for sample in samples:  # a process may sample twice in one wall-clock second
            into = mine.setdefault(sample["t"], {"t": sample["t"], **dict.fromkeys(SAMPLED, 0)})
            for name in SAMPLED:
                into[name] += sample[name]
            into["connections"] = sample["connections"]
        for second, sample in mine.items():
            total = seconds.setdefault(second, {
                "t": second, **dict.fromkeys(SAMPLED, 0),
                "connections": dict.fromkeys(TRANSPORTS, 0),
            })
            for name in SAMPLED:
                total[name] += sample[name]
            for name in TRANSPORTS:
                total["connections"][name] += sample["connections"].get(name, 0)
    return [seconds[second] for second in sorted(seconds)[-count:]] if count > 0 else []


def read_totals(registry: CollectorRegistry) -> dict[str, Any]:
    """The totals as ``registry`` holds them (every worker's, under multiprocess mode)."""
    counters = {name + "_total": field for field, (name, _) in TOTALS.items()}
    totals: dict[str, Any] = dict.fromkeys(TOTALS, 0)
    closes: Tally[str] = Tally()
    connections = dict.fromkeys(TRANSPORTS, 0)
    buckets: list[list[Any]] = []
    count, total = 0, 0.0
    processes = 0
    for metric in registry.collect():
        for sample in metric.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name in counters:
                totals[counters[name]] += int(value)
            elif name == "wsrelay_closes_total":
                closes[labels["code"]] += int(value)
            elif name == "wsrelay_connections":
                connections[labels["transport"]] = int(value)
            elif name == "wsrelay_processes":
                processes += int(value)
            elif name == LATENCY + "_count":
                count += int(value)
            elif name == LATENCY + "_sum":
                total += value
            elif name == LATENCY + "_bucket":
                buckets.append([labels["le"], int(value)])
    latency = {"count": count, "sum": total, "buckets": buckets}
    totals.update(closes=dict(sorted(closes.items())), connections=connections,
                  latency=latency, processes=processes)
    return totals
