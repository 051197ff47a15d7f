"""An SSE stream's encoding, queue and pacing without a server: events made once,
chunk-framed, written to a real socket in sends that fall when messages arrive."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import gevent
import gevent.socket
import pytest

from wsrelay.broker import MemoryBroker
from wsrelay.hub import MessageServer
from wsrelay.ids import MessageId
from wsrelay.transports.event_stream import ENCODERS, EventStream, reset_event


class Peer:
    """The client's end of a stream's socket: what arrived, and when."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = b""
        self.arrivals: list[tuple[float, bytes]] = []

    def read(self) -> bytes:
        """Everything sent so far (waits a moment for it to land)."""
        gevent.sleep(0.05)
        self.sock.setblocking(False)
        try:
            while chunk := self.sock.recv(1 << 20):
                self.data += chunk
                self.arrivals.append((time.monotonic(), chunk))
        except BlockingIOError:
            pass
        return self.data


@pytest.fixture
def make_stream() -> Iterator[Callable[[float], tuple[MessageServer, EventStream, Peer]]]:
    """A started hub (a 0.2 s write window) and one open stream, lingering ``linger``
    seconds, on a loopback socket pair."""
    hub = MessageServer(MemoryBroker(history_size=100, history_ttl=60), write_delay=0.2)
    hub.start()
    made: list[tuple[EventStream, socket.socket]] = []

    def make(linger: float) -> tuple[MessageServer, EventStream, Peer]:
        ours, theirs = socket.socketpair()
        stream = EventStream(hub, "c", gevent.socket.socket(fileno=ours.detach()),
                             as_json=False, chunked=False, buffer_limit=1 << 24, linger=linger)
        made.append((stream, theirs))
        hub.subscribe(stream.subscription, None)
        hub.hold(stream)
        stream.open(3600.0, None)
        return hub, stream, Peer(theirs)

    yield make
    for stream, theirs in made:
        stream.abort()
        stream.release()
        theirs.close()
    hub.stop()


def events(data: bytes) -> list[bytes]:
    return [line[6:] for line in data.split(b"\n") if line.startswith(b"data: ")]


def test_a_chunked_event_is_one_chunk_of_the_event():
    encoder = ENCODERS[False, True]
    framed = encoder.frame(b"data: hi\n\n")
    assert framed == b"a\r\ndata: hi\n\n\r\n"
    assert ENCODERS[False, False].frame(b"data: hi\n\n") == b"data: hi\n\n"


def test_the_reset_event_moves_last_event_id_to_the_cursor():
    cursor = MessageId(1795289699756, 3)
    assert reset_event(cursor).startswith(f"id: {cursor}\nevent: reset\n".encode())


def test_streams_of_a_kind_share_one_event_and_a_sockless_stream_yields_it():
    hub = MessageServer(MemoryBroker(history_size=100, history_ttl=60))
    hub.start()
    try:
        streams = [EventStream(hub, "c", None, as_json=False, chunked=True, buffer_limit=1 << 20)
                   for _ in range(2)]
        for stream in streams:
            hub.subscribe(stream.subscription, None)
            stream.open(60.0, None)
        message = hub.publish("c", "two\nlines")
        hub.flush_pending()
        assert streams[0].encoder is streams[1].encoder
        assert not streams[0].encoder.chunked  # the server frames what it is given
        assert streams[0].ready.is_set()
        assert streams[0].take() == f"id: {message.id}\ndata: two\ndata: lines\n\n".encode()
        streams[1].end(b"event: error\ndata: token expired\n\n")
        assert streams[1].take().endswith(b"data: token expired\n\n")
        for stream in streams:
            stream.release()
        assert hub.counts()["subscribers"] == 0
    finally:
        hub.stop()


def test_a_held_event_goes_out_with_the_next_message_not_at_the_end_of_its_window(make_stream):
    """Messages arriving steadily a little faster than the window: a send when each second
    one arrives, carrying both, instead of one at the window's end with the first alone."""
    hub, _stream, peer = make_stream(linger=1.0)
    hub.publish("c", "one")
    assert events(peer.read()) == [b"one"], "an idle stream is written at once"
    writes = hub.stats.writes
    hub.publish("c", "two")  # within the window: held
    gevent.sleep(0.4)  # the window (0.2 s) has ended, the linger (1 s) has not
    assert events(peer.read()) == [b"one"], "held past its window, for the next message"
    hub.publish("c", "three")
    assert events(peer.read()) == [b"one", b"two", b"three"]
    assert hub.stats.writes == writes + 1, "two and three went out in one send"


def test_a_held_event_goes_out_alone_once_it_has_lingered(make_stream):
    hub, _stream, peer = make_stream(linger=0.3)
    hub.publish("c", "one")
    assert events(peer.read()) == [b"one"]
    published = time.monotonic()
    hub.publish("c", "two")  # within the window: held, and nothing follows it
    deadline = time.monotonic() + 3
    while events(peer.read()) != [b"one", b"two"] and time.monotonic() < deadline:
        pass
    assert events(peer.data) == [b"one", b"two"]
    waited = peer.arrivals[-1][0] - published
    # the window (0.2 s from one's send) and the linger (0.3 s): not at the window's end
    assert 0.3 <= waited < 1.5, "it lingered past its window, and not for ever"


def test_a_queue_larger_than_the_socket_takes_goes_out_whole_and_in_order(make_stream):
    """A burst past the socket's buffer: a send takes part, the rest follows when the
    socket is writable, and the events queued meanwhile after it."""
    hub, stream, peer = make_stream(linger=0.0)
    body = "x" * 1000
    for number in range(3000):  # about 3 MB
        hub.publish("c", f"{number} {body}")
    received: list[bytes] = []
    deadline = time.monotonic() + 10
    while len(received) < 3000 and time.monotonic() < deadline:
        received = events(peer.read())
    assert [event.split(b" ")[0] for event in received] == [b"%d" % n for n in range(3000)]
    assert all(event.endswith(body.encode()) for event in received)
    assert hub.stats.writes > 2, "the socket took it in several sends"
    assert stream.size == 0


def test_without_a_linger_a_held_event_goes_out_at_the_end_of_its_window(make_stream):
    """``WSRELAY_SSE_LINGER=0``: paced like a WebSocket."""
    hub, _stream, peer = make_stream(linger=0.0)
    hub.publish("c", "one")
    assert events(peer.read()) == [b"one"]
    hub.publish("c", "two")
    gevent.sleep(0.4)  # the window (0.2 s) has ended
    assert events(peer.read()) == [b"one", b"two"]
