"""The ``wsrelay.v1`` subprotocol without I/O: JSON requests in, JSON envelopes out.

One WebSocket carries many channels. Every client request is a JSON object
with a ``type``; any request may carry an ``ack`` number, which the answer
repeats. A request the server cannot honour gets an ``error`` envelope that
names it; the connection stays open.

Client -> server::

    {"type": "subscribe", "channel": c, "since": id?, "ack": n?}
    {"type": "unsubscribe", "channel": c, "ack": n?}
    {"type": "publish", "channel": c, "data": text, "encoding": "base64"?, "ack": n?}
    {"type": "presence", "channel": c, "ack": n?}

Server -> client::

    {"type": "message", "channel": c, "id": id, "data": ..., "encoding": "base64"?}
    {"type": "ack", "ack": n, ...}          # publish: "id"; subscribe: "cursor"; presence: "count"
    {"type": "presence", "channel": c, "count": n}  # a presence request without "ack"
    {"type": "error", "code": code, "reason": text, "request": {"type": t, "channel": c, "ack": n}}
    {"type": "reset", "channel": c, "cursor": id}   # history could not fill the gap

A subscription's ``ack`` comes after the replayed messages: from then on it is live.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from .channels import InvalidChannel, check_channel
from .ids import InvalidMessageId, MessageId
from .message import Message

SUBPROTOCOL = "wsrelay.v1"
REQUEST_TYPES = frozenset({"subscribe", "unsubscribe", "publish", "presence"})


@dataclass(frozen=True, slots=True)
class Request:
    """A well-formed client request."""

    type: str
    channel: str
    ack: int | None = None
    since: MessageId | None = None
    data: bytes = b""
    binary: bool = False


class BadRequest(ValueError):
    """A request that cannot be honoured; :attr:`envelope` is the error to send back."""

    def __init__(self, code: str, reason: str, request: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.envelope = error(code, reason, request)


def _echo(raw: Any) -> dict[str, Any] | None:
    """What an error repeats of the request it answers (never the payload)."""
    if not isinstance(raw, dict):
        return None
    return {key: raw[key] for key in ("type", "channel", "ack") if key in raw}


def parse_request(text: str | bytes) -> Request:
    """Parse one client frame; raise :class:`BadRequest` with the error to send."""
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("invalid_json", "a request is one JSON object") from None
    echo = _echo(raw)
    if not isinstance(raw, dict):
        raise BadRequest("invalid_request", "a request is one JSON object")
    kind = raw.get("type")
    if kind not in REQUEST_TYPES:
        raise BadRequest(
            "unknown_type", f"type must be one of {', '.join(sorted(REQUEST_TYPES))}", echo
        )
    ack = raw.get("ack")
    if ack is not None and (not isinstance(ack, int) or isinstance(ack, bool)):
        raise BadRequest("invalid_ack", "ack is an integer", echo)
    channel = raw.get("channel")
    try:
        check_channel(channel if isinstance(channel, str) else "")
    except InvalidChannel as exc:
        raise BadRequest("invalid_channel", str(exc), echo) from None
    since = None
    if kind == "subscribe" and raw.get("since") is not None:
        try:
            since = MessageId.parse(str(raw["since"]))
        except InvalidMessageId as exc:
            raise BadRequest("invalid_since", str(exc), echo) from None
    data, binary = b"", False
    if kind == "publish":
        data, binary = _payload(raw, echo)
    return Request(kind, channel, ack, since, data, binary)


def _payload(raw: dict[str, Any], echo: dict[str, Any] | None) -> tuple[bytes, bool]:
    value = raw.get("data")
    if not isinstance(value, str):
        raise BadRequest("invalid_data", "data is a string (base64 for binary)", echo)
    encoding = raw.get("encoding")
    if encoding is None:
        return value.encode("utf-8"), False
    if encoding != "base64":
        raise BadRequest("invalid_encoding", "encoding is absent or 'base64'", echo)
    try:
        return base64.b64decode(value, validate=True), True
    except binascii.Error:
        raise BadRequest("invalid_data", "data is not valid base64", echo) from None


def _dump(envelope: dict[str, Any]) -> bytes:
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def message(msg: Message) -> bytes:
    """A ``message`` envelope; the same bytes go to every JSON subscriber of the channel."""
    return _dump({"type": "message", "channel": msg.channel, **msg.to_json()})


def ack(number: int, **result: Any) -> bytes:
    return _dump({"type": "ack", "ack": number, **result})


def error(code: str, reason: str, request: dict[str, Any] | None = None) -> bytes:
    envelope: dict[str, Any] = {"type": "error", "code": code, "reason": reason}
    if request:
        envelope["request"] = request
    return _dump(envelope)


def request_echo(request: Request) -> dict[str, Any]:
    """The part of a parsed request an error repeats."""
    echo: dict[str, Any] = {"type": request.type, "channel": request.channel}
    if request.ack is not None:
        echo["ack"] = request.ack
    return echo


def presence(channel: str, count: int) -> bytes:
    return _dump({"type": "presence", "channel": channel, "count": count})


def reset(channel: str, cursor: MessageId) -> bytes:
    return _dump({"type": "reset", "channel": channel, "cursor": str(cursor)})
