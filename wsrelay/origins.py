"""Which browser origins may use the relay (cross-site WebSocket hijacking and CSRF)."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit


def origin_allowed(origin: str | None, host: str, allowed: Iterable[str]) -> bool:
    """True for requests without ``Origin`` (not a browser), from the server's own
    host, or from an origin in ``allowed`` (``*`` allows every origin)."""
    if origin is None:
        return True
    allowed = tuple(allowed)
    if "*" in allowed or origin in allowed:
        return True
    if origin == "null":
        return False
    netloc = urlsplit(origin).netloc
    return bool(netloc) and netloc.lower() == host.lower()
