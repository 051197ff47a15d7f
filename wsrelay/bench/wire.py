"""The load generator's clients: how each system is spoken to, and what each delivery costs it.

Every message the bench publishes starts with the 19-digit ``time.monotonic_ns()``
of its sending (one clock for the whole machine), so a client turns each
delivery into one latency sample with one ``int()``. A stamp of zero marks a
*sync* message: it proves a subscriber is registered and is never counted.
Everything here runs in the load generator's one asyncio (uvloop) thread; the
WebSocket clients are picows (frame parsing in C), the HTTP ones use
httptools' C parser.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import zlib
from array import array
from time import monotonic_ns
from typing import cast

import httptools
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

STAMP = 19
CHANNEL = "bench"
SYNC = b"0" * STAMP


def payload(size: int, stamp: bytes | None = None) -> bytes:
    """A ``size``-byte ASCII message stamped now (or with ``stamp``)."""
    head = b"%019d" % time.monotonic_ns() if stamp is None else stamp
    return head + b"." * (size - STAMP)


_WORDS = ("the", "deploy", "is", "done", "see", "you", "at", "standup", "tomorrow", "build",
          "failed", "again", "on", "main", "who", "broke", "it", "lunch", "anyone", "merged",
          "thanks", "review", "please", "ok", "looks", "good", "to", "me", "ship", "coffee")


def _chat_bodies(count: int) -> list[bytes]:
    """Chat messages as JSON, each of different words (a fixed seed: every run the same)."""
    rng = random.Random(16)
    bodies = []
    for n in range(count):
        text = " ".join(rng.choice(_WORDS) for _ in range(400))
        body = {"type": "message", "room": "general", "user": f"user{rng.randrange(1000)}",
                "id": n, "text": text}
        bodies.append(json.dumps(body).encode())
    return bodies


_CHAT = _chat_bodies(64)


def chat_payload(size: int, n: int) -> bytes:
    """The ``n``-th chat-like JSON message of ``size`` bytes, stamped now: compresses as chat
    traffic does (by 2-3 times), where :func:`payload`'s dots would shrink 100 times."""
    return b"%019d" % time.monotonic_ns() + _CHAT[n % len(_CHAT)][: size - STAMP]


class Tally:
    """What every client of one run received: a latency sample (ns) per delivery."""

    def __init__(self) -> None:
        self.latencies = array("q")
        #: bytes of the frames received (headers included), counted by :class:`WireClient`
        self.wire_bytes = 0
        self.closed_by_server = 0
        self.synced = 0
        #: long-poll answers received
        self.requests = 0
        #: deliveries stamped earlier than the one a client got before (order broken)
        self.reordered = 0

    @property
    def received(self) -> int:
        return len(self.latencies)


# -- WebSocket clients -------------------------------------------------------------------

class RawClient(WSListener):
    """A raw-mode subscriber (wsrelay, seed loop): each text frame is one message."""

    def __init__(self, tally: Tally) -> None:
        super().__init__()
        self.tally = tally
        self.record = tally.latencies.append
        self.synced = False
        self.last = 0  # the last stamp received
        #: Set once connected, before ``ready``.
        self.transport: WSTransport
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.ready.set_result(None)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        # The hot path: one call per delivery, so no enum look-up; a frame that is
        # not a stamped message (close, ping) fails int() and goes the slow way.
        try:
            stamp = int(frame.get_payload_as_bytes()[:STAMP])
        except ValueError:
            self.control(transport, frame)
            return
        if stamp:
            self.stamped(stamp)
        else:
            self.sync()

    def stamped(self, stamp: int) -> None:
        self.record(monotonic_ns() - stamp)
        if stamp < self.last:
            self.tally.reordered += 1
        self.last = stamp

    def control(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.tally.closed_by_server += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("disconnected during the handshake"))

    def sync(self) -> None:
        if not self.synced:
            self.synced = True
            self.tally.synced += 1

    def publish(self, message: bytes) -> None:
        self.transport.send(WSMsgType.TEXT, message)


