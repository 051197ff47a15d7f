"""Which browser origins may use the relay (cross-site WebSocket hijacking and CSRF).

An origin is a scheme, a host and a port (RFC 6454): ``https://relay.example``
and ``http://relay.example`` are two origins, as are ``:5000`` and ``:5001``.
Origins are compared in one canonical form — lowercase, an IPv6 address in
brackets, the scheme's default port left out — the form browsers send.

Pure: the request's parts are parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from urllib.parse import urlsplit

#: The schemes of web origins and their default ports (``ws:``/``wss:`` pages do not exist).
DEFAULT_PORTS = {"http": 80, "https": 443}


@functools.lru_cache(maxsize=1024)  # twice per browser request, of a few distinct origins
def canonical_origin(text: str) -> str | None:
    """``scheme://host[:port]`` in canonical form, or None when ``text`` is no origin
    (``null``, no host, a path, credentials, a bad port). A scheme other than http and
    https keeps any port it names."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if not scheme or not host or parts.path not in ("", "/") or parts.query or (
        parts.fragment or "@" in parts.netloc
    ):
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def own_origin(scheme: str, host: str) -> str | None:
    """The origin of a server reached as ``scheme`` (http or https) at ``host`` (the
    request's ``Host``: a name or address, and a port unless it is the default)."""
    return canonical_origin(f"{scheme}://{host}")


def origin_allowed(origin: str | None, own: str | None, allowed: Iterable[str]) -> bool:
    """True for requests without ``Origin`` (not a browser), from the server's own origin
    ``own`` (scheme, host and port), or from an origin in ``allowed`` (``*``: any)."""
    if origin is None:
        return True
    allowed = tuple(allowed)
    if "*" in allowed:
        return True
    origin = canonical_origin(origin)
    if origin is None:
        return False
    return origin == own or any(canonical_origin(entry) == origin for entry in allowed)
