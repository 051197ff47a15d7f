"""``/sse/<channel>`` (Server-Sent Events) against a real server, read as a browser would."""

from __future__ import annotations

import base64
import json
import socket
import time

import gevent
import pytest
import requests

from tests.support import (
    Comment,
    Event,
    EventStream,
    poll_json,
    publish,
    publish_stream,
    untimed,
    wait_until,
)


def open_stream(server, channel: str, query: str = "", **headers: str) -> EventStream:
    stream = EventStream(f"{server.url}/sse/{channel}{query}", headers)
    assert stream.response.status_code == 200, stream.response.text
    return stream






# -- the stream ---------------------------------------------------------------------------

def test_response_is_an_uncached_event_stream(server, channel):
    with open_stream(server, channel) as stream:
        assert stream.response.headers["Content-Type"].startswith("text/event-stream")
        assert "no-store" in stream.response.headers["Cache-Control"]
        stream.wait_connected()
        assert stream.retry == 2000


def test_each_event_id_is_the_message_id(server, channel):
    with open_stream(server, channel) as stream:
        stream.wait_connected()
        ids = [publish(server, channel, f"m{i}") for i in range(3)]
        events = stream.events(3)
    assert events == [Event("message", f"m{i}", ids[i]) for i in range(3)]


def test_only_messages_published_after_connecting_without_a_cursor(server, channel):
    publish(server, channel, "old")
    with open_stream(server, channel) as stream:
        stream.wait_connected()
        new = publish(server, channel, "new")
        assert stream.next_event() == Event("message", "new", new)


@pytest.mark.parametrize("text", [
    "line one\nline two",
    "blank\n\nline between",
    "trailing newline\n",
    "\nleading newline",
    "",
    "data: not a field\nid: not an id\n: not a comment",
    "héllo ✓ 🎉",
])
def test_text_arrives_intact_as_data_lines(server, channel, text):
    with open_stream(server, channel) as stream:
        stream.wait_connected()
        new = publish(server, channel, text)
        assert stream.next_event() == Event("message", text, new)


def test_text_with_carriage_returns_is_a_json_event(server, channel):
    text = "windows\r\nline\rend"
    with open_stream(server, channel) as stream:
        stream.wait_connected()
        new = publish(server, channel, text)
        event = stream.next_event()
    assert (event.type, event.id) == ("json", new)
    assert untimed([json.loads(event.data)]) == [{"id": new, "data": text}]


def test_binary_is_a_json_event_with_base64(server, channel):
    data = bytes(range(256))
    with open_stream(server, channel) as stream:
        stream.wait_connected()
        new = publish(server, channel, data)
        event = stream.next_event()
    assert (event.type, event.id) == ("json", new)
    item = json.loads(event.data)
    assert untimed([item]) == [
        {"id": new, "data": base64.b64encode(data).decode(), "encoding": "base64"}]
    assert base64.b64decode(item["data"]) == data


def test_many_messages_in_order(server, channel):
    with open_stream(server, channel) as stream, server.ws(f"/ws/{channel}") as sender:
        stream.wait_connected()
        for i in range(150):  # within one WebSocket's publish burst
            sender.send(f"n{i}")
        events = stream.events(150)
    assert [e.data for e in events] == [f"n{i}" for i in range(150)]
    ids = [e.id for e in events]
    assert ids == sorted(set(ids))


# -- resuming -----------------------------------------------------------------------------

def test_last_event_id_resumes_after_that_message(server, channel):
    ids = [publish(server, channel, f"m{i}") for i in range(5)]
    with open_stream(server, channel, **{"Last-Event-ID": ids[1]}) as stream:
        assert stream.events(3) == [Event("message", f"m{i}", ids[i]) for i in (2, 3, 4)]
        live = publish(server, channel, "live")
        assert stream.next_event() == Event("message", "live", live)


def test_since_query_resumes_after_that_message(server, channel):
    ids = [publish(server, channel, f"m{i}") for i in range(5)]
    with open_stream(server, channel, f"?since={ids[2]}") as stream:
        assert stream.events(2) == [Event("message", f"m{i}", ids[i]) for i in (3, 4)]
        live = publish(server, channel, "live")
        assert stream.next_event() == Event("message", "live", live)


