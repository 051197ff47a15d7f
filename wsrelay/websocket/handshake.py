"""The opening handshake of RFC 6455 section 4.2, without I/O.

Checked by the view before anything is written, so a bad handshake gets an
HTTP error rather than a half-open WebSocket.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from typing import Any

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


def switching_protocols(accept: str, subprotocol: str | None = None) -> bytes:
    """The 101 response that completes the handshake."""
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept}",
    ]
    if subprotocol:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
