"""From ``WSRELAY_BROKER_URL`` to connection settings: one Redis, or a master found by Sentinel.

``redis://``, ``rediss://`` and ``unix://`` name one Redis (redis-py reads
them). ``redis+sentinel://[[user]:password@]host:port[,host:port...]/<master
name>[/<db>]`` (``rediss+sentinel://`` for TLS) names the sentinels and the
master they watch: each connection asks the sentinels for the master's
address when it connects (redis-py's ``SentinelConnectionPool``), so after a
failover the next connection goes to the new master. The password and user
are the master's; ``?sentinel_password=`` gives the sentinels' own.
``redis+cluster://[[user]:password@]host:port[,host:port...]`` (``rediss+cluster://``
for TLS) names nodes of a Redis Cluster to learn the slot map from
(:func:`parse_cluster_url`); each master of it is then reached by a plain
``redis://`` (or ``rediss://``) URL with the same user, password and query.

Either way the result is a connection pool that only holds settings: the
command pipeline and the listener each make their one connection from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


@dataclass(frozen=True)
class SentinelUrl:
    """What a ``redis+sentinel://`` URL says."""

    sentinels: list[tuple[str, int]]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    tls: bool = False


@dataclass(frozen=True)
class ClusterUrl:
    """What a ``redis+cluster://`` URL says."""

    nodes: list[tuple[str, int]]
    username: str | None = None
    password: str | None = None
    tls: bool = False
    query: str = ""

    def node_url(self, host: str, port: int) -> str:
        """A plain URL of one node, with this URL's credentials, TLS and query."""
        userinfo = ""
        if self.username or self.password:
            userinfo = f"{quote(self.username or '')}:{quote(self.password or '')}@"
        netloc = f"[{host}]" if ":" in host else host
        query = f"?{self.query}" if self.query else ""
        return f"{'rediss' if self.tls else 'redis'}://{userinfo}{netloc}:{port}/0{query}"


def _hosts(netloc: str, what: str) -> tuple[list[tuple[str, int]], str | None, str | None]:
    """``[[user]:password@]host:port[,host:port...]``: the addresses, user and password."""
    userinfo, _, hosts = netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    addresses = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ValueError(f"a {what} needs host:port, not {host!r}")
        addresses.append((name.strip("[]"), int(port)))
    return addresses, unquote(username) or None, unquote(password) or None


def parse_cluster_url(url: str) -> ClusterUrl:
    """Read a ``redis+cluster://`` URL; ValueError says what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"not a Cluster URL: {parts.scheme}://")
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has database 0 only")
    nodes, username, password = _hosts(parts.netloc, "cluster node")
    return ClusterUrl(nodes, username, password, parts.scheme == "rediss+cluster", parts.query)


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Read a ``redis+sentinel://`` URL; ValueError says what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"not a Sentinel URL: {parts.scheme}://")
    sentinels, username, password = _hosts(parts.netloc, "sentinel")
    path = [unquote(part) for part in parts.path.split("/") if part]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("the path is /<master name>[/<db>]")
    query = parse_qs(parts.query)
    return SentinelUrl(
        sentinels, path[0], int(path[1]) if len(path) == 2 else 0, username, password,
        query.get("sentinel_password", [None])[0], parts.scheme == "rediss+sentinel",
    )


def connection_pool(url: str, timeout: float) -> redis.ConnectionPool:
    """Connection settings for ``url``: every connection times out after ``timeout`` and is
    never retried by redis-py (a retried publish could be stored twice)."""
    options: dict[str, Any] = {
        "socket_timeout": timeout, "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    if url.split(":", 1)[0] not in SENTINEL_SCHEMES:
        pool = redis.ConnectionPool.from_url(url, **options)
    else:
        spec = parse_sentinel_url(url)
        tls = {"ssl": True} if spec.tls else {}
        sentinel = Sentinel(
            spec.sentinels, sentinel_kwargs={**options, **tls,
                                             "password": spec.sentinel_password},
            **options,
        )
        pool = SentinelConnectionPool(
            spec.master, sentinel, db=spec.db, username=spec.username, password=spec.password,
            **options, **tls,
        )
    pool.connection_kwargs["decode_responses"] = False
    return pool
