"""Which names in ``Host`` the relay answers to (DNS rebinding), and which names are loopback.

A page of another site can make its own name resolve to 127.0.0.1 (DNS
rebinding): the visitor's browser then sends that page's requests to a relay
listening on loopback, as same-origin requests of the page, so the origin
check cannot see them. Only ``Host`` still names the foreign site. Like
Django's ``ALLOWED_HOSTS``, ``WSRELAY_ALLOWED_HOSTS`` lists the names the
relay answers to; without it, a request that arrived on a loopback address
may only name a loopback host (no other host can reach that address, so
another name there is a rebound one).

Pure: the request's parts are parameters.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable


@functools.lru_cache(maxsize=1024)  # asked twice per request, of a few distinct addresses
def is_loopback_address(address: str) -> bool:
    """True for an IP address of the loopback interface (IPv4-mapped IPv6 included)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def host_name(host: str) -> str:
    """The name in a ``Host`` value: lowercase, without the port, the brackets of an IPv6
    address or a final dot (``[::1]:5000`` -> ``::1``, ``Example.com.:80`` -> ``example.com``)."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else ""
    return host.partition(":")[0].removesuffix(".")


def is_loopback_name(name: str) -> bool:
    """``localhost``, a name under ``.localhost`` (RFC 6761: browsers resolve them to
    loopback themselves, so no DNS answer can rebind them) or a loopback address."""
    return name == "localhost" or name.endswith(".localhost") or is_loopback_address(name)


def _entry(pattern: str) -> str:
    """An entry of the allow-list in the form of :func:`host_name`."""
    pattern = pattern.strip().lower()
    if pattern == "*" or (pattern.count(":") > 1 and not pattern.startswith("[")):
        return pattern  # any name, or an IPv6 address without brackets
    return host_name(pattern)


def host_allowed(name: str, allowed: Iterable[str], local_address: str) -> bool:
    """Whether to answer a request naming ``name`` (see :func:`host_name`) that arrived on
    ``local_address``.

    ``allowed`` as Django's ALLOWED_HOSTS: ``*`` allows any name, ``.example.com``
    example.com and every name under it, any other entry that name exactly (a
    port or the brackets of an IPv6 address in an entry are ignored). Empty: on
    a loopback address only loopback names; elsewhere any name.
    """
    patterns = [_entry(pattern) for pattern in allowed]
    if not patterns:
        return is_loopback_name(name) or not is_loopback_address(local_address)
    for pattern in patterns:
        if pattern == "*" or pattern == name:
            return True
        if pattern.startswith(".") and (name == pattern[1:] or name.endswith(pattern)):
            return True
    return False
