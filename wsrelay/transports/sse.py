"""``GET /sse/<channel>``: Server-Sent Events, a cursor over the channel's history."""

from __future__ import annotations

import json
from collections.abc import Iterator

from flask import Response, current_app, request

from ..broker import BrokerUnavailable
from ..hub import MessageServer
from ..ids import MessageId
from .common import admit, checked_since, relay


def _reset_event(cursor: MessageId) -> bytes:
    data = json.dumps({"cursor": str(cursor), "message": "messages were missed"})
    return f"event: reset\ndata: {data}\n\n".encode()


def _events(hub: MessageServer, channel: str, since: MessageId | None,
            keepalive: float) -> Iterator[bytes]:
    with hub.watch(channel) as arrived:
        try:
            page = hub.broker.history(channel, since)
        except BrokerUnavailable:
            yield b"event: error\ndata: broker unavailable\n\n"
            return
        yield b"retry: 2000\n: connected\n\n"
        while True:
            if page.reset:
                yield _reset_event(page.cursor)
            if page.messages:
                yield b"".join(message.to_sse() for message in page.messages)
            cursor = page.cursor
            while not arrived.wait(keepalive):
                yield b": keep-alive\n\n"
            arrived.clear()
            try:
                page = hub.broker.history(channel, cursor)
            except BrokerUnavailable:
                yield b"event: error\ndata: broker unavailable\n\n"
                return


def sse(channel: str) -> Response:
    """Stream every message of the channel; resume from ``Last-Event-ID`` or ``?since=``."""
    name = admit(channel)
    since = checked_since(request.headers.get("Last-Event-ID") or request.args.get("since"))
    keepalive = current_app.config["WSRELAY_SSE_KEEPALIVE"]
    return Response(
        _events(relay().hub, name, since, keepalive),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