def test_last_event_id_wins_over_the_since_of_the_url(server, channel):
    """An EventSource reconnects to the same URL, adding the id of the last event it saw."""
    ids = [publish(server, channel, f"m{i}") for i in range(5)]
    with open_stream(server, channel, f"?since={ids[0]}",
                     **{"Last-Event-ID": ids[3]}) as stream:
        assert stream.next_event() == Event("message", "m4", ids[4])


def test_cursor_at_the_end_streams_only_new_messages(server, channel):
    last = publish(server, channel, "seen")
    with open_stream(server, channel, f"?since={last}") as stream:
        stream.wait_connected()
        new = publish(server, channel, "new")
        assert stream.next_event() == Event("message", "new", new)


def test_reconnecting_with_last_event_id_misses_nothing(server, channel):
    """Drop and resume the stream repeatedly while messages stream in: each exactly once."""
    count = 150  # within one WebSocket's publish burst (WSRELAY_PUBLISH_BURST)
    start = publish(server, channel, "start")
    producer = publish_stream(server, channel, count)
    got: list[Event] = []
    last_id = start
    connections = 0
    while len(got) < count:
        assert connections < 50
        with open_stream(server, channel, **{"Last-Event-ID": last_id}) as stream:
            connections += 1
            for _ in range(min(23, count - len(got))):
                event = stream.next_event(timeout=10)
                assert event.type == "message"
                got.append(event)
            last_id = stream.last_event_id
    producer.get(timeout=5)
    assert [e.data for e in got] == [f"n{i}" for i in range(count)]
    assert [e.id for e in got] == sorted({e.id for e in got})
    assert connections > 2


# -- gaps are reported --------------------------------------------------------------------

def test_a_too_old_cursor_gets_a_reset_event_then_what_is_retained(make_server, channel):
    server = make_server(env={"WSRELAY_HISTORY_SIZE": "3"})
    ids = [publish(server, channel, f"m{i}") for i in range(10)]
    with open_stream(server, channel, **{"Last-Event-ID": ids[0]}) as stream:
        reset = stream.next_event()
        assert reset.type == "reset"
        assert json.loads(reset.data)["cursor"] == ids[9]
        assert stream.events(3) == [Event("message", f"m{i}", ids[i]) for i in (7, 8, 9)]
    with open_stream(server, channel, f"?since={ids[6]}") as stream:
        first = stream.next_event()
        assert first == Event("message", "m7", ids[7])  # still covered: no reset


def test_a_cursor_from_another_epoch_gets_a_reset_event(server, channel):
    kept = publish(server, channel, "kept")
    with open_stream(server, channel, "?since=0000000000001-0000000001") as stream:
        assert stream.next_event().type == "reset"
        assert stream.next_event() == Event("message", "kept", kept)


# -- keep-alive and clean-up --------------------------------------------------------------

def test_keep_alive_comments_while_idle(make_server, channel):
    server = make_server(env={"WSRELAY_SSE_KEEPALIVE": "0.2"})
    with open_stream(server, channel) as stream:
        stream.wait_connected()
        started = time.monotonic()
        keepalives = 0
        while keepalives < 4:
            item = stream.next(timeout=2)
            assert item == Comment("keep-alive")
            keepalives += 1
        assert time.monotonic() - started < 3
        new = publish(server, channel, "after the quiet")
        assert stream.next_event() == Event("message", "after the quiet", new)


def test_a_held_event_lingers_for_the_next_message_as_configured(make_server, channel):
    """``WSRELAY_SSE_LINGER`` reaches the stream: an event queued within the write window
    waits past the window's end for the next message, then goes out alone."""
    server = make_server(env={"WSRELAY_WRITE_DELAY": "0.3", "WSRELAY_SSE_LINGER": "1"})
    with open_stream(server, channel) as stream:
        stream.wait_connected()
        first = publish(server, channel, "one")
        assert stream.next_event() == Event("message", "one", first)
        published = time.monotonic()
        second = publish(server, channel, "two")
        assert stream.next_event() == Event("message", "two", second)
        assert 0.6 < time.monotonic() - published < 4, "past the window (0.3 s), then alone"


