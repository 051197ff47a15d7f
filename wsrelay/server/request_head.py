"""What a request head must say for its framing to be unambiguous (RFC 9112), checked
without sockets: the header fields in, the reason to refuse out.

Where a request's body ends is told by Content-Length or Transfer-Encoding.
A head that says it twice, or in a way parsers read differently (``+1``,
``xchunked``, two lengths), lets a proxy in front and this server each see a
different request in the same bytes: the rest of one is taken as the next
(request smuggling). Such a request is refused whole (400, and the
connection closed) instead of guessed at. So are several Host headers, and a
missing one in HTTP/1.1, which a proxy and this server could also read two ways.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_DIGITS = re.compile(r"[0-9]+")
#: A field name is a token (RFC 9110 5.1): no white space, no separators.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_OWS = " \t"
#: Versions older than HTTP/1.1: no Host required, and no Transfer-Encoding allowed.
_BEFORE_1_1 = frozenset({"HTTP/0.9", "HTTP/1.0"})


def framing_problem(headers: Iterable[tuple[str, str]], version: str) -> str | None:
    """Why a request with these header fields (``(name, value)`` in the order received,
    repeats kept) and this HTTP version must be refused, or None when its framing is clear.

    Refused: Content-Length together with Transfer-Encoding; more than one
    Content-Length, even with equal values (RFC 9112 6.3 allows accepting equal
    ones; no client needs to send two); a Content-Length that is not digits
    alone; a Transfer-Encoding other than exactly ``chunked``, in one header,
    and any in a request older than HTTP/1.1; more than one Host; no Host in
    HTTP/1.1; a field name that is not a token.
    """
    lengths: list[str] = []
    codings: list[str] = []
    hosts = 0
    for name, value in headers:
        if not _TOKEN.fullmatch(name):
            return f"invalid header name {name[:40]!r}"
        field = name.lower()
        if field == "content-length":
            lengths.append(value.strip(_OWS))
        elif field == "transfer-encoding":
            codings.append(value.strip(_OWS))
        elif field == "host":
            hosts += 1
    if lengths and codings:
        return "Content-Length and Transfer-Encoding together"
    if len(lengths) > 1:
        return "more than one Content-Length"
    if lengths and not _DIGITS.fullmatch(lengths[0]):
        return f"invalid Content-Length {lengths[0][:40]!r}: digits only"
    if codings and version in _BEFORE_1_1:
        return f"Transfer-Encoding in an {version} request"
    if len(codings) > 1 or (codings and codings[0].lower() != "chunked"):
        return "unsupported Transfer-Encoding: only chunked is accepted"
    if hosts > 1:
        return "more than one Host"
    if not hosts and version not in _BEFORE_1_1:
        return "no Host header (HTTP/1.1 requires one)"
    return None
