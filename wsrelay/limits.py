"""Limits on what one client may take: publish rate, open connections, streams.

Plain bookkeeping with ``now`` passed in, so it is testable without clocks or
sockets. A refusal is an :class:`~wsrelay.errors.ApiError` with a
``Retry-After``: 429 when one client is over its share, 503 when the worker
as a whole is full. Counts are per worker process (each gunicorn worker keeps
its own), which is where the memory and greenlets they protect live.

Addresses in WSRELAY_LIMITS_EXEMPT (by default this host's own) have no
per-IP cap and no publish rate: behind a reverse proxy on the same host every
client would otherwise share the proxy's address and its one quota.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ApiError

#: Seconds a client refused for a full worker or too many connections is told to wait.
RETRY_LATER = 5
#: The table of HTTP publishers is swept of idle entries when it grows past this.
_PRUNE_MIN = 1024


class TokenBucket:
    """``rate`` messages per second on average, up to ``burst`` at once."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def _refill(self, now: float) -> float:
        return min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        tokens = self._refill(now)
        self.stamp = now
        allowed = tokens >= 1.0
        self.tokens = tokens - 1.0 if allowed else tokens
        return allowed

    def retry_after(self, now: float) -> float:
        """Seconds until the next token."""
        return max(0.0, (1.0 - self._refill(now)) / self.rate)

    def full(self, now: float) -> bool:
        """Refilled to the brim: indistinguishable from a new bucket."""
        return self._refill(now) >= self.burst


class Limits:
    """One worker's limits (``relay.limits``): publish rate, per-IP and stream counts."""

    def __init__(
        self, *, publish_rate: float, publish_burst: int, max_per_ip: int, max_streams: int,
        exempt: Iterable[str] = (),
    ) -> None:
        self.publish_rate = publish_rate
        self.publish_burst = publish_burst
        self.max_per_ip = max_per_ip
        self.max_streams = max_streams
        self.exempt = frozenset(exempt)
        self.streams = 0
        self._per_ip: dict[str, int] = {}
        self._publishers: dict[str, TokenBucket] = {}
        self._prune_at = _PRUNE_MIN

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Limits:
        return cls(
            publish_rate=config["WSRELAY_PUBLISH_RATE"],
            publish_burst=config["WSRELAY_PUBLISH_BURST"],
            max_per_ip=config["WSRELAY_MAX_CONNECTIONS_PER_IP"],
            max_streams=config["WSRELAY_MAX_STREAMS"],
            exempt=config["WSRELAY_LIMITS_EXEMPT"],
        )

    # -- publish rate ---------------------------------------------------------------

    def publish_bucket(self, client: str, now: float) -> TokenBucket | None:
        """A bucket for the messages of one WebSocket of ``client`` (None: unlimited)."""
        if client in self.exempt:
            return None
        return TokenBucket(self.publish_rate, self.publish_burst, now)

    def check_publish(self, client: str, now: float) -> None:
        """Count one HTTP publish of ``client`` (its IP); 429 when it is over the rate."""
        if client in self.exempt:
            return
        bucket = self._publishers.get(client)
        if bucket is None:
            if len(self._publishers) >= self._prune_at:
                self._prune(now)
            bucket = self._publishers[client] = TokenBucket(
                self.publish_rate, self.publish_burst, now
            )
        if not bucket.take(now):
            raise ApiError(
                429, "rate_limited",
                f"over {self.publish_rate:g} messages per second (burst {self.publish_burst})",
                headers={"Retry-After": str(max(1, math.ceil(bucket.retry_after(now))))},
            )

    def _prune(self, now: float) -> None:
        """Forget the buckets that have refilled (a new one is the same), so the table holds
        only clients that published within the last ``burst / rate`` seconds."""
        self._publishers = {
            client: bucket for client, bucket in self._publishers.items() if not bucket.full(now)
        }
        self._prune_at = max(_PRUNE_MIN, 2 * len(self._publishers))

    # -- open connections -----------------------------------------------------------

    def enter(self, client: str, *, stream: bool) -> None:
        """Count an open WebSocket (``stream=False``), SSE stream or long-poll of ``client``;
        refuse when its IP or the worker is full. Every ``enter`` needs one :meth:`leave`."""
        exempt = client in self.exempt
        count = 0 if exempt else self._per_ip.get(client, 0)
        if count >= self.max_per_ip:
            raise ApiError(
                429, "too_many_connections",
                f"{self.max_per_ip} connections from one address are open already",
                headers={"Retry-After": str(RETRY_LATER)},
            )
        if stream and self.streams >= self.max_streams:
            raise ApiError(
                503, "too_many_streams",
                "this worker holds as many long-polls and SSE streams as it may; retry later",
                headers={"Retry-After": str(RETRY_LATER)},
            )
        if not exempt:
            self._per_ip[client] = count + 1
        if stream:
            self.streams += 1

    def leave(self, client: str, *, stream: bool) -> None:
        if client not in self.exempt:
            count = self._per_ip.pop(client) - 1
            if count:
                self._per_ip[client] = count
        if stream:
            self.streams -= 1

    def counts(self) -> dict[str, int]:
        """Numbers for health checks and tests."""
        return {
            "connections": sum(self._per_ip.values()),
            "addresses": len(self._per_ip),
            "streams": self.streams,
            "publishers": len(self._publishers),
        }
