"""Counters of one process, bumped on the hot path as plain integers.

A Prometheus counter costs about a microsecond per increment; a delivery
must cost less than that in all. So the hub and connections count into this
object, and :mod:`wsrelay.ops.metrics` turns the differences into metrics when
it is scraped (and once a second under gunicorn's multiprocess mode).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

#: How many publish-to-write latencies are kept until the metrics take them.
LATENCY_SAMPLES = 10_000


@dataclass(slots=True)
class Stats:
    """Totals since the process started, and the gauges of what is open now."""

    published: int = 0
    delivered: int = 0
    bytes_sent: int = 0
    #: Writes to WebSockets and SSE streams (``send`` calls): ``delivered / writes`` is how
    #: many messages one write carries on average (see ``WSRELAY_WRITE_DELAY``).
    writes: int = 0
    slow_consumer_closes: int = 0
    #: Close codes of ended WebSockets (1006 when no close frame was exchanged).
    closes: Counter[int] = field(default_factory=Counter)
    #: Open connections by transport: websocket, sse, poll.
    connections: Counter[str] = field(default_factory=Counter)
    #: Messages delivered per channel since the dashboard last asked (the busiest channels).
    channel_messages: Counter[str] = field(default_factory=Counter)
    #: Seconds from publish to the last local non-blocking write, not yet observed.
    latencies: list[float] = field(default_factory=list)

    def record_latency(self, seconds: float) -> None:
        if len(self.latencies) < LATENCY_SAMPLES:
            self.latencies.append(seconds)

    def take_latencies(self) -> list[float]:
        taken, self.latencies = self.latencies, []
        return taken

    def take_busiest(self, count: int = 10) -> list[tuple[str, int]]:
        """The channels with most messages since the last call, then start counting anew."""
        busiest = self.channel_messages.most_common(count)
        self.channel_messages.clear()
        return busiest

    def snapshot(self) -> dict[str, object]:
        """The totals and gauges as JSON-ready values."""
        return {
            "published": self.published,
            "delivered": self.delivered,
            "bytes_sent": self.bytes_sent,
            "writes": self.writes,
            "slow_consumer_closes": self.slow_consumer_closes,
            "closes": {str(code): n for code, n in sorted(self.closes.items())},
            "connections": dict(self.connections),
        }
