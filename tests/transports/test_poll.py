"""``/poll/<channel>`` (Comet long-poll) against a real server with real clients."""

from __future__ import annotations

import base64
import json
import re
import resource
import socket
import time

import gevent
import pytest
import requests
from gevent.pywsgi import WSGIServer

from tests.support import (
    ServerProcess,
    left_for_the_collector,
    publish,
    publish_stream,
    untimed,
    wait_until,
)
from wsrelay import create_app
from wsrelay.server.handler import RelayHandler

pytestmark = pytest.mark.e2e  # its tests start processes (servers, manage.py) themselves

ID = re.compile(r"\d{13}-\d{10}")


@pytest.fixture(scope="module")
def quiet_server():
    """A server of this module's own: its ``waiters`` count is only this module's polls."""
    proc = ServerProcess.serve()
    yield proc
    proc.stop()




def poll(server, channel: str, **params) -> requests.Response:
    return requests.get(f"{server.url}/poll/{channel}", params=params, timeout=70)


def poll_json(server, channel: str, **params) -> dict:
    response = poll(server, channel, **params)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()


def waiters(server) -> int:
    return server.health()["waiters"]


def held(server, channel: str, count: int = 1, **params) -> list[gevent.Greenlet]:
    """Start ``count`` long-polls and return once the server holds all of them."""
    before = waiters(server)
    polls = [gevent.spawn(poll_json, server, channel, **params) for _ in range(count)]
    wait_until(lambda: waiters(server) >= before + count, timeout=10,
               message="the server did not hold the polls")
    for task in polls:
        assert not task.ready(), task.value
    return polls


# -- answers ------------------------------------------------------------------------------

def test_answers_at_once_with_the_messages_after_since(server, channel):
    ids = [publish(server, channel, f"m{i}") for i in range(4)]
    started = time.monotonic()
    body = poll_json(server, channel, since=ids[0], timeout=30)
    assert time.monotonic() - started < 3
    assert body == {
        "channel": channel,
        "cursor": ids[3],
        "messages": body["messages"],
    }
    assert untimed(body["messages"]) == [{"id": ids[i], "data": f"m{i}"} for i in (1, 2, 3)]
    assert ids == sorted(ids) and all(ID.fullmatch(i) for i in ids)


def test_cursor_resumes_exactly_after_the_last_message(server, channel):
    first = publish(server, channel, "a")
    publish(server, channel, "b")
    page = poll_json(server, channel, since=first, timeout=0)
    assert [m["data"] for m in page["messages"]] == ["b"]
    publish(server, channel, "c")
    publish(server, channel, "d")
    page = poll_json(server, channel, since=page["cursor"], timeout=0)
    assert [m["data"] for m in page["messages"]] == ["c", "d"]
    empty = poll_json(server, channel, since=page["cursor"], timeout=0)
    assert empty["messages"] == [] and empty["cursor"] == page["cursor"]
    assert "reset" not in empty


def test_holds_until_a_message_arrives(quiet_server, channel):
    server = quiet_server
    since = publish(server, channel, "old")
    (task,) = held(server, channel, since=since, timeout=30)
    gevent.sleep(0.3)
    assert not task.ready()
    started = time.monotonic()
    new = publish(server, channel, "new")
    body = task.get(timeout=5)
    assert time.monotonic() - started < 2
    assert untimed(body["messages"]) == [{"id": new, "data": "new"}]
    assert body["cursor"] == new
    wait_until(lambda: waiters(server) == 0, message="the answered poll is still counted")


def test_without_since_waits_for_the_next_new_message(quiet_server, channel):
    server = quiet_server
    publish(server, channel, "before the poll")
    (task,) = held(server, channel, timeout=30)
    new = publish(server, channel, "after the poll")
    assert untimed(task.get(timeout=5)["messages"]) == [{"id": new, "data": "after the poll"}]


def test_without_since_and_timeout_0_gives_the_current_cursor(server, channel):
    last = publish(server, channel, "x")
    body = poll_json(server, channel, timeout=0)
    assert body == {"channel": channel, "cursor": last, "messages": []}


def test_timeout_passes_with_an_empty_answer_and_an_unchanged_cursor(server, channel):
    since = publish(server, channel, "only")
    started = time.monotonic()
    body = poll_json(server, channel, since=since, timeout=1)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 4, elapsed
    assert body == {"channel": channel, "cursor": since, "messages": []}


def test_fractional_timeout(server, channel):
    since = publish(server, channel, "only")
    started = time.monotonic()
    assert poll_json(server, channel, since=since, timeout="0.3")["messages"] == []
    assert 0.25 <= time.monotonic() - started < 3


