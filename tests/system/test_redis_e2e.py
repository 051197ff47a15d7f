"""Many processes on one Redis act as one relay: real servers, real clients, real faults.

Every test starts real ``manage.py serve`` or gunicorn processes pointed at a real
redis-server and checks what a user would: every subscriber on every worker gets every
message in one order with one id, a client resumes on whichever process answers, and
faults (Redis stopped, restarted empty, unreachable from the start, a worker killed with
SIGKILL) are reported and recovered from, never hidden. Tests that stop Redis get their
own redis-server so the session's one is never disturbed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import gevent
import pytest
import redis
import requests
from gevent.event import Event

from tests.support import (
    Closed,
    EventStream,
    RedisServer,
    ServerProcess,
    WSClient,
    free_port,
    untimed,
    wait_until,
)
from wsrelay.ids import MessageId

pytestmark = pytest.mark.e2e  # its tests start processes (servers, manage.py) themselves

TEXT = {"Content-Type": "text/plain; charset=utf-8"}


@pytest.fixture
def start():
    """``start.serve(url, **env)`` / ``start.gunicorn(url, *args)``: servers on one Redis URL,
    all stopped after the test."""
    started: list[ServerProcess] = []

    class Start:
        @staticmethod
        def serve(url: str, **env: str) -> ServerProcess:
            started.append(ServerProcess.serve(env={"WSRELAY_BROKER_URL": url, **env}))
            return started[-1]

        @staticmethod
        def gunicorn(url: str, *args: str, **env: str) -> ServerProcess:
            started.append(ServerProcess.gunicorn(*args, env={"WSRELAY_BROKER_URL": url, **env}))
            return started[-1]

    yield Start
    for server in started:
        server.stop()


# -- a client's view ------------------------------------------------------------------------


def post(server: ServerProcess, channel: str, text: str) -> requests.Response:
    return requests.post(f"{server.url}/publish/{channel}", data=text.encode(), headers=TEXT,
                         timeout=10)


def published(server: ServerProcess, channel: str, text: str) -> str:
    """Publish ``text`` and return its id; the server must accept it."""
    answer = post(server, channel, text)
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def poll(server: ServerProcess, channel: str, **params) -> dict:
    answer = requests.get(f"{server.url}/poll/{channel}", params=params, timeout=15,
                          headers={"Connection": "close"})  # each poll may meet another worker
    assert answer.status_code == 200, answer.text
    return answer.json()


def cursor(server: ServerProcess, channel: str) -> str:
    """Where the channel is now: a ``since`` after which everything is new."""
    return poll(server, channel, timeout=0)["cursor"]


def retained(server: ServerProcess, channel: str, since: str) -> list[tuple[str, str]]:
    """(id, text) of every message after ``since``, as long-poll reads it; no gap allowed."""
    body = poll(server, channel, since=since, timeout=0)
    assert "reset" not in body, body
    return [(message["id"], message["data"]) for message in body["messages"]]


def receive(ws: WSClient, count: int, timeout: float = 10) -> list[str | bytes]:
    return [ws.recv(timeout=timeout) for _ in range(count)]


def readyz(server: ServerProcess) -> int:
    return requests.get(server.url + "/readyz", timeout=10).status_code


def worker_reports(server: ServerProcess, workers: int, timeout: float = 20) -> dict[int, dict]:
    """The /healthz of each of ``workers`` gunicorn workers, by pid: asked on fresh
    connections until every worker has answered at least once."""
    reports: dict[int, dict] = {}

    def every_worker_answered() -> bool:
        body = requests.get(server.url + "/healthz", headers={"Connection": "close"},
                            timeout=5).json()
        reports[body["pid"]] = body
        return len(reports) >= workers

    wait_until(every_worker_answered, timeout, interval=0.01,
               message=f"only workers {sorted(reports)} answered")
    return reports


def parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def subscribers_by_worker(server: ServerProcess, workers: int, total: int) -> dict[int, int]:
    """How many WebSocket subscribers each worker holds, once they add up to ``total``."""
    counts: dict[int, int] = {}

    def all_counted() -> bool:
        counts.clear()
        counts.update((pid, report["subscribers"])
                      for pid, report in worker_reports(server, workers).items())
        return sum(counts.values()) == total

    wait_until(all_counted, 20, message=f"subscribers by worker: {counts}, not {total}")
    return counts


def spread_clients(server: ServerProcess, path: str, workers: int, each: int) -> list[WSClient]:
    """Open WebSocket clients until every worker holds at least ``each`` of them."""
    clients: list[WSClient] = []
    while True:
        clients += [server.ws(path) for _ in range(workers * each)]
        counts = subscribers_by_worker(server, workers, len(clients))
        if min(counts.values()) >= each:
            return clients
        assert len(clients) < 30 * workers * each, f"clients stay on few workers: {counts}"


def refusal(server: ServerProcess, path: str) -> Closed:
    """The close frame of a WebSocket the server accepts and closes at once."""
    client = server.ws(path)
    try:
        with pytest.raises(Closed) as closed:
            client.recv(timeout=10)
    finally:
        client.close()
    return closed.value


def first_event(server: ServerProcess, channel: str):
    with EventStream(f"{server.url}/sse/{channel}") as stream:
        return stream.next_event(timeout=10)


# -- many workers, one order ---------------------------------------------------------------


def test_four_gunicorn_workers_deliver_one_order_with_one_id_to_everyone(
    start, redis_server, channel
):
    # A short keep-alive: gunicorn's graceful stop waits for the SSE stream to notice its end.
    server = start.gunicorn(redis_server.url, "-w", "4", WSRELAY_SSE_KEEPALIVE="1")
    worker_reports(server, 4)  # every worker serves before clients arrive
    begin = cursor(server, channel)
    clients = spread_clients(server, f"/ws/{channel}?since={begin}", workers=4, each=3)
    stream = EventStream(f"{server.url}/sse/{channel}?since={begin}")
    answers: dict[str, str] = {}

    def publish_over_http(name: str) -> None:  # each request may land on any worker
        for i in range(15):
            text = f"{name}-{i}"
            answers[published(server, channel, text)] = text

    publishers = [gevent.spawn(publish_over_http, f"http{n}") for n in range(4)]
    for n, client in enumerate(clients):  # raw mode: through the worker holding the client
        client.send(f"ws{n}")
    gevent.joinall(publishers, timeout=30, raise_error=True)
    total = 4 * 15 + len(clients)

    readers = [gevent.spawn(receive, client, total) for client in clients]
    gevent.joinall(readers, timeout=40, raise_error=True)
    events = stream.events(total, timeout=10)
    stream.close()
    for client in clients:
        client.close()

    history = retained(server, channel, begin)
    for _ in range(7):  # asked again: whichever worker answers, the same ids and order
        assert retained(server, channel, begin) == history
    texts = [text for _, text in history]
    assert sorted(texts) == sorted([*answers.values(), *(f"ws{n}" for n in range(len(clients)))])
    message_ids = [MessageId.parse(message_id) for message_id, _ in history]
    assert len({message_id.epoch for message_id in message_ids}) == 1
    assert [message_id.seq for message_id in message_ids] == list(range(1, total + 1))
    assert all(dict(history)[message_id] == text for message_id, text in answers.items())
    for reader in readers:
        assert reader.value == texts
    assert [(event.id, event.data) for event in events] == history


# -- two processes: resume wherever the client lands -------------------------------------


@pytest.fixture
def two_servers(start, redis_server):
    return start.serve(redis_server.url), start.serve(redis_server.url)


def test_websocket_resumes_with_since_on_the_other_process(two_servers, channel):
    a, b = two_servers
    begin = cursor(a, channel)
    with a.ws(f"/ws/{channel}?since={begin}") as ws:
        first = [published(b, channel, f"m{i}") for i in range(5)]
        assert receive(ws, 5) == [f"m{i}" for i in range(5)]
    for i in range(5, 10):  # published while the client is away
        published(a, channel, f"m{i}")
    with b.ws(f"/ws/{channel}?since={first[-1]}") as ws:
        assert receive(ws, 5) == [f"m{i}" for i in range(5, 10)]
        published(a, channel, "live")
        assert ws.recv() == "live"  # no message twice before it, none after it
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.5)


def test_a_long_poll_cursor_moves_between_processes(two_servers, channel):
    a, b = two_servers
    begin = cursor(a, channel)
    sent: list[tuple[str, str]] = []

    def produce() -> None:
        for i in range(30):
            gevent.sleep(0.02)
            sent.append((published((a, b)[i % 2], channel, f"m{i}"), f"m{i}"))

    producer = gevent.spawn(produce)
    got: list[tuple[str, str]] = []
    position, requests_made = begin, 0
    servers = itertools.cycle((b, a))
    deadline = time.monotonic() + 20
    while len(got) < 30:
        assert time.monotonic() < deadline, f"{len(got)} of 30 messages after 20 s"
        body = poll(next(servers), channel, since=position, timeout=10)  # held when caught up
        assert "reset" not in body
        got += [(message["id"], message["data"]) for message in body["messages"]]
        position = body["cursor"]
        requests_made += 1
    producer.get(timeout=10)
    assert got == sent
    assert requests_made >= 2


def test_sse_resumes_from_last_event_id_on_the_other_process(two_servers, channel):
    a, b = two_servers
    begin = cursor(a, channel)
    with EventStream(f"{a.url}/sse/{channel}?since={begin}") as stream:
        first = [(published(b, channel, f"m{i}"), f"m{i}") for i in range(4)]
        events = stream.events(4)
    assert [(event.id, event.data) for event in events] == first
    missed = [(published(a, channel, f"m{i}"), f"m{i}") for i in range(4, 8)]
    with EventStream(f"{b.url}/sse/{channel}", {"Last-Event-ID": events[-1].id}) as stream:
        assert [(event.id, event.data) for event in stream.events(4)] == missed
        live = published(a, channel, "live")
        event = stream.next_event()
        assert (event.id, event.data) == (live, "live")


# -- faults --------------------------------------------------------------------------------


def assert_unavailable(answer: requests.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == "broker_unavailable"


def test_while_redis_is_down_publishing_is_refused_and_subscribers_stay(
    start, own_redis, channel
):
    server = start.serve(own_redis.url)
    begin = cursor(server, channel)
    before = published(server, channel, "before")
    with server.ws(f"/ws/{channel}?since={begin}") as subscriber, \
            server.ws(f"/ws/{channel}?echo=0") as publisher:
        assert subscriber.recv() == "before"
        wait_until(lambda: server.health()["subscribers"] == 2, 5)
        own_redis.stop()

        wait_until(lambda: readyz(server) == 503, 10)
        health = server.health()
        assert health["status"] == "degraded" and health["ok"] is False
        assert health["listener"] == "disconnected" and health["error"]
        assert_unavailable(post(server, channel, "refused"))
        publisher.send("refused too")  # a WebSocket publish is refused, not claimed
        with pytest.raises(Closed) as closed:
            publisher.recv(timeout=10)
        assert (closed.value.code, closed.value.reason) == (1013,
                                                            "broker unavailable: not accepted")
        # New subscribers on every transport are told to come back later.
        new_ws = gevent.spawn(refusal, server, f"/ws/{channel}")
        new_poll = gevent.spawn(requests.get, f"{server.url}/poll/{channel}", timeout=15)
        new_sse = gevent.spawn(first_event, server, channel)
        gevent.joinall([new_ws, new_poll, new_sse], timeout=15, raise_error=True)
        assert new_ws.value.code == 1013
        assert_unavailable(new_poll.value)
        assert (new_sse.value.type, new_sse.value.data) == ("error", "broker unavailable")
        with pytest.raises(TimeoutError):  # the live subscriber is not dropped
            subscriber.recv(timeout=0.5)
        assert server.health()["subscribers"] == 1

        own_redis.restart()  # empty: Redis keeps nothing here
        wait_until(lambda: readyz(server) == 200, 15, message=str(server.health()))
        after = published(server, channel, "after")
        assert subscriber.recv(timeout=10) == "after"  # delivery resumed by itself
    assert server.health()["reconnects"] >= 1

    body = poll(server, channel, since=before, timeout=0)  # a cursor from before the loss
    assert body["reset"] is True
    assert untimed(body["messages"]) == [{"id": after, "data": "after"}]
    with EventStream(f"{server.url}/sse/{channel}", {"Last-Event-ID": before}) as stream:
        gap, event = stream.events(2)
    assert gap.type == "reset" and (event.id, event.data) == (after, "after")


def test_a_stream_through_a_redis_restart_delivers_exactly_what_was_accepted(
    start, own_redis, channel
):
    a, b = start.serve(own_redis.url), start.serve(own_redis.url)
    begin = cursor(a, channel)
    subscribers = [a.ws(f"/ws/{channel}?since={begin}"), b.ws(f"/ws/{channel}?since={begin}")]
    accepted: list[str] = []
    refused = 0
    restarted = Event()

    def produce() -> None:
        nonlocal refused
        after_restart = 0
        for i in itertools.count():
            answer = post((a, b)[i % 2], channel, f"m{i}")
            if answer.status_code == 200:
                accepted.append(f"m{i}")
                after_restart += restarted.is_set()
                if after_restart >= 20:
                    return
            else:
                assert_unavailable(answer)
                refused += 1
                gevent.sleep(0.05)
            gevent.sleep(0.02)

    producer = gevent.spawn(produce)
    wait_until(lambda: len(accepted) >= 20, 10)
    own_redis.stop()
    wait_until(lambda: refused >= 5, 10)
    own_redis.restart()
    restarted.set()
    producer.get(timeout=30)

    readers = [gevent.spawn(receive, ws, len(accepted)) for ws in subscribers]
    gevent.joinall(readers, timeout=20, raise_error=True)
    for reader, ws in zip(readers, subscribers, strict=True):
        assert reader.value == accepted
        with pytest.raises(TimeoutError):  # and nothing more
            ws.recv(timeout=0.3)
        ws.close()


def test_clients_of_a_killed_worker_resume_on_another_without_loss(
    start, redis_server, channel
):
    server = start.gunicorn(redis_server.url, "-w", "2")
    worker_reports(server, 2)
    begin = cursor(server, channel)
    clients = spread_clients(server, f"/ws/{channel}?since={begin}", workers=2, each=2)
    counts = subscribers_by_worker(server, 2, len(clients))
    victim = max(counts, key=counts.get)
    assert parent_pid(victim) == server.proc.pid  # a worker of this gunicorn

    def follow(ws: WSClient) -> tuple[list[str], int]:
        """Read until "end"; when dropped, reconnect after the last message seen."""
        received: list[str] = []
        drops = 0
        while True:
            try:
                text = ws.recv(timeout=15)
            except (Closed, OSError):
                drops += 1
                since = begin
                if received:  # its id, as the client knows it: from a poll
                    since = next(i for i, t in retained(server, channel, begin)
                                 if t == received[-1])
                ws = server.ws(f"/ws/{channel}?since={since}")
                continue
            if text == "end":
                ws.close()
                return received, drops
            received.append(text)

    followers = [gevent.spawn(follow, ws) for ws in clients]
    sent = 0
    for i in range(80):
        if i == 25:
            os.kill(victim, signal.SIGKILL)
        with contextlib.suppress(requests.RequestException):  # may meet the dying worker
            sent += post(server, channel, f"m{i}").status_code == 200
        gevent.sleep(0.02)
    wait_until(lambda: post(server, channel, "end").status_code == 200, 10)
    gevent.joinall(followers, timeout=30, raise_error=True)

    texts = [text for _, text in retained(server, channel, begin)][:-1]
    assert len(texts) >= sent >= 70
    dropped = 0
    for follower in followers:
        received, drops = follower.value
        assert received == texts  # nothing lost, nothing twice, one order
        dropped += drops > 0
    assert dropped == counts[victim]
    assert victim not in worker_reports(server, 2)  # the master replaced it


def test_a_redis_unreachable_at_start_is_used_once_it_appears(start, channel):
    port = free_port()
    server = start.serve(f"redis://127.0.0.1:{port}/0")  # nothing listens there yet
    assert readyz(server) == 503
    assert server.health()["status"] == "degraded"
    assert_unavailable(post(server, channel, "too early"))
    assert refusal(server, f"/ws/{channel}").code == 1013

    late = RedisServer.start(port)
    try:
        wait_until(lambda: readyz(server) == 200, 15, message=str(server.health()))
        begin = cursor(server, channel)
        with server.ws(f"/ws/{channel}?since={begin}") as ws:
            message_id = published(server, channel, "now")
            assert ws.recv() == "now"
        assert retained(server, channel, begin) == [(message_id, "now")]
    finally:
        late.stop()


def test_a_rediss_url_to_a_server_without_tls_is_unavailable_not_a_crash(
    start, redis_server, channel
):
    server = start.serve(f"rediss://127.0.0.1:{redis_server.port}/0")
    assert_unavailable(post(server, channel, "x"))
    health = server.health()
    assert health["broker"] == "redis" and health["url"].startswith("rediss://")
    assert health["status"] == "degraded" and health["error"]
    assert readyz(server) == 503
    assert server.proc.poll() is None


# -- other ways to reach Redis --------------------------------------------------------------


@contextlib.contextmanager
def redis_on_unix_socket(directory) -> Iterator[str]:
    """A redis-server listening only on a Unix socket; yields its ``unix://`` URL."""
    path = directory / "redis.sock"
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(path), "--save", "",
         "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_until(path.exists, 10, message="redis-server made no socket")
        yield f"unix://{path}?db=0"
    finally:
        proc.terminate()
        proc.wait(10)


def test_two_processes_share_channels_over_a_unix_socket(start, tmp_path, channel):
    with redis_on_unix_socket(tmp_path) as url:
        a, b = start.serve(url), start.serve(url)
        assert a.health()["status"] == "ok"
        begin = cursor(a, channel)
        with a.ws(f"/ws/{channel}?since={begin}") as ws:
            message_id = published(b, channel, "over the socket")
            assert ws.recv() == "over the socket"
        assert retained(a, channel, begin) == [(message_id, "over the socket")]


def test_relays_with_different_prefixes_share_a_redis_without_mixing(
    start, redis_server, channel
):
    a = start.serve(redis_server.url, WSRELAY_REDIS_PREFIX="relay-a")
    b = start.serve(redis_server.url, WSRELAY_REDIS_PREFIX="relay-b")
    assert a.health()["prefix"] == "relay-a"
    published(a, channel, "only a")
    assert MessageId.parse(cursor(b, channel)).seq == 0  # b's channel of that name is empty
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert sorted(client.keys(f"relay-a:{{{channel}}}*")) == [
            f"relay-a:{{{channel}}}:log".encode(), f"relay-a:{{{channel}}}:state".encode()]
    finally:
        client.close()
