"""``GET /poll/<channel>``: Comet long-poll, a cursor over the channel's history."""

from __future__ import annotations

import time

from flask import Response, current_app, jsonify, request

from ..auth import SUBSCRIBE
from ..broker import BrokerUnavailable
from ..errors import ApiError
from ..server.handler import SOCKET_KEY
from .checks import admit, checked_since, occupy, relay
from .hangup import watch_hangup

MAX_POLL_TIMEOUT = 60.0


def _timeout() -> float:
    text = request.args.get("timeout")
    if text is None or text == "":
        return min(current_app.config["WSRELAY_POLL_TIMEOUT"], MAX_POLL_TIMEOUT)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= MAX_POLL_TIMEOUT:
        raise ApiError(400, "invalid_timeout", "timeout is a number of seconds from 0 to 60")
    return value


def poll(channel: str) -> Response:
    """Answer at once when messages after ``since`` exist; else hold until one arrives, the
    timeout passes, the server stops or the client leaves."""
    name = admit(channel, SUBSCRIBE).channel
    since = checked_since(request.args.get("since"))
    deadline = time.monotonic() + _timeout()
    hub = relay().hub
    release = occupy(stream=True)
    hub.stats.connections["poll"] += 1
    try:
        with hub.watch(name) as arrived, watch_hangup(
            request.environ.get(SOCKET_KEY), arrived
        ) as hangup:
            page = hub.broker.history(name, since)
            while not page.messages and not page.reset and not hub.draining:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not arrived.wait(remaining) or hangup.gone:
                    break
                arrived.clear()
                page = hub.broker.history(name, page.cursor)
    except BrokerUnavailable as exc:
        raise ApiError(503, "broker_unavailable", str(exc)) from None
    finally:
        hub.stats.connections["poll"] -= 1
        release()
    body: dict[str, object] = {
        "channel": name,
        "cursor": str(page.cursor),
        "messages": [message.to_json() for message in page.messages],
    }
    if page.reset:
        body["reset"] = True
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response