def test_default_timeout_comes_from_config(make_server, channel):
    server = make_server(env={"WSRELAY_POLL_TIMEOUT": "1"})
    since = publish(server, channel, "only")
    started = time.monotonic()
    assert poll_json(server, channel, since=since)["messages"] == []
    assert 0.9 <= time.monotonic() - started < 4


def test_timeout_60_is_accepted_and_held(quiet_server, channel):
    (task,) = held(quiet_server, channel, timeout=60)
    new = publish(quiet_server, channel, "released")
    assert untimed(task.get(timeout=5)["messages"]) == [{"id": new, "data": "released"}]


def test_a_message_wakes_every_held_poll(quiet_server, channel):
    polls = held(quiet_server, channel, count=20, timeout=30)
    new = publish(quiet_server, channel, "for all")
    for task in polls:
        assert untimed(task.get(timeout=5)["messages"]) == [{"id": new, "data": "for all"}]


def test_a_message_on_another_channel_does_not_answer(quiet_server, channel):
    since = publish(quiet_server, channel, "x")
    (task,) = held(quiet_server, channel, since=since, timeout=30)
    publish(quiet_server, channel + "-other", "elsewhere")
    gevent.sleep(0.5)
    assert not task.ready()
    new = publish(quiet_server, channel, "here")
    assert untimed(task.get(timeout=5)["messages"]) == [{"id": new, "data": "here"}]


# -- encodings ----------------------------------------------------------------------------

def test_text_is_returned_as_is(server, channel):
    texts = ["héllo ✓ 🎉", "two\nlines", "carriage\r\nreturn", "", '{"json": "inside"}']
    first = publish(server, channel, "start")
    ids = [publish(server, channel, text) for text in texts]
    body = poll_json(server, channel, since=first, timeout=0)
    expected = [{"id": i, "data": t} for i, t in zip(ids, texts, strict=True)]
    assert untimed(body["messages"]) == expected


def test_binary_is_base64_with_its_encoding(server, channel):
    first = publish(server, channel, "start")
    data = bytes(range(256))
    new = publish(server, channel, data)
    (item,) = untimed(poll_json(server, channel, since=first, timeout=0)["messages"])
    assert item == {"id": new, "data": base64.b64encode(data).decode(), "encoding": "base64"}
    assert base64.b64decode(item["data"]) == data


def test_websocket_messages_keep_their_type(server, channel):
    first = publish(server, channel, "start")
    with server.ws(f"/ws/{channel}") as client:
        client.send("text from ws")
        client.send(b"\x00\xffbinary")
        assert client.recv() == "text from ws"
        assert client.recv() == b"\x00\xffbinary"
    messages = poll_json(server, channel, since=first, timeout=0)["messages"]
    assert [m["data"] for m in messages] == ["text from ws", base64.b64encode(b"\x00\xffbinary")
                                             .decode()]
    assert "encoding" not in messages[0] and messages[1]["encoding"] == "base64"


def test_answers_are_not_cacheable(server, channel):
    response = poll(server, channel, timeout=0)
    assert "no-store" in response.headers["Cache-Control"]


# -- gaps are reported --------------------------------------------------------------------

def test_since_older_than_history_returns_what_is_retained_with_reset(make_server, channel):
    server = make_server(env={"WSRELAY_HISTORY_SIZE": "3"})
    ids = [publish(server, channel, f"m{i}") for i in range(10)]
    body = poll_json(server, channel, since=ids[0], timeout=30)
    assert body["reset"] is True
    assert untimed(body["messages"]) == [{"id": ids[i], "data": f"m{i}"} for i in (7, 8, 9)]
    assert body["cursor"] == ids[9]
    # the oldest cursor still covered by history is not a gap
    exact = poll_json(server, channel, since=ids[6], timeout=0)
    assert "reset" not in exact
    assert [m["data"] for m in exact["messages"]] == ["m7", "m8", "m9"]


def test_since_from_another_epoch_is_a_reset_answered_at_once(server, channel):
    last = publish(server, channel, "kept")
    started = time.monotonic()
    body = poll_json(server, channel, since="0000000000001-0000000005", timeout=30)
    assert time.monotonic() - started < 3
    assert body["reset"] is True
    assert untimed(body["messages"]) == [{"id": last, "data": "kept"}]


def test_since_after_the_last_message_is_a_reset(server, channel):
    last = publish(server, channel, "kept")
    epoch, seq = last.split("-")
    future = f"{epoch}-{int(seq) + 5:010d}"
    body = poll_json(server, channel, since=future, timeout=30)
    assert body["reset"] is True and body["cursor"] == last


