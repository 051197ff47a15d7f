"""The ``wsrelay.v1`` subprotocol without I/O: JSON requests in, JSON envelopes out.

One WebSocket carries many channels. Every client request is a flat JSON
object (at most 16 members, each a scalar) with a ``type``; any request may
carry an ``ack`` number, which the answer repeats. A request the server
cannot honour, whatever the frame holds, gets an ``error`` envelope that
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
    {"type": "unsubscribed", "channel": c, "reason": text}  # the application ended it

A subscription's ``ack`` comes after the replayed messages: from then on it is live.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard, cast

from ..channels import CHANNEL_PATTERN, InvalidChannel, check_channel
from ..ids import InvalidMessageId, MessageId
from ..message import Message

SUBPROTOCOL = "wsrelay.v1"
REQUEST_TYPES = frozenset({"subscribe", "unsubscribe", "publish", "presence"})
#: A request is one flat JSON object: at most this many members, each a scalar.
MAX_MEMBERS = 16
#: The largest ``ack``: numbers up to it survive a round trip through JavaScript.
MAX_ACK = 2**53 - 1
#: Digits an integer in a request may have (``ack`` needs 16).
MAX_INT_DIGITS = 32
#: Room in a request frame beside its data: type, a 128-character channel, since, ack,
#: encoding, the keys and the JSON around them, with room to spare.
ENVELOPE_ROOM = 1024
_NOT_A_REQUEST = (
    f"a request is one JSON object of at most {MAX_MEMBERS} members whose values are "
    "strings, numbers, true, false or null"
)
_NOT_JSON = "a request is one JSON object"
#: The whitespace at an index (perhaps none: the pattern matches the empty string, so it
#: always matches).
_skip_whitespace = cast(Callable[[str, int], "re.Match[str]"], re.compile(r"[ \t\n\r]*").match)


def max_request_size(max_message_size: int) -> int:
    """The largest ``wsrelay.v1`` frame: a message of ``max_message_size`` bytes as base64
    (4 bytes for 3) in its envelope. The one rule for how large a request may be; a larger
    frame is refused from its header (close 1009), like any message over the limit."""
    return 4 * -(-max_message_size // 3) + ENVELOPE_ROOM


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


def _is_type(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and value in REQUEST_TYPES


def _is_channel(value: Any) -> bool:
    return isinstance(value, str) and CHANNEL_PATTERN.fullmatch(value) is not None


def _is_ack(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_ACK


_VALID = {"type": _is_type, "channel": _is_channel, "ack": _is_ack}


def _echo(raw: dict[str, Any]) -> dict[str, Any]:
    """What an error repeats of the request it answers: its type, channel and ack where they
    are valid, so never the payload, nor anything large or that JSON cannot encode."""
    return {key: raw[key] for key, valid in _VALID.items() if valid(raw.get(key))}


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _integer(text: str) -> int:
    """An integer of the request: ``ack`` needs 16 digits; thousands would cost the
    parser quadratic time, so past :data:`MAX_INT_DIGITS` the text is no request."""
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError("integer too long")
    return int(text)


_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_integer)
#: The C scanner of :mod:`json`, for one scalar at a time (its strings at C speed); the
#: decoder's __init__ sets it, and typeshed does not declare it.
_scan_value: Callable[[str, int], tuple[Any, int]] = _decoder.scan_once  # type: ignore[attr-defined]


def _value(text: str, index: int) -> tuple[Any, int]:
    """The scalar at ``index`` and where it ends; a container is no request."""
    if text.startswith(("[", "{"), index):
        raise BadRequest("invalid_request", _NOT_A_REQUEST)
    try:
        return _scan_value(text, index)
    except (StopIteration, ValueError):  # nothing valid there; a bad escape; NaN; 10**40
        raise BadRequest("invalid_json", _NOT_JSON) from None


def _load(text: str) -> dict[str, Any]:
    """Parse a request: one JSON object of at most MAX_MEMBERS scalar members.

    Only its top level is walked, here; each key and value is scanned by
    json's C scanner, which never sees a container: nesting and the number of
    values are refused before they cost anything, so any text costs at most
    what scanning its strings costs.
    """
    skip = _skip_whitespace
    index = skip(text, 0).end()
    if not text.startswith("{", index):
        _, index = _value(text, index)  # valid JSON, but no object: no request either
        if skip(text, index).end() != len(text):
            raise BadRequest("invalid_json", _NOT_JSON)
        raise BadRequest("invalid_request", _NOT_A_REQUEST)
    request: dict[str, Any] = {}
    index = skip(text, index + 1).end()
    if not text.startswith("}", index):
        for _ in range(MAX_MEMBERS):
            if not text.startswith('"', index):
                raise BadRequest("invalid_json", _NOT_JSON)
            key, index = _value(text, index)
            index = skip(text, index).end()
            if not text.startswith(":", index):
                raise BadRequest("invalid_json", _NOT_JSON)
            request[key], index = _value(text, skip(text, index + 1).end())
            index = skip(text, index).end()
            if not text.startswith(",", index):
                break
            index = skip(text, index + 1).end()
        else:  # a member more follows
            raise BadRequest("invalid_request", _NOT_A_REQUEST)
    if not text.startswith("}", index) or skip(text, index + 1).end() != len(text):
        raise BadRequest("invalid_json", _NOT_JSON)
    return request


def parse_request(text: str | bytes, max_data: int) -> Request:
    """Parse one client frame; raise :class:`BadRequest` with the error to send.

    Any text gets one or the other, whatever it holds; ``max_data`` bounds a
    publish's data once decoded.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("invalid_json", _NOT_JSON) from None
    raw = _load(text)
    echo = _echo(raw)
    kind = raw.get("type")
    if not _is_type(kind):
        raise BadRequest(
            "unknown_type", f"type must be one of {', '.join(sorted(REQUEST_TYPES))}", echo
        )
    ack = raw.get("ack")
    if ack is not None and not _is_ack(ack):
        raise BadRequest("invalid_ack", f"ack is an integer from 0 to {MAX_ACK}", echo)
    name = raw.get("channel")
    try:
        channel = check_channel(name if isinstance(name, str) else "")
    except InvalidChannel as exc:
        raise BadRequest("invalid_channel", str(exc), echo) from None
    since = None
    if kind == "subscribe" and raw.get("since") is not None:
        since = _since(raw["since"], echo)
    data, binary = b"", False
    if kind == "publish":
        data, binary = _payload(raw, echo)
        if len(data) > max_data:
            raise BadRequest("request_entity_too_large",
                             f"a message is at most {max_data} bytes", echo)
    return Request(kind, channel, ack, since, data, binary)


