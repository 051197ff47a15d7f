"""Configuration: every option, its default, and the one loader that reads them all.

Options live in Flask config under their environment names (``WSRELAY_...``)
so they never collide with an application's own keys. The table below is the
single source for defaults, parsing and the option list of
docs/configuration.md. :func:`load` reads every source — a TOML file named by
``WSRELAY_CONFIG_FILE``, the environment, a mapping or ``app.config`` — through
the same parsers: a string is read as the environment variable would be, any
other value must have the option's type, and whatever is wrong stops the start
with one line naming the option.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .errors import ConfigError
from .origins import canonical_origin
from .pacing import SSE_LINGER, WRITE_DELAY

__all__ = ["DEFAULTS", "OPTIONS", "ConfigError", "Option", "from_environ", "load", "redact_url",
           "validate"]

PREFIX = "WSRELAY_"
ENVIRONMENTS = ("development", "production")
BROKER_SCHEMES = ("memory", "redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel",
                  "redis+cluster", "rediss+cluster")
#: Shorter keys are refused in production: a token signed with one could be forged.
MIN_SECRET_LENGTH = 32
#: Options whose values are never shown in an error or a log line.
SECRETS = ("WSRELAY_SECRET_KEY", "WSRELAY_ADMIN_TOKEN")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _integer(minimum: int) -> Callable[[Any], int]:
    """An integer of at least ``minimum``: digits in a string, or an int (not a bool)."""
    what = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"

    def parse(value: Any) -> int:
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ValueError(f"must be {what}") from None
        elif isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be {what}, not {type(value).__name__}")
        if value < minimum:
            raise ValueError(f"must be {what}")
        return value

    return parse


def _number(value: Any, what: str) -> float:
    """A number from a string, an int or a float (not a bool)."""
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise ValueError(f"must be {what}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be {what}, not {type(value).__name__}")
    return float(value)


def _positive_float(value: Any) -> float:
    """Seconds or a rate: a finite, positive number (a string, an int or a float)."""
    what = "a finite, positive number"
    number = _number(value, what)
    if not 0 < number < math.inf:
        raise ValueError(f"must be {what}")
    return number


def _non_negative_float(value: Any) -> float:
    """Seconds that may be 0 (off)."""
    what = "0 or a finite, positive number"
    number = _number(value, what)
    if not 0 <= number < math.inf:
        raise ValueError(f"must be {what}")
    return number


def _flag(value: Any) -> bool:
    """On or off: true/false (or 1/0), or a string as the environment holds it."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise ValueError("must be 1/0, true/false, yes/no or on/off")


def _text(check: Callable[[str], str] | None = None) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be a string, not {type(value).__name__}")
        return check(value) if check else value

    return parse