def test_closed_streams_are_forgotten(make_server, channel):
    server = make_server(env={"WSRELAY_SSE_KEEPALIVE": "0.2"})
    streams = [open_stream(server, channel) for _ in range(5)]
    for stream in streams:
        stream.wait_connected()
    assert server.health()["waiters"] == 5
    for stream in streams:
        stream.close()
    wait_until(lambda: server.health()["waiters"] == 0, timeout=5,
               message="closed SSE streams are still watched")


# -- one id on every transport ------------------------------------------------------------

def test_a_websocket_message_has_the_same_id_on_poll_and_sse(server, channel):
    cursor = poll_json(server, channel, timeout=0)["cursor"]
    with open_stream(server, channel) as stream, server.ws(f"/ws/{channel}") as client:
        stream.wait_connected()
        client.send("over websocket")
        client.send(b"\x01\x02 binary over websocket")
        assert client.recv() == "over websocket"
        text_event, binary_event = stream.events(2)
    items = poll_json(server, channel, since=cursor, timeout=0)["messages"]
    assert [item["id"] for item in items] == [text_event.id, binary_event.id]
    assert text_event == Event("message", "over websocket", items[0]["id"])
    assert json.loads(binary_event.data) == items[1]


def test_http_publish_id_is_the_sse_id_across_processes(make_server, redis_server, channel):
    env = {"WSRELAY_BROKER_URL": redis_server.url}
    a, b = make_server(env=env), make_server(env=env)
    with open_stream(a, channel) as stream:
        stream.wait_connected()
        ids = [publish(b, channel, f"via b {i}") for i in range(3)]
        assert stream.events(3) == [Event("message", f"via b {i}", ids[i]) for i in range(3)]


# -- errors -------------------------------------------------------------------------------

def assert_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code and body["message"]


@pytest.mark.parametrize("name", ["bad$name", "x" * 129, "a/b"])
def test_bad_channel_is_400(server, name):
    assert_error(requests.get(f"{server.url}/sse/{name}", timeout=5), 400, "invalid_channel")


def test_bad_since_or_last_event_id_is_400(server, channel):
    url = f"{server.url}/sse/{channel}"
    assert_error(requests.get(url + "?since=nope", timeout=5), 400, "invalid_since")
    assert_error(requests.get(url, headers={"Last-Event-ID": "nope"}, timeout=5),
                 400, "invalid_since")


def test_foreign_origin_is_403(server, channel):
    response = requests.get(f"{server.url}/sse/{channel}", timeout=5,
                            headers={"Origin": "http://evil.example"})
    assert_error(response, 403, "origin_not_allowed")


def test_format_json_sends_every_message_as_an_item_with_its_time(server, channel):
    """For a client that wants the server's time: every event an item; the plain stream of
    a plain EventSource is unchanged (text as data: lines, above)."""
    with open_stream(server, channel, "?format=json") as stream:
        stream.wait_connected()
        before = time.time() * 1000
        new = publish(server, channel, "plain text")
        event = stream.next_event()
        after = time.time() * 1000
    assert (event.type, event.id) == ("json", new)
    item = json.loads(event.data)
    assert untimed([item]) == [{"id": new, "data": "plain text"}]
    assert before - 5 <= item["time"] <= after + 5


# -- fan-out, and a slow stream among many ------------------------------------------------

def events_of_chunked_body(body: bytes) -> list[tuple[str, str]]:
    """The complete ``(id, data)`` message events of a chunked SSE body cut at any point."""
    text = b""
    while body:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line, 16)
        text += rest[:size]
        body = rest[size + 2:]
    events = []
    for block in text.split(b"\n\n")[:-1]:  # the last block is incomplete (or empty)
        fields = dict(line.split(b": ", 1) for line in block.split(b"\n")
                      if line and not line.startswith(b":") and b": " in line)
        if b"data" in fields:
            events.append((fields[b"id"].decode(), fields[b"data"].decode()))
    return events


