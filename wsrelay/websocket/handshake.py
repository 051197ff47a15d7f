"""The opening handshake of RFC 6455 section 4.2, without I/O.

Checked by the view before anything is written, so a bad handshake gets an
HTTP error rather than a half-open WebSocket.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from typing import Any, NamedTuple

from websockets.exceptions import InvalidHeader, NegotiationError
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.headers import build_extension, parse_extension

from ..errors import ApiError

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Optional white space around HTTP header values (RFC 9110 5.6.3); nothing else is trimmed.
OWS = " \t"


def _tokens(value: str) -> set[str]:
    return {part.strip(OWS).lower() for part in value.split(",")}


def is_upgrade_request(environ: Mapping[str, Any]) -> bool:
    """The client asked for a WebSocket (as Werkzeug decides it, so routing agrees)."""
    return (
        environ.get("HTTP_UPGRADE", "").lower() == "websocket"
        and "upgrade" in _tokens(environ.get("HTTP_CONNECTION", ""))
    )


def accept_key(environ: Mapping[str, Any]) -> str:
    """Validate the handshake and return ``Sec-WebSocket-Accept``; raise :class:`ApiError`."""
    if environ.get("REQUEST_METHOD") != "GET":
        raise ApiError(405, "method_not_allowed", "a WebSocket handshake is a GET request")
    if environ.get("SERVER_PROTOCOL", "HTTP/1.1") not in {"HTTP/1.1", "HTTP/2", "HTTP/2.0"}:
        raise ApiError(400, "bad_handshake", "a WebSocket handshake needs HTTP/1.1")
    if not environ.get("HTTP_HOST", "").strip(OWS):
        raise ApiError(400, "bad_handshake", "a WebSocket handshake needs a Host header")
    version = environ.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip(OWS)
    if version != "13":
        raise ApiError(
            426, "unsupported_version", "only WebSocket version 13 is supported",
            headers={"Sec-WebSocket-Version": "13"},
        )
    key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip(OWS)
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raw = b""
    if len(raw) != 16:
        raise ApiError(400, "bad_handshake", "Sec-WebSocket-Key must be 16 bytes in base64")
    digest = hashlib.sha1((key + GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def switching_protocols(
    accept: str, subprotocol: str | None = None, extensions: str | None = None
) -> bytes:
    """The 101 response that completes the handshake; ``extensions``: the accepted
    ``Sec-WebSocket-Extensions`` (see :func:`negotiate_deflate`)."""
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept}",
    ]
    if subprotocol:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    if extensions:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


class Deflate(NamedTuple):
    """permessage-deflate as agreed with one client (RFC 7692). The server never takes
    its context over from one message to the next, so ``server_max_window_bits`` is all
    that shapes what it sends: connections that agree on it get the same bytes for a
    message. The client's two parameters shape what the server inflates."""

    server_max_window_bits: int
    client_max_window_bits: int
    client_no_context_takeover: bool


#: What wsrelay accepts of an offer: always ``server_no_context_takeover`` (RFC 7692
#: 7.1.1.1 lets the server add it to any offer), so one compressed frame serves every
#: subscriber; the client's own parameters as it offered them.
_DEFLATE = ServerPerMessageDeflateFactory(server_no_context_takeover=True)


def negotiate_deflate(header: str) -> tuple[str, Deflate] | None:
    """The answer to a ``Sec-WebSocket-Extensions`` offer: the response header and the
    agreed parameters, or None to decline (no ``permessage-deflate`` offer acceptable).

    Offers are tried in the client's order (RFC 7692 5); one with an unknown or
    repeated parameter or an invalid value is declined (7.1), and so is one asking
    for ``server_max_window_bits=8``, which zlib cannot honour (the next offer may
    be acceptable). Other extensions are ignored. A header that is not valid
    ``Sec-WebSocket-Extensions`` syntax fails the handshake with 400 (RFC 6455 4.2.1).
    The offer is parsed and negotiated by ``websockets``' own server factory.
    """
    if not header.strip(OWS):
        return None
    try:
        offers = parse_extension(header)
    except InvalidHeader as exc:
        raise ApiError(
            400, "bad_handshake", str(exc)
        ) from None
    for name, params in offers:
        if name != _DEFLATE.name:
            continue
        try:
            response, agreed = _DEFLATE.process_request_params(params, [])
        except NegotiationError:
            continue
        deflate = Deflate(
            server_max_window_bits=agreed.local_max_window_bits,
            client_max_window_bits=agreed.remote_max_window_bits,
            client_no_context_takeover=agreed.remote_no_context_takeover,
        )
        return build_extension([(name, response)]), deflate
    return None
