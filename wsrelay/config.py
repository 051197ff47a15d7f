"""Configuration: every option, its default, and how it is read from ``WSRELAY_*``.

Options live in Flask config under their environment names (``WSRELAY_...``)
so they never collide with an application's own keys. The table below is the
single source for defaults, parsing and the README's option list.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """An option with a value wsrelay cannot run with."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be a positive number")
    return value


def _word_list(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.replace(",", " ").split() if part)


def _flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("must be 1/0, true/false, yes/no or on/off")


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    parse: Callable[[str], Any]
    help: str


OPTIONS: tuple[Option, ...] = (
    Option("WSRELAY_BROKER_URL", "memory://", str,
           "`memory://` (one process) or `redis://host:port/db` (many processes and hosts)"),
    Option("WSRELAY_HISTORY_SIZE", 1000, _positive_int,
           "messages retained per channel for `since` resume, long-poll and SSE"),
    Option("WSRELAY_HISTORY_TTL", 300.0, _positive_float,
           "seconds a retained message is kept"),
    Option("WSRELAY_MAX_MESSAGE_SIZE", 1 << 20, _positive_int,
           "largest message in bytes (WebSocket close 1009, HTTP 413 above it)"),
    Option("WSRELAY_SUBSCRIBER_BUFFER", 4 << 20, _positive_int,
           "bytes queued to one slow WebSocket subscriber before it is closed with 1013"),
    Option("WSRELAY_ALLOWED_ORIGINS", (), _word_list,
           "browser origins allowed besides the server's own (space/comma separated, `*`: any)"),
    Option("WSRELAY_SECRET_KEY", "", str,
           "key for signing tokens; empty means a random key per process"),
    Option("WSRELAY_PING_INTERVAL", 20.0, _positive_float,
           "seconds between the server's WebSocket pings"),
    Option("WSRELAY_PING_TIMEOUT", 20.0, _positive_float,
           "seconds a WebSocket may stay silent after a ping before it is dropped"),
    Option("WSRELAY_POLL_TIMEOUT", 25.0, _positive_float,
           "default seconds a long-poll is held (a request may ask for up to 60)"),
    Option("WSRELAY_SSE_KEEPALIVE", 15.0, _positive_float,
           "seconds between SSE keep-alive comments"),
    Option("WSRELAY_CLOSE_TIMEOUT", 5.0, _positive_float,
           "seconds to wait for a WebSocket peer to finish the closing handshake"),
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
    if scheme not in {"memory", "redis", "rediss", "unix"}:
        raise ConfigError(
            f"WSRELAY_BROKER_URL: unknown scheme {scheme!r} (memory://, redis://, rediss://, unix://)"
        )
