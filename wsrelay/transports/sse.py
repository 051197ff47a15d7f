"""``GET /sse/<channel>``: Server-Sent Events, a cursor over the channel's history, then live.

The view makes its checks, then its response: the head and a first comment go
out through the server, after which the stream is the hub's to write
(:mod:`wsrelay.transports.event_stream`) until it ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Response, current_app, request

from ..auth import SUBSCRIBE
from ..broker import BrokerUnavailable
from ..hub import MessageServer
from ..ids import MessageId
from ..server.handler import SOCKET_KEY
from .checks import admit, checked_since, here, occupy, relay
from .event_stream import BROKER_UNAVAILABLE, CONNECTED, OPEN, EventStream
from .hangup import watch_hangup


def _events(hub: MessageServer, stream: EventStream, since: MessageId | None,
            keepalive: float, expires: float | None) -> Iterator[bytes]:
    hub.stats.connections["sse"] += 1
    try:
        try:
            hub.subscribe(stream.subscription, since)  # queues the reset and the replay
        except BrokerUnavailable:
            yield BROKER_UNAVAILABLE
            return
        hub.hold(stream)
        with watch_hangup(stream.sock, stream.ended) as hangup:
            yield CONNECTED  # through the server, with the response head
            stream.open(keepalive, expires)
            if hub.draining:  # the server stops: end cleanly, the browser reconnects elsewhere
                stream.end()
            if stream.sock is None:
                yield from _yielded(stream)
            else:
                stream.ended.wait()
                if hangup.gone:
                    stream.abort()
    finally:
        stream.release()
        hub.stats.connections["sse"] -= 1


def _yielded(stream: EventStream) -> Iterator[bytes]:
    """The stream's bytes handed to a server that writes the response itself."""
    while True:
        stream.ready.wait()
        data = stream.take()
        if data:
            yield data
        if stream.state is not OPEN:  # ending (its last bytes were taken) or cut
            return


def sse(channel: str) -> Response:
    """Stream every message of the channel; resume from ``Last-Event-ID`` or ``?since=``.
    The stream ends when the token it was opened with expires, the server stops or the
    client leaves. ``?format=json`` sends every message as a ``json`` event (the long-poll
    item, with its time), for a client that wants more than the text."""
    access = admit(here(), channel, SUBSCRIBE)
    as_json = request.args.get("format") == "json"
    since = checked_since(request.headers.get("Last-Event-ID") or request.args.get("since"))
    config = current_app.config
    release = occupy(here(), stream=True)
    sock: Any | None = request.environ.get(SOCKET_KEY)
    state = relay()
    hub = state.hub
    stream = EventStream(
        hub, access.channel, sock, as_json=as_json,
        chunked=request.environ.get("SERVER_PROTOCOL") != "HTTP/1.0",
        buffer_limit=config["WSRELAY_SUBSCRIBER_BUFFER"], linger=config["WSRELAY_SSE_LINGER"],
    )
    response = Response(
        _events(hub, stream, since, config["WSRELAY_SSE_KEEPALIVE"], access.expires),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
    state.track(stream, here().identity)  # until the hub lets it go: disconnect() finds it
    response.call_on_close(release)  # the server closes every response, however it ended
    response.call_on_close(lambda: state.untrack(stream))  # also if it never began
    return response