def test_since_from_a_previous_server_run_is_a_reset(make_server, channel):
    first = make_server()
    old = publish(first, channel, "before restart")
    first.stop()
    second = make_server()
    new = publish(second, channel, "after restart")
    body = poll_json(second, channel, since=old, timeout=30)
    assert body["reset"] is True
    assert untimed(body["messages"]) == [{"id": new, "data": "after restart"}]
    assert new > old  # ids of a channel keep increasing across restarts


# -- no message is missed between requests ------------------------------------------------

def test_a_poll_loop_misses_nothing_while_messages_stream_in(server, channel):
    count = 150  # within one WebSocket's publish burst (WSRELAY_PUBLISH_BURST)
    cursor = publish(server, channel, "start")
    producer = publish_stream(server, channel, count)
    got: list[dict] = []
    requests_made = 0
    deadline = time.monotonic() + 15
    while len(got) < count and time.monotonic() < deadline:
        body = poll_json(server, channel, since=cursor, timeout=5)
        requests_made += 1
        assert "reset" not in body
        got.extend(body["messages"])
        if body["messages"]:
            assert body["cursor"] == body["messages"][-1]["id"]
        cursor = body["cursor"]
    producer.get(timeout=5)
    assert [m["data"] for m in got] == [f"n{i}" for i in range(count)]
    ids = [m["id"] for m in got]
    assert ids == sorted(set(ids))
    assert requests_made > 1  # the loop really crossed request boundaries


def test_many_poll_loops_and_a_slow_one_each_get_everything_once(server, channel):
    """Twenty clients poll in a loop while messages stream in; one comes back only every
    half second. Everyone gets every message once, in order; the slow one's answers carry
    all that arrived while it was away, one answer each time."""
    count = 150  # within one WebSocket's publish burst (WSRELAY_PUBLISH_BURST)
    start = publish(server, channel, "start")

    def loop(pause: float) -> tuple[list[dict], int]:
        cursor, got, largest = start, [], 0
        deadline = time.monotonic() + 30
        while len(got) < count and time.monotonic() < deadline:
            body = poll_json(server, channel, since=cursor, timeout=10)
            assert "reset" not in body
            got.extend(body["messages"])
            largest = max(largest, len(body["messages"]))
            cursor = body["cursor"]
            gevent.sleep(pause)
        return got, largest

    clients = [gevent.spawn(loop, 0.0) for _ in range(20)]
    slow = gevent.spawn(loop, 0.5)
    gevent.sleep(0.2)
    producer = publish_stream(server, channel, count)
    gevent.joinall([*clients, slow], timeout=40, raise_error=True)
    producer.get(timeout=5)
    expected = [f"n{i}" for i in range(count)]
    for client in [*clients, slow]:
        got, _largest = client.value
        assert [m["data"] for m in got] == expected
        assert [m["id"] for m in got] == sorted({m["id"] for m in got})
    assert slow.value[1] > 10, "the slow client's answers carried what had piled up"


def test_an_answer_holds_at_most_a_buffer_and_the_cursor_leads_on(make_server, channel):
    """A cursor far behind is answered a buffer's worth at a time (what history holds after
    it stays there for the next poll), never a body of unbounded size."""
    server = make_server(env={"WSRELAY_MAX_MESSAGE_SIZE": "65536",
                              "WSRELAY_SUBSCRIBER_BUFFER": "131072"})
    start = publish(server, channel, "start")
    texts = [f"{i:02d}" + "z" * 20_000 for i in range(30)]  # 600 KB
    for text in texts:
        publish(server, channel, text)
    cursor, got, answers = start, [], 0
    while len(got) < len(texts):
        response = poll(server, channel, since=cursor, timeout=0)
        assert len(response.content) < 131072 + 30_000
        body = response.json()
        got.extend(m["data"] for m in body["messages"])
        cursor = body["cursor"]
        answers += 1
        assert answers <= 10
    assert got == texts and answers > 1


def test_long_poll_across_processes_on_redis(make_server, redis_server, channel):
    env = {"WSRELAY_BROKER_URL": redis_server.url}
    a, b = make_server(env=env), make_server(env=env)
    task = gevent.spawn(poll_json, a, channel, timeout=30)
    wait_until(lambda: waiters(a) >= 1)
    new = publish(b, channel, "from b")
    assert untimed(task.get(timeout=5)["messages"]) == [{"id": new, "data": "from b"}]
    again = poll_json(b, channel, since=new, timeout=0)
    assert again["cursor"] == new and again["messages"] == []


# -- errors -------------------------------------------------------------------------------

def assert_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]


@pytest.mark.parametrize("name", ["bad$name", "x" * 129, "a/b", "sp ace", "ü"])
def test_bad_channel_is_400(server, name):
    assert_error(poll(server, name, timeout=0), 400, "invalid_channel")


