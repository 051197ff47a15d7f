"""``GET /poll/<channel>``: Comet long-poll, a cursor over the channel's history.

The poll subscribes from its cursor and collects its answer from the hub
(:mod:`wsrelay.transports.poll_waiter`): no history is read again when it is
woken, and no message is encoded per poll.
"""

from __future__ import annotations

from flask import Response, current_app, request

from ..auth import SUBSCRIBE
from ..broker import BrokerUnavailable
from ..errors import ApiError
from ..server.handler import SOCKET_KEY
from .checks import admit, checked_since, occupy, relay
from .hangup import watch_hangup
from .poll_waiter import ITEMS, PollWaiter, answer

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
    timeout = _timeout()
    state = relay()
    hub = state.hub
    release = occupy(stream=True)
    waiter = PollWaiter(name, current_app.config["WSRELAY_SUBSCRIBER_BUFFER"])
    client = state.track(waiter)  # until the hub lets it go: disconnect() finds it
    hub.stats.connections["poll"] += 1
    try:
        page = hub.subscribe(waiter.subscription, since)  # queues what history holds
        if not (page.reset or waiter.items or hub.draining) and timeout > 0:
            hub.hold(waiter)
            with watch_hangup(request.environ.get(SOCKET_KEY), waiter.ready):
                waiter.ready.wait(timeout)
    except BrokerUnavailable as exc:
        raise ApiError(503, "broker_unavailable", str(exc)) from None
    finally:
        hub.unsubscribe(waiter.subscription)
        hub.let_go(waiter)
        hub.stats.connections["poll"] -= 1
        release()
    if client is not None and client.ended:  # the application disconnected its identity
        raise ApiError(403, "refused", client.ended)
    # a gap is answered from the history page: the hub made no subscription then
    items = [ITEMS.message(message) for message in page.messages] if page.reset else waiter.items
    return Response(answer(name, page.cursor, items, page.reset), mimetype="application/json",
                    headers={"Cache-Control": "no-store"})