def test_a_stream_too_slow_for_its_buffer_is_cut_and_resumes_without_loss(make_server, channel):
    """Many streams read a flood; one never reads. The others get every message in order;
    the slow one is cut once its queue passes WSRELAY_SUBSCRIBER_BUFFER, and resuming
    from the last event it got loses nothing and repeats nothing."""
    server = make_server(env={
        "WSRELAY_MAX_MESSAGE_SIZE": "65536", "WSRELAY_SUBSCRIBER_BUFFER": "1048576",
        "WSRELAY_PUBLISH_RATE": "100000", "WSRELAY_PUBLISH_BURST": "100000",
        "WSRELAY_HISTORY_SIZE": "2000",
    })
    count, size = 600, 32 * 1024  # 19 MiB: past any socket buffers of the slow stream
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: no scaling
    slow.connect(("127.0.0.1", server.port))
    slow.sendall(f"GET /sse/{channel} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += slow.recv(1)
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower()
    readers = [open_stream(server, channel) for _ in range(5)]
    for reader in readers:
        reader.wait_connected()
    got: list[list[Event]] = [[] for _ in readers]

    def read(stream: EventStream, into: list[Event]) -> None:
        while len(into) < count:
            into.append(stream.next_event(timeout=30))

    reading = [gevent.spawn(read, reader, into)
               for reader, into in zip(readers, got, strict=True)]
    texts = [f"{i:04d}" + "x" * (size - 4) for i in range(count)]
    with server.ws(f"/ws/{channel}?echo=0") as publisher:
        for n, text in enumerate(texts, 1):
            publisher.send(text)
            if n % 8 == 0:  # the readers keep pace (they share this process with the sender)
                wait_until(lambda n=n: all(len(into) >= n for into in got), timeout=30)
    gevent.joinall(reading, timeout=60, raise_error=True)
    for reader, events in zip(readers, got, strict=True):
        reader.close()
        assert [event.data for event in events] == texts
    body = b""
    slow.settimeout(30)
    while chunk := slow.recv(1 << 16):  # the server ended it: end of file, not a timeout
        body += chunk
    slow.close()
    received = events_of_chunked_body(body)
    assert 0 < len(received) < count, "the slow stream was cut before the end"
    assert [data for _id, data in received] == texts[: len(received)]
    rest = resume(server, channel, received[-1][0], count - len(received))
    assert [event.data for event in rest] == texts[len(received):]


def resume(server, channel: str, last_event_id: str, count: int) -> list[Event]:
    """Reconnect as EventSource does, from the last event, until ``count`` events came."""
    events: list[Event] = []
    for _ in range(100):
        with open_stream(server, channel, **{"Last-Event-ID": last_event_id}) as stream:
            try:
                while len(events) < count:
                    events.append(stream.next_event(timeout=10))
                return events
            except (StopIteration, requests.exceptions.ChunkedEncodingError):
                last_event_id = stream.last_event_id  # the server ended the stream
    raise AssertionError(f"{len(events)} of {count} events after 100 reconnections")


def test_a_replay_larger_than_the_buffer_comes_in_pages(make_server, channel):
    """Resuming from far back: each stream carries what its queue holds, then ends; the
    client's reconnections from Last-Event-ID get the rest, in order, nothing twice."""
    server = make_server(env={
        "WSRELAY_MAX_MESSAGE_SIZE": "65536", "WSRELAY_SUBSCRIBER_BUFFER": "131072",
        "WSRELAY_PUBLISH_RATE": "100000", "WSRELAY_PUBLISH_BURST": "100000",
    })
    start = publish(server, channel, "start")
    texts = [f"{i:03d}" + "y" * 16_000 for i in range(40)]  # 640 KB: five queues' worth
    for text in texts:
        publish(server, channel, text)
    with open_stream(server, channel, **{"Last-Event-ID": start}) as stream:
        first = []
        with pytest.raises((StopIteration, requests.exceptions.ChunkedEncodingError)):
            while True:
                first.append(stream.next_event(timeout=10))
    assert 0 < len(first) < 40, "the first stream carried one queue's worth, then ended"
    rest = resume(server, channel, first[-1].id, 40 - len(first))
    assert [event.data for event in first + rest] == texts