@pytest.mark.parametrize("since", ["yesterday", "123", "1-2-3", "-1-5", "abc-def", "1" * 40])
def test_bad_since_is_400(server, channel, since):
    assert_error(poll(server, channel, since=since, timeout=0), 400, "invalid_since")


@pytest.mark.parametrize("timeout", ["-1", "61", "60.5", "abc", "nan", "inf", "1e3"])
def test_bad_timeout_is_400(server, channel, timeout):
    started = time.monotonic()
    assert_error(poll(server, channel, timeout=timeout), 400, "invalid_timeout")
    assert time.monotonic() - started < 3


def test_foreign_origin_is_403(server, channel):
    response = requests.get(f"{server.url}/poll/{channel}?timeout=0", timeout=5,
                            headers={"Origin": "http://evil.example"})
    assert_error(response, 403, "origin_not_allowed")


# -- a thousand held polls ----------------------------------------------------------------

def _raw_poll(port: int, path: str) -> tuple[int, dict]:
    """One long-poll over a bare socket (cheaper than requests for a thousand of them)."""
    with socket.create_connection(("127.0.0.1", port), timeout=40) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     "Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no thread count")


def _round_trip(client, count: int = 100) -> float:
    started = time.monotonic()
    for i in range(count):
        client.send(f"ping {i}")
        assert client.recv(timeout=10) == f"ping {i}"
    return time.monotonic() - started


def test_a_thousand_held_polls_do_not_slow_websocket_delivery(make_server, channel):
    polls_wanted = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < polls_wanted + 500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    # one client address holds them all: lift the per-address connection limit
    server = make_server(env={"WSRELAY_MAX_CONNECTIONS_PER_IP": "5000",
                              "WSRELAY_MAX_STREAMS": "5000"})
    threads_before = _threads(server.proc.pid)
    with server.ws(f"/ws/{channel}-ws") as client:
        _round_trip(client, 20)  # warm up
        baseline = _round_trip(client)

        path = f"/poll/{channel}?timeout=30"
        polls: list[gevent.Greenlet] = []
        for batch in range(1, polls_wanted // 100 + 1):  # in batches, so no SYN is dropped
            polls += [gevent.spawn(_raw_poll, server.port, path) for _ in range(100)]
            wait_until(lambda n=batch * 100: waiters(server) >= n, timeout=10,
                       message=f"only {waiters(server)} of {len(polls)} polls held")
        assert waiters(server) == polls_wanted
        assert not any(task.ready() for task in polls)
        # greenlets, not threads
        assert _threads(server.proc.pid) <= threads_before + 4

        loaded = _round_trip(client)
        assert loaded < 10 * baseline + 1.0, (baseline, loaded)
        assert not any(task.ready() for task in polls)

    new = publish(server, channel, "to all thousand")
    started = time.monotonic()
    results = [task.get(timeout=15) for task in polls]
    assert time.monotonic() - started < 10
    expected = {"channel": channel, "cursor": new,
                "messages": [{"id": new, "data": "to all thousand"}]}
    assert all(status == 200 and {**body, "messages": untimed(body["messages"])} == expected
               for status, body in results)
    wait_until(lambda: waiters(server) == 0)


def test_each_item_carries_the_time_the_broker_accepted_it(server, channel):
    first = publish(server, channel, "start")
    before = time.time() * 1000
    publish(server, channel, "timed")
    after = time.time() * 1000
    (item,) = poll_json(server, channel, since=first, timeout=0)["messages"]
    assert isinstance(item["time"], int) and before - 5 <= item["time"] <= after + 5


def test_an_answered_poll_leaves_nothing_for_the_cyclic_collector():
    """A poll's objects go by reference counting once it is answered: under 1000 held polls
    the collector's traversals took a tenth of the server's time."""
    app = create_app({"WSRELAY_BROKER_URL": "memory://"})
    server = WSGIServer(("127.0.0.1", 0), app, handler_class=RelayHandler, log=None)
    server.start()

    def polls(count: int) -> None:
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=10) as sock:
            for _ in range(count):
                sock.sendall(b"GET /poll/cycles?timeout=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                data = b""
                while not data.endswith(b"}"):
                    data += sock.recv(65536)
                assert data.startswith(b"HTTP/1.1 200 "), data

    def settled_polls(count: int) -> None:
        polls(count)
        gevent.sleep(0.1)

    try:
        left = left_for_the_collector(settled_polls, 5, 50)
        assert not left & {"PollWaiter", "Subscription", "ClientRequest", "Event"}, left
    finally:
        server.stop()
        app.extensions["wsrelay"].close()
