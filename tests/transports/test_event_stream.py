"""An SSE stream's encoding and queue without a server: events made once, chunk-framed."""

from __future__ import annotations

from wsrelay.broker import MemoryBroker
from wsrelay.hub import MessageServer
from wsrelay.ids import MessageId
from wsrelay.transports.event_stream import ENCODERS, EventStream, reset_event


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