class WireClient(RawClient):
    """A raw-mode subscriber that counts the bytes of the frames it receives and inflates
    compressed ones (permessage-deflate, the server's window of 15 bits, no context taken
    over), for the compression scenarios. Like a browser, it keeps one inflater for the
    connection's life: the server's messages never refer to one another, so one stream
    inflates them all, without making (and freeing) zlib's 40 KiB of state per message."""

    inflater: zlib._Decompress | None = None

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        size = frame.payload_size
        self.tally.wire_bytes += size + (2 if size < 126 else 4 if size < 1 << 16 else 10)
        data = frame.get_payload_as_bytes()
        if frame.rsv1:
            if self.inflater is None:
                self.inflater = zlib.decompressobj(wbits=-15)
            data = self.inflater.decompress(data + b"\x00\x00\xff\xff")
        try:
            stamp = int(data[:STAMP])
        except ValueError:
            self.control(transport, frame)
            return
        if stamp:
            self.record(monotonic_ns() - stamp)
        else:
            self.sync()


#: What a client offers to compress (Chromium's offer).
DEFLATE_OFFER = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}


class SocketIOClient(RawClient):
    """A Socket.IO 5 client (Engine.IO 4 over WebSocket) in the baseline's one room.

    Open packet ``0{...}`` -> ``40`` (join the default namespace, which joins
    the room) -> ``40{...}`` means ready. ``42["message","<data>"]`` is a
    delivery, ``2`` a ping the client must answer with ``3``.
    """


    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        data = frame.get_payload_as_bytes()
        if data.startswith(b"42"):
            stamp = int(data[14 : 14 + STAMP])
            if stamp:
                self.stamped(stamp)
            else:
                self.sync()
        elif data == b"2":
            transport.send(WSMsgType.TEXT, b"3")
        elif data.startswith(b"0{"):
            transport.send(WSMsgType.TEXT, b"40")
        elif data.startswith(b"40") and not self.ready.done():
            self.ready.set_result(None)
        else:
            self.control(transport, frame)

    def publish(self, message: bytes) -> None:
        self.transport.send(WSMsgType.TEXT, b'42["publish","' + message + b'"]')


#: system -> (URL path of its WebSocket endpoint, client class)
WEBSOCKET = {
    "wsrelay": (f"/ws/{CHANNEL}", RawClient),
    "wsrelay-redis": (f"/ws/{CHANNEL}", RawClient),
    "wsrelay-nodelay": (f"/ws/{CHANNEL}", RawClient),
    "seed-loop": ("/message/", RawClient),
    "flask-socketio": ("/socket.io/?EIO=4&transport=websocket", SocketIOClient),
    "flask-socketio-redis": ("/socket.io/?EIO=4&transport=websocket", SocketIOClient),
    "nchan": (f"/pubsub/{CHANNEL}", RawClient),
    "gevent-floor": (f"/ws/{CHANNEL}", RawClient),
    "gevent-floor-callbacks": (f"/ws/{CHANNEL}", RawClient),
}

#: system -> URL path of a WebSocket that publishes without receiving (for the HTTP readers'
#: scenarios). Nchan's publisher answers each message with the channel's state, which the
#: client ignores (not a stamped message).
PUBLISHER = {
    "wsrelay": f"/ws/{CHANNEL}?echo=0",
    "wsrelay-redis": f"/ws/{CHANNEL}?echo=0",
    "nchan": f"/pub/{CHANNEL}",
    "gevent-floor": f"/ws/{CHANNEL}?echo=0",
    "gevent-floor-callbacks": f"/ws/{CHANNEL}?echo=0",
}


async def connect_websocket(system: str, port: int, tally: Tally,
                            path: str | None = None, wire: str | None = None) -> RawClient:
    """One WebSocket client of ``system`` (on its endpoint, or on ``path``), ready to
    publish and to receive. ``wire``: a :class:`WireClient` instead, offering compression
    (``"deflate"``) or not (``"plain"``)."""
    endpoint, client_class = WEBSOCKET[system]
    client = (WireClient if wire else client_class)(tally)
    await ws_connect(
        lambda: client, f"ws://127.0.0.1:{port}{path or endpoint}",
        websocket_handshake_timeout=60, max_frame_size=64 << 20, read_buffer_init_size=4096,
        extra_headers=DEFLATE_OFFER if wire == "deflate" else None,
    )
    await asyncio.wait_for(client.ready, 60)
    return client


