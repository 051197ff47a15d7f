"""``GET /poll/<channel>``: Comet long-poll, a cursor over the channel's history.

The poll subscribes from its cursor and collects its answer from the hub
(:mod:`wsrelay.transports.poll_waiter`): no history is read again when it is
woken, and no message is encoded per poll. :func:`answer_poll` serves both the
Flask view and the direct path (:mod:`wsrelay.transports.direct`).
"""

from __future__ import annotations

from flask import Response

from ..auth import SUBSCRIBE
from ..broker import BrokerUnavailable
from ..errors import ApiError
from ..server.handler import SOCKET_KEY
from .checks import ClientRequest, admit, checked_since, here, occupy
from .hangup import watch_hangup
from .poll_waiter import ITEMS, PollWaiter, answer

MAX_POLL_TIMEOUT = 60.0
#: The headers of a poll's answer besides its length.
HEADERS = (("Content-Type", "application/json"), ("Cache-Control", "no-store"))


def _timeout(client: ClientRequest) -> float:
    text = client.arg("timeout")
    if text is None or text == "":
        return min(client.config["WSRELAY_POLL_TIMEOUT"], MAX_POLL_TIMEOUT)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= MAX_POLL_TIMEOUT:
        raise ApiError(400, "invalid_timeout", "timeout is a number of seconds from 0 to 60")
    return value


def answer_poll(client: ClientRequest, channel: str) -> bytes:
    """The JSON body of a poll's answer, at once when messages after ``since`` exist; else
    once one arrives, the timeout passes, the server stops or the client leaves.
    :class:`ApiError` for a refused poll."""
    name = admit(client, channel, SUBSCRIBE).channel
    since = checked_since(client.arg("since"))
    timeout = _timeout(client)
    hub = client.state.hub
    release = occupy(client, stream=True)
    waiter = PollWaiter(name, client.config["WSRELAY_SUBSCRIBER_BUFFER"])
    tracked = client.state.track(waiter, client.identity)  # disconnect() finds it
    hub.stats.connections["poll"] += 1
    try:
        page = hub.subscribe(waiter.subscription, since)  # queues what history holds
        if not (page.reset or waiter.items or hub.draining) and timeout > 0:
            hub.hold(waiter)
            with watch_hangup(client.environ.get(SOCKET_KEY), waiter.ready):
                waiter.ready.wait(timeout)
    except BrokerUnavailable as exc:
        raise ApiError(503, "broker_unavailable", str(exc)) from None
    finally:
        hub.unsubscribe(waiter.subscription)
        hub.let_go(waiter)
        hub.stats.connections["poll"] -= 1
        release()
        waiter.end()
    if tracked is not None and tracked.ended:  # the application disconnected its identity
        raise ApiError(403, "refused", tracked.ended)
    # a gap is answered from the history page: the hub made no subscription then
    items = [ITEMS.message(message) for message in page.messages] if page.reset else waiter.items
    return answer(name, page.cursor, items, page.reset)


def poll(channel: str) -> Response:
    """The Flask view of :func:`answer_poll`."""
    return Response(answer_poll(here(), channel), headers=HEADERS)
