"""Configuration: every option, its default, and how it is read from ``WSRELAY_*``.

Options live in Flask config under their environment names (``WSRELAY_...``)
so they never collide with an application's own keys. The table below is the
single source for defaults, parsing and the README's option list.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .origins import canonical_origin
from .pacing import WRITE_DELAY


class ConfigError(ValueError):
    """An option with a value wsrelay cannot run with."""


ENVIRONMENTS = ("development", "production")
#: Shorter keys are refused in production: a token signed with one could be forged.
MIN_SECRET_LENGTH = 32


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise ValueError("must be a finite, positive number")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < math.inf:
        raise ValueError("must be 0 or a finite, positive number")
    return value


def _word_list(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.replace(",", " ").split() if part)


def _origin_list(text: str) -> tuple[str, ...]:
    """Origins in canonical form (what browsers send), or ``*``."""
    origins = []
    for word in _word_list(text):
        origin = word if word == "*" else canonical_origin(word)
        if origin is None:
            raise ValueError(f"{word!r} is not an origin: scheme://host[:port]")
        origins.append(origin)
    return tuple(origins)


def _key_prefix(text: str) -> str:
    if not text or any(c in text for c in "{} \t\r\n"):
        raise ValueError("must be non-empty, without braces (they make Redis Cluster hash tags) "
                         "or white space")
    return text


def _log_format(text: str) -> str:
    if text not in ("plain", "json"):
        raise ValueError("must be plain or json")
    return text


def _flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("must be 1/0, true/false, yes/no or on/off")


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 or a positive integer")
    return value


def _environment(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in ENVIRONMENTS:
        raise ValueError("must be development or production")
    return lowered


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    parse: Callable[[str], Any]
    help: str


OPTIONS: tuple[Option, ...] = (
    Option("WSRELAY_BROKER_URL", "memory://", str,
           "`memory://` (one process) or `redis://host:port/db`, `rediss://…`, `unix:///path`, "
           "`redis+sentinel://host:port[,host:port…]/master[/db]` (many processes and hosts)"),
    Option("WSRELAY_REDIS_PREFIX", "wsrelay", _key_prefix,
           "prefix of every Redis key and pub/sub channel (several relays can share one Redis)"),
    Option("WSRELAY_HISTORY_SIZE", 1000, _positive_int,
           "messages retained per channel for `since` resume, long-poll and SSE"),
    Option("WSRELAY_HISTORY_MEMORY", 256 << 20, _positive_int,
           "bytes of history the in-memory broker keeps in all, over every channel; past it "
           "the oldest messages go first (Redis: its own `maxmemory`)"),
    Option("WSRELAY_HISTORY_TTL", 300.0, _positive_float,
           "seconds a retained message is kept"),
    Option("WSRELAY_MAX_MESSAGE_SIZE", 1 << 20, _positive_int,
           "largest message in bytes (WebSocket close 1009, HTTP 413 above it)"),
    Option("WSRELAY_COMPRESSION", True, _flag,
           "permessage-deflate on WebSockets that offer it (`0`: never)"),
    Option("WSRELAY_COMPRESSION_MIN_SIZE", 256, _non_negative_int,
           "bytes below which a message goes uncompressed on a compressing WebSocket"),
    Option("WSRELAY_SUBSCRIBER_BUFFER", 4 << 20, _positive_int,
           "bytes queued to one slow WebSocket subscriber before it is closed with 1013"),
    Option("WSRELAY_MAX_SUBSCRIPTIONS", 100, _positive_int,
           "channels one wsrelay.v1 WebSocket may subscribe to at once"),
    Option("WSRELAY_ALLOWED_ORIGINS", (), _origin_list,
           "browser origins allowed besides the server's own (space/comma separated, `*`: any)"),
    Option("WSRELAY_ALLOWED_HOSTS", (), _word_list,
           "host names the relay answers to (`.example.com`: and its subdomains, `*`: any); "
           "empty: on a loopback address only loopback names; required in production"),
    Option("WSRELAY_REQUIRE_ORIGIN", False, _flag,
           "1: refuse requests without `Origin` (browsers only); 0: allow curl and services"),
    Option("WSRELAY_ENV", "development", _environment,
           "`production` refuses to start without a WSRELAY_SECRET_KEY of 32+ characters "
           "and without WSRELAY_ALLOWED_HOSTS"),
    Option("WSRELAY_SECRET_KEY", "", str,
           "key for signing tokens; empty means a random key per process (development only)"),
    Option("WSRELAY_REQUIRE_TOKEN", False, _flag,
           "1: every channel needs a token; 0: only `private-*` channels do"),
    Option("WSRELAY_PUBLISH_RATE", 100.0, _positive_float,
           "messages per second one client IP (and one token subject) may publish, over all "
           "its WebSockets and HTTP requests"),
    Option("WSRELAY_PUBLISH_BURST", 200, _positive_int,
           "messages a publisher may send at once above the rate"),
    Option("WSRELAY_CONNECT_RATE", 50.0, _positive_float,
           "new WebSockets, SSE streams and long-polls per second one client IP may open"),
    Option("WSRELAY_CONNECT_BURST", 500, _positive_int,
           "new connections one client IP may open at once above the connect rate"),
    Option("WSRELAY_CONTROL_FRAME_RATE", 50.0, _positive_float,
           "pings, pongs and small fragments one WebSocket may send per second on average"),
    Option("WSRELAY_CONTROL_FRAME_BURST", 500, _positive_int,
           "pings, pongs and small fragments a WebSocket may send at once above the rate"),
    Option("WSRELAY_MAX_CONNECTIONS_PER_IP", 256, _positive_int,
           "open WebSockets, SSE streams and held long-polls of one client IP"),
    Option("WSRELAY_MAX_STREAMS", 5000, _positive_int,
           "concurrent SSE streams and long-polls of one worker"),
    Option("WSRELAY_LIMITS_EXEMPT", ("127.0.0.1", "::1", "::ffff:127.0.0.1"), _word_list,
           "client addresses without per-IP cap or publish rate (a proxy on this host)"),
    Option("WSRELAY_HTTP_IDLE_TIMEOUT", 30.0, _positive_float,
           "seconds a client has to send a request head, and an idle keep-alive connection lasts"),
    Option("WSRELAY_PROXY_HOPS", 0, _non_negative_int,
           "reverse proxies in front that set X-Forwarded-For (the client IP is read from it)"),
    Option("WSRELAY_PING_INTERVAL", 20.0, _positive_float,
           "seconds between the server's WebSocket pings"),
    Option("WSRELAY_PING_TIMEOUT", 20.0, _positive_float,
           "seconds a WebSocket may stay silent after a ping before it is dropped"),
    Option("WSRELAY_POLL_TIMEOUT", 25.0, _positive_float,
           "default seconds a long-poll is held (a request may ask for up to 60)"),
    Option("WSRELAY_SSE_KEEPALIVE", 15.0, _positive_float,
           "seconds between SSE keep-alive comments"),
    Option("WSRELAY_WRITE_DELAY", WRITE_DELAY, _non_negative_float,
           "seconds a WebSocket written to less than this ago gathers messages before the next "
           "write (one `send` for several); an idle one is written at once; 0: one write per "
           "message"),
    Option("WSRELAY_CLOSE_TIMEOUT", 5.0, _positive_float,
           "seconds to wait for a WebSocket peer to finish the closing handshake"),
    Option("WSRELAY_LOG_FORMAT", "plain", _log_format,
           "`plain` log lines, or `json`: one object per line, connection numbers as keys"),
    Option("WSRELAY_DRAIN_TIMEOUT", 5.0, _positive_float,
           "seconds a stopping server gives clients to receive what is queued before it exits"),
    Option("WSRELAY_ADMIN_TOKEN", "", str,
           "token for /metrics and /dashboard (`Authorization: Bearer` or `?token=`); empty: "
           "only clients on this host's loopback interface may read them"),
    Option("WSRELAY_WORKERS_CHECK", True, _flag,
           "refuse to start several gunicorn workers on the in-memory broker"),
)

DEFAULTS: dict[str, Any] = {option.name: option.default for option in OPTIONS}


def from_environ(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The options set in the environment, parsed; raise :class:`ConfigError` on a bad value."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw = environ.get(option.name)
        if raw is None:
            continue
        try:
            values[option.name] = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{option.name}={raw!r}: {exc}") from None
    return values


def validate(config: Mapping[str, Any]) -> None:
    """Refuse combinations that cannot work, with a message naming the options."""
    if config["WSRELAY_SUBSCRIBER_BUFFER"] < 2 * config["WSRELAY_MAX_MESSAGE_SIZE"]:
        raise ConfigError(
            "WSRELAY_SUBSCRIBER_BUFFER must be at least twice WSRELAY_MAX_MESSAGE_SIZE "
            "(a subscriber must be able to hold one whole message and the next)"
        )
    scheme = str(config["WSRELAY_BROKER_URL"]).split(":", 1)[0]
    if scheme not in {"memory", "redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel"}:
        raise ConfigError(
            f"WSRELAY_BROKER_URL: unknown scheme {scheme!r} (memory://, redis://, rediss://, "
            "unix://, redis+sentinel://)"
        )
    secret = config["WSRELAY_SECRET_KEY"]
    if config["WSRELAY_ENV"] == "production" and len(secret) < MIN_SECRET_LENGTH:
        raise ConfigError(
            f"WSRELAY_ENV=production needs a WSRELAY_SECRET_KEY of at least {MIN_SECRET_LENGTH} "
            "characters, the same on every worker and host (tokens are signed with it); make one "
            "with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    if config["WSRELAY_ENV"] == "production" and not config["WSRELAY_ALLOWED_HOSTS"]:
        raise ConfigError(
            "WSRELAY_ENV=production needs WSRELAY_ALLOWED_HOSTS: the host names clients use to "
            "reach this relay (e.g. 'relay.example.com', '.example.com' for every subdomain)"
        )
