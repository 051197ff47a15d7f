"""A published message and its encodings for the HTTP transports."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from .ids import MessageId


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a channel, as the broker stored it.

    ``data`` is always bytes (text is kept as its UTF-8 encoding) so the
    WebSocket transport relays the very bytes it received. ``sender`` names
    the connection that published it (for ``echo=0``); it is not part of
    the public contract. ``author`` is who the application says published it
    (the identity its identity hook gave the client): items and envelopes carry
    it as ``sender``.
    """

    channel: str
    id: MessageId
    data: bytes
    binary: bool = False
    sender: str | None = None
    time: float = field(default=0.0, compare=False)
    author: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The message as an item of a long-poll answer (and of the JSON transports):
        ``time`` is when the broker accepted it, in ms since the epoch."""
        item: dict[str, Any] = {"id": str(self.id)}
        if self.binary:
            item["data"] = base64.b64encode(self.data).decode("ascii")
            item["encoding"] = "base64"
        else:
            item["data"] = self.data.decode("utf-8")
        item["time"] = round(self.time * 1000)
        if self.author is not None:
            item["sender"] = self.author
        return item

    def to_sse(self, *, as_json: bool = False) -> bytes:
        """The message as one Server-Sent Event.

        Text travels as-is, one ``data:`` line per line (the browser joins
        them with ``\\n``). An SSE field cannot hold ``\\r`` or arbitrary
        bytes, so binary data and text holding ``\\r`` travel as an event
        named ``json`` whose data is the long-poll item (base64 for binary).
        ``as_json`` sends every message so (``?format=json``: the time with it).
        """
        head = b"id: " + str(self.id).encode("ascii") + b"\n"
        if as_json or self.binary or b"\r" in self.data:
            return head + b"event: json\ndata: " + json.dumps(self.to_json()).encode() + b"\n\n"
        return head + b"".join(b"data: " + line + b"\n" for line in self.data.split(b"\n")) + b"\n"