def _since(value: Any, echo: dict[str, Any]) -> MessageId:
    if not isinstance(value, str):
        raise BadRequest("invalid_since", "since is a message id, a string", echo)
    try:
        return MessageId.parse(value)
    except InvalidMessageId as exc:
        raise BadRequest("invalid_since", str(exc), echo) from None


def _payload(raw: dict[str, Any], echo: dict[str, Any]) -> tuple[bytes, bool]:
    value = raw.get("data")
    if not isinstance(value, str):
        raise BadRequest("invalid_data", "data is a string (base64 for binary)", echo)
    encoding = raw.get("encoding")
    if encoding is None:
        try:
            return value.encode("utf-8"), False
        except UnicodeEncodeError:
            raise BadRequest(
                "invalid_data", "data is not Unicode text: it holds a lone surrogate", echo
            ) from None
    if encoding != "base64":
        raise BadRequest("invalid_encoding", "encoding is absent or 'base64'", echo)
    try:
        return base64.b64decode(value, validate=True), True
    except ValueError:  # binascii.Error, or characters outside ASCII
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


def unsubscribed(channel: str, reason: str) -> bytes:
    """The application ended this subscription (``relay.unsubscribe``)."""
    return _dump({"type": "unsubscribed", "channel": channel, "reason": reason})
