"""``GET /sse/<channel>``: Server-Sent Events, a cursor over the channel's history."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from typing import Any

from flask import Response, current_app, request

from ..auth import SUBSCRIBE
from ..broker import BrokerUnavailable
from ..hub import MessageServer
from ..ids import MessageId
from ..server.handler import SOCKET_KEY
from .checks import admit, checked_since, occupy, relay
from .hangup import watch_hangup


def _reset_event(cursor: MessageId) -> bytes:
    """A gap notice; its ``id:`` moves the browser's Last-Event-ID to the cursor, so its own
    reconnect resumes from there instead of reporting the same gap again."""
    data = json.dumps({"cursor": str(cursor), "message": "messages were missed"})
    return f"id: {cursor}\nevent: reset\ndata: {data}\n\n".encode()


def _left(expires: float | None) -> float:
    """Seconds until the token the stream rests on expires (infinite without one)."""
    return math.inf if expires is None else expires - time.time()


def _events(hub: MessageServer, channel: str, since: MessageId | None,
            keepalive: float, expires: float | None, sock: Any | None,
            as_json: bool) -> Iterator[bytes]:
    hub.stats.connections["sse"] += 1
    try:
        yield from _stream(hub, channel, since, keepalive, expires, sock, as_json)
    finally:
        hub.stats.connections["sse"] -= 1


def _stream(hub: MessageServer, channel: str, since: MessageId | None,
            keepalive: float, expires: float | None, sock: Any | None,
            as_json: bool) -> Iterator[bytes]:
    with hub.watch(channel) as arrived, watch_hangup(sock, arrived) as hangup:
        try:
            page = hub.broker.history(channel, since)
        except BrokerUnavailable:
            yield b"event: error\ndata: broker unavailable\n\n"
            return
        yield b"retry: 2000\n: connected\n\n"
        while True:
            if _left(expires) <= 0:  # the browser reconnects with it, and gets a 401
                yield b"event: error\ndata: token expired\n\n"
                return
            if page.reset:
                yield _reset_event(page.cursor)
            if page.messages:
                yield b"".join(message.to_sse(as_json=as_json) for message in page.messages)
            if hub.draining:  # the server stops: end cleanly, the browser reconnects elsewhere
                return
            cursor = page.cursor
            while not arrived.wait(min(keepalive, max(_left(expires), 0.0))):
                if _left(expires) <= 0:
                    break
                yield b": keep-alive\n\n"
            if hangup.gone:  # nobody to write to: give the stream's place back now
                return
            arrived.clear()
            try:
                page = hub.broker.history(channel, cursor)
            except BrokerUnavailable:
                yield b"event: error\ndata: broker unavailable\n\n"
                return


def sse(channel: str) -> Response:
    """Stream every message of the channel; resume from ``Last-Event-ID`` or ``?since=``.
    The stream ends when the token it was opened with expires, the server stops or the
    client leaves. ``?format=json`` sends every message as a ``json`` event (the long-poll
    item, with its time), for a client that wants more than the text."""
    access = admit(channel, SUBSCRIBE)
    as_json = request.args.get("format") == "json"
    since = checked_since(request.headers.get("Last-Event-ID") or request.args.get("since"))
    keepalive = current_app.config["WSRELAY_SSE_KEEPALIVE"]
    release = occupy(stream=True)
    response = Response(
        _events(relay().hub, access.channel, since, keepalive, access.expires,
                request.environ.get(SOCKET_KEY), as_json),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
    response.call_on_close(release)  # the server closes every response, however it ended
    return response