def _words(check: Callable[[str], str] | None = None) -> Callable[[Any], tuple[str, ...]]:
    """A list: a string of words separated by spaces or commas, or a list of such strings."""

    def parse(value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        elif not isinstance(value, list | tuple | set | frozenset) or not all(
            isinstance(item, str) for item in value
        ):
            raise ValueError("must be a list of strings, or one string of words separated "
                             "by spaces or commas")
        words = [word for item in value for word in item.replace(",", " ").split()]
        return tuple(check(word) if check else word for word in words)

    return parse


def _origin(word: str) -> str:
    """An origin in canonical form (what browsers send), or ``*``."""
    if word == "*":
        return word
    origin = canonical_origin(word)
    if origin is None:
        raise ValueError(f"{word!r} is not an origin: scheme://host[:port]")
    return origin


def _address(word: str) -> str:
    try:
        ipaddress.ip_address(word)
    except ValueError:
        raise ValueError(f"{word!r} is not an IP address") from None
    return word


def _url_prefix(text: str) -> str:
    """Empty, or a path that starts with ``/`` and does not end with one: ``/realtime``."""
    text = text.strip()
    if text and (not text.startswith("/") or text.endswith("/") or "//" in text
                 or any(c in text for c in "<>?#% \t")):
        raise ValueError("must be empty or a path such as /realtime (no trailing slash)")
    return text


def _bind(text: str) -> str:
    """``host:port`` or ``unix:/path`` (gunicorn's -b)."""
    if not text.startswith("unix:") and not text.rpartition(":")[2].isdigit():
        raise ValueError("must be host:port or unix:/path")
    return text


def _key_prefix(text: str) -> str:
    if not text or any(c in text for c in "{} \t\r\n"):
        raise ValueError("must be non-empty, without braces (they make Redis Cluster hash tags) "
                         "or white space")
    return text


def _broker_url(text: str) -> str:
    """``memory://`` or a Redis URL whose database, if named, is a number."""
    parts = urlsplit(text.strip())
    if parts.scheme not in BROKER_SCHEMES:
        raise ValueError(f"unknown scheme {parts.scheme!r}: "
                         + ", ".join(f"{scheme}://" for scheme in BROKER_SCHEMES))
    if parts.scheme in ("redis", "rediss"):
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ValueError(f"the database is a number (redis://host:6379/0), not {db!r}")
        try:
            parts.port  # noqa: B018 (raises for a port that is no number)
        except ValueError:
            raise ValueError("the port is a number") from None
    for db in parse_qs(parts.query).get("db", []):
        if not db.isdigit():
            raise ValueError(f"db is a number, not {db!r}")
    return text.strip()


def _choice(*choices: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        lowered = text.strip().lower()
        if lowered not in choices:
            raise ValueError("must be " + " or ".join(choices))
        return lowered

    return check


_positive_int = _integer(1)


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    #: Takes a string as the environment holds it, or a value of the option's type.
    parse: Callable[[Any], Any]
    help: str


OPTIONS: tuple[Option, ...] = (
    Option("WSRELAY_BROKER_URL", "memory://", _text(_broker_url),
           "`memory://` (one process) or `redis://host:port/db`, `rediss://…`, `unix:///path`, "
           "`redis+sentinel://host:port[,host:port…]/master[/db]`, "
           "`redis+cluster://host:port[,host:port…]` (many processes and hosts)"),
    Option("WSRELAY_REDIS_PREFIX", "wsrelay", _text(_key_prefix),
           "prefix of every Redis key and pub/sub channel (several relays can share one Redis)"),
    Option("WSRELAY_REDIS_SEND_DELAY", 0.005, _non_negative_float,
           "seconds a busy worker gathers commands before its next round trip to Redis (one "
           "script call for several publishes); a command after a quiet spell goes at once; "
           "0: each round trip as soon as the last one is answered"),
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
    Option("WSRELAY_COMPRESSION_MIN_SIZE", 256, _integer(0),
           "bytes below which a message goes uncompressed on a compressing WebSocket"),
    Option("WSRELAY_SUBSCRIBER_BUFFER", 4 << 20, _positive_int,
           "bytes queued to one slow WebSocket subscriber before it is closed with 1013"),
    Option("WSRELAY_MAX_SUBSCRIPTIONS", 100, _positive_int,
           "channels one wsrelay.v1 WebSocket may subscribe to at once"),
    Option("WSRELAY_ALLOWED_ORIGINS", (), _words(_origin),
           "browser origins allowed besides the server's own (space/comma separated, `*`: any)"),
    Option("WSRELAY_ALLOWED_HOSTS", (), _words(),
           "host names the relay answers to (`.example.com`: and its subdomains, `*`: any); "
           "empty: on a loopback address only loopback names; required in production"),
    Option("WSRELAY_REQUIRE_ORIGIN", False, _flag,
           "1: refuse requests without `Origin` (browsers only); 0: allow curl and services"),
    Option("WSRELAY_ENV", "development", _text(_choice(*ENVIRONMENTS)),
           "`production` refuses to start without a WSRELAY_SECRET_KEY of 32+ characters "
           "and without WSRELAY_ALLOWED_HOSTS"),
    Option("WSRELAY_SECRET_KEY", "", _text(),
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
    Option("WSRELAY_LIMITS_EXEMPT", ("127.0.0.1", "::1", "::ffff:127.0.0.1"), _words(_address),
           "client addresses without per-IP cap or publish rate (a proxy on this host)"),
    Option("WSRELAY_HTTP_IDLE_TIMEOUT", 30.0, _positive_float,
           "seconds a client has to send a request head, and an idle keep-alive connection lasts"),
    Option("WSRELAY_PROXY_HOPS", 0, _integer(0),
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
    Option("WSRELAY_SSE_LINGER", SSE_LINGER, _non_negative_float,
           "seconds an SSE stream's events, once the write window has ended, wait for the next "
           "message to go out with it; 0: at the window's end"),
    Option("WSRELAY_CLOSE_TIMEOUT", 5.0, _positive_float,
           "seconds to wait for a WebSocket peer to finish the closing handshake"),
    Option("WSRELAY_LOG_FORMAT", "plain", _text(_choice("plain", "json")),
           "`plain` log lines, or `json`: one object per line, connection numbers as keys"),
    Option("WSRELAY_DRAIN_TIMEOUT", 5.0, _positive_float,
           "seconds a stopping server gives clients to receive what is queued before it exits"),
    Option("WSRELAY_ADMIN_TOKEN", "", _text(),
           "token for /metrics and /dashboard (`Authorization: Bearer` or `?token=`); empty: "
           "only clients on this host's loopback interface may read them"),
    Option("WSRELAY_WORKERS_CHECK", True, _flag,
           "refuse to start several gunicorn workers on the in-memory broker"),
    Option("WSRELAY_URL_PREFIX", "", _text(_url_prefix),
           "path every wsrelay route is served under (`/realtime`: `/realtime/ws/<channel>`); "
           "empty: the contract's paths"),
    Option("WSRELAY_DIRECT_PATH", True, _flag,
           "answer long-polls and WebSocket upgrades without Flask when nothing needs it "
           "(`0`: Flask answers every request)"),
    Option("WSRELAY_DEMO_PAGE", False, _flag,
           "serve the demo page at the prefix's `/` (on in `create_app()`, off for `Relay(app)`)"),
    Option("WSRELAY_CONFIG_FILE", "", _text(),
           "a TOML file of options (`WSRELAY_HISTORY_SIZE = 100`), read under the environment "
           "and app.config"),
    Option("WSRELAY_BIND", "127.0.0.1:8000", _text(_bind),
           "where gunicorn listens (`gunicorn -c python:wsrelay.gunicorn_conf`; -b overrides)"),
    Option("WSRELAY_WORKER_CONNECTIONS", 10000, _positive_int,
           "greenlets per gunicorn worker: each WebSocket, SSE stream and held long-poll is one"),
)

DEFAULTS: dict[str, Any] = {option.name: option.default for option in OPTIONS}
_BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}


def _checked(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The ``WSRELAY_*`` entries of ``values``, parsed; other keys are not ours."""
    parsed: dict[str, Any] = {}
    for name, value in values.items():
        if not isinstance(name, str) or not name.startswith(PREFIX):
            continue
        option = _BY_NAME.get(name)
        if option is None:
            close = difflib.get_close_matches(name, _BY_NAME, n=1, cutoff=0.6)
            hint = f": did you mean {close[0]}?" if close else " (see docs/configuration.md)"
            raise ConfigError(f"{name} ({where}) is not a wsrelay option{hint}")
        try:
            parsed[name] = option.parse(value)
        except ValueError as exc:
            shown = value if isinstance(value, str | int | float) else type(value).__name__
            if name in SECRETS:
                shown = "<redacted>"
            elif name == "WSRELAY_BROKER_URL" and isinstance(shown, str):
                shown = redact_url(shown)
            raise ConfigError(f"{name}={shown!r} ({where}): {exc}") from None
    return parsed


def redact_url(url: str) -> str:
    """``url`` without its password (``redis://:***@host:6379/0``), for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{parts.netloc.rpartition('@')[2]}").geturl()


def from_environ(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The options set in the environment, parsed (see :func:`load` for every source)."""
    return _checked(os.environ if environ is None else environ, "environment")


def read_file(path: str) -> dict[str, Any]:
    """The options of a TOML file: top-level keys named as the environment variables."""
    try:
        with open(path, "rb") as file:
            values = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"WSRELAY_CONFIG_FILE={path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"WSRELAY_CONFIG_FILE={path!r}: not TOML: {exc}") from None
    if "WSRELAY_CONFIG_FILE" in values:
        raise ConfigError(f"{path}: WSRELAY_CONFIG_FILE cannot name another file")
    return _checked(values, path)


def load(
    config: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Every option's value, each source over the one before: the defaults, the file named
    by ``WSRELAY_CONFIG_FILE``, the environment, then ``config`` (a mapping, or an app's
    ``app.config``: its ``WSRELAY_*`` keys). Every value goes through the option's parser;
    a bad value, an unknown ``WSRELAY_*`` name or an impossible combination raises
    :class:`ConfigError` with one line that names the option."""
    environment = from_environ(environ)
    given = _checked(config or {}, "config")
    path = given.get("WSRELAY_CONFIG_FILE", environment.get("WSRELAY_CONFIG_FILE"))
    from_file = read_file(path) if path else {}
    values = {**DEFAULTS, **from_file, **environment, **given}
    validate(values)
    return values


def validate(config: Mapping[str, Any]) -> None:
    """Refuse combinations that cannot work, with a message naming the options."""
    if config["WSRELAY_SUBSCRIBER_BUFFER"] < 2 * config["WSRELAY_MAX_MESSAGE_SIZE"]:
        raise ConfigError(
            "WSRELAY_SUBSCRIBER_BUFFER must be at least twice WSRELAY_MAX_MESSAGE_SIZE "
            "(a subscriber must be able to hold one whole message and the next)"
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
