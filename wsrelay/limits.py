"""Limits on what one client may take: publish rate, open connections, streams.

Plain bookkeeping with ``now`` passed in, so it is testable without clocks or
sockets. A refusal is an :class:`~wsrelay.errors.ApiError` with a
``Retry-After``: 429 when one client is over its share, 503 when the worker
as a whole is full. Counts are per worker process (each gunicorn worker keeps
its own), which is where the memory and greenlets they protect live.

Rates are kept per client, not per connection: one table of buckets by
client IP (and by token subject) serves every WebSocket and HTTP request of
that client, so reconnecting starts no fresh bucket.

Addresses in WSRELAY_LIMITS_EXEMPT (by default this host's own) have no
per-IP cap, connect rate or publish rate: behind a reverse proxy on the same
host every client would otherwise share the proxy's address and its one
quota. A token's subject is limited wherever it comes from.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ApiError

#: Seconds a client refused for a full worker or too many connections is told to wait.
RETRY_LATER = 5
#: A table of rate buckets is swept of idle entries when it grows past this.
_PRUNE_MIN = 1024
#: Keys of token subjects in the publish table (no IP address starts with it).
_SUBJECT = "sub:"


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


class RateTable:
    """Token buckets of one rate and burst, one per key (a client IP, a token subject).

    A bucket that has refilled is the same as a new one, so the table forgets
    those when it grows: it holds only the keys active within the last
    ``burst / rate`` seconds, however many came and went before.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}
        self._prune_at = _PRUNE_MIN

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, keys: tuple[str, ...], now: float) -> float:
        """Spend one token of every key's bucket when each has one and return 0; else spend
        nothing and return the seconds until each has one."""
        buckets = self._buckets
        if len(keys) == 1:  # the usual case, kept to one lookup
            bucket = buckets.get(keys[0]) or self._add(keys[0], now)
            return 0.0 if bucket.take(now) else bucket.retry_after(now)
        held = [buckets.get(key) or self._add(key, now) for key in keys]
        wait = max(bucket.retry_after(now) for bucket in held)
        if wait <= 0.0:
            for bucket in held:
                bucket.take(now)
        return wait

    def _add(self, key: str, now: float) -> TokenBucket:
        if len(self._buckets) >= self._prune_at:
            self._buckets = {
                known: bucket for known, bucket in self._buckets.items() if not bucket.full(now)
            }
            self._prune_at = max(_PRUNE_MIN, 2 * len(self._buckets))
        bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        return bucket


class Publisher:
    """The buckets one client's messages count against, whichever way it sends them: its
    IP's (unless exempt) and its token subject's (if any). All its WebSockets and HTTP
    publishes share them, so reconnecting gains nothing."""

    __slots__ = ("keys", "table")

    def __init__(self, table: RateTable, keys: tuple[str, ...]) -> None:
        self.table = table
        self.keys = keys

    def wait(self, now: float) -> float:
        """Count one message and return 0, or the seconds until one is allowed."""
        return self.table.take(self.keys, now)

    def take(self, now: float) -> bool:
        """Count one message; False when it is over the rate."""
        return self.table.take(self.keys, now) <= 0.0


class Limits:
    """One worker's limits (``relay.limits``): publish and connect rates, per-IP and stream
    counts."""

    def __init__(
        self, *, publish_rate: float, publish_burst: int, max_per_ip: int, max_streams: int,
        connect_rate: float, connect_burst: int, exempt: Iterable[str] = (),
    ) -> None:
        self.publish_rate = publish_rate
        self.publish_burst = publish_burst
        self.max_per_ip = max_per_ip
        self.max_streams = max_streams
        self.exempt = frozenset(exempt)
        self.streams = 0
        self._per_ip: dict[str, int] = {}
        self.publishes = RateTable(publish_rate, publish_burst)
        self.connects = RateTable(connect_rate, connect_burst)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Limits:
        return cls(
            publish_rate=config["WSRELAY_PUBLISH_RATE"],
            publish_burst=config["WSRELAY_PUBLISH_BURST"],
            max_per_ip=config["WSRELAY_MAX_CONNECTIONS_PER_IP"],
            max_streams=config["WSRELAY_MAX_STREAMS"],
            connect_rate=config["WSRELAY_CONNECT_RATE"],
            connect_burst=config["WSRELAY_CONNECT_BURST"],
            exempt=config["WSRELAY_LIMITS_EXEMPT"],
        )

    # -- publish rate ---------------------------------------------------------------

    def publisher(self, client: str, subject: str | None = None) -> Publisher | None:
        """What the messages of ``client`` (its IP) count against; with a token ``subject``,
        that subject's bucket too, wherever it connects from (an exempt address included:
        behind a proxy on this host the subject is what tells clients apart). None:
        unlimited."""
        keys: tuple[str, ...] = () if client in self.exempt else (client,)
        if subject is not None:
            keys += (_SUBJECT + subject,)
        return Publisher(self.publishes, keys) if keys else None

    def check_publish(self, client: str, now: float, subject: str | None = None) -> None:
        """Count one HTTP publish of ``client``; 429 when it is over the rate."""
        publisher = self.publisher(client, subject)
        if publisher is None:
            return
        wait = publisher.wait(now)
        if wait > 0.0:
            raise ApiError(
                429, "rate_limited",
                f"over {self.publish_rate:g} messages per second (burst {self.publish_burst})",
                headers={"Retry-After": _seconds(wait)},
            )

    # -- connect rate ---------------------------------------------------------------

    def check_connect(self, client: str, now: float) -> None:
        """Count one admission (a WebSocket upgrade, an SSE stream, a long-poll) of
        ``client``; 429 when its IP connects faster than the connect rate."""
        if client in self.exempt:
            return
        wait = self.connects.take((client,), now)
        if wait > 0.0:
            table = self.connects
            raise ApiError(
                429, "connect_rate_limited",
                f"over {table.rate:g} new connections per second from one address "
                f"(burst {table.burst})",
                headers={"Retry-After": _seconds(wait)},
            )

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

    def admit(self, client: str, now: float, *, stream: bool) -> None:
        """A new connection of ``client``: :meth:`check_connect`, then :meth:`enter` (every
        transport, and a long-poll's every repeat, in this order)."""
        self.check_connect(client, now)
        self.enter(client, stream=stream)

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
            "publishers": len(self.publishes),
            "connecting": len(self.connects),
        }


def _seconds(wait: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least one."""
    return str(max(1, math.ceil(wait)))