async def connect_publisher(system: str, port: int) -> RawClient:
    """A WebSocket client of ``system`` that publishes and receives nothing it counts
    (where the system cannot leave the sender out, what it receives is counted apart)."""
    return await connect_websocket(system, port, Tally(), PUBLISHER.get(system))


# -- HTTP clients (long-poll and SSE) ------------------------------------------------------

class HttpClient(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection reading one channel, with ``REQUEST``."""

    REQUEST = b""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.record = tally.latencies.append
        self.synced = False
        #: Set once connected.
        self.transport: asyncio.Transport
        self.parser = httptools.HttpResponseParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a TCP connection's
        self.request()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tally.closed_by_server += 1

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def deliver(self, stamp: int, now: int) -> None:
        if stamp:
            self.record(now - stamp)
        elif not self.synced:
            self.synced = True
            self.tally.synced += 1

    def request(self) -> None:
        self.transport.write(self.REQUEST)


class PollClient(HttpClient):
    """wsrelay's comet long-poll: ask, get every message after the cursor (JSON), ask again
    from the new cursor."""

    def __init__(self, tally: Tally) -> None:
        super().__init__(tally)
        self.cursor = ""
        self.body: list[bytes] = []

    def request(self) -> None:
        since = f"&since={self.cursor}" if self.cursor else ""
        self.transport.write(
            f"GET /poll/{CHANNEL}?timeout=30{since} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        )

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self.body)
        self.body.clear()
        self.tally.requests += 1
        self.answer(body, time.monotonic_ns())
        self.request()

    def answer(self, body: bytes, now: int) -> None:
        answer = json.loads(body)
        for message in answer["messages"]:
            self.deliver(int(message["data"][:STAMP]), now)
        self.cursor = answer["cursor"]


class NchanPollClient(PollClient):
    """Nchan's long-poll: one message per answer, its body as published; the answer's
    ``Last-Modified`` and ``Etag`` are the cursor, sent back as ``If-Modified-Since`` and
    ``If-None-Match`` so that the next answer is the next message in the channel's buffer."""

    def __init__(self, tally: Tally) -> None:
        super().__init__(tally)
        self.modified = self.etag = b""

    def request(self) -> None:
        cursor = (b"If-Modified-Since: %s\r\nIf-None-Match: %s\r\n" % (self.modified, self.etag)
                  if self.modified else b"")
        self.transport.write(b"GET /sub/%s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n"
                             % (CHANNEL.encode(), cursor))

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"last-modified":
            self.modified = value
        elif name == b"etag":
            self.etag = value

    def answer(self, body: bytes, now: int) -> None:
        if self.parser.get_status_code() == 200:
            self.deliver(int(body[:STAMP]), now)


class SSEClient(HttpClient):
    """Server-Sent Events: one response that never ends, one event per message."""

    REQUEST = f"GET /sse/{CHANNEL} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()

    def __init__(self, tally: Tally) -> None:
        super().__init__(tally)
        self.rest = b""

    def on_body(self, body: bytes) -> None:
        events = (self.rest + body).split(b"\n\n")
        self.rest = events.pop()
        now = time.monotonic_ns()
        for event in events:
            start = event.find(b"data: ")
            if start >= 0:
                self.deliver(int(event[start + 6 : start + 6 + STAMP]), now)


class NchanSSEClient(SSEClient):
    """Nchan's EventSource subscriber: its subscriber location, asked for an event stream."""

    REQUEST = (f"GET /sub/{CHANNEL} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               "Accept: text/event-stream\r\n\r\n").encode()


#: (system, scenario kind) -> its HTTP client
HTTP = {
    ("wsrelay", "poll"): PollClient, ("wsrelay", "sse"): SSEClient,
    ("nchan", "poll"): NchanPollClient, ("nchan", "sse"): NchanSSEClient,
    ("gevent-floor", "poll"): PollClient, ("gevent-floor-callbacks", "poll"): PollClient,
}


async def connect_http(system: str, kind: str, port: int, tally: Tally) -> HttpClient:
    loop = asyncio.get_running_loop()
    _transport, client = await loop.create_connection(
        lambda: HTTP[system, kind](tally), "127.0.0.1", port
    )
    return client
