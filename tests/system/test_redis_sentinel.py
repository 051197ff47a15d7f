"""Redis Sentinel: the relay follows a failover, with no silent gap, no duplicate, no reused id.

Real processes: a master, its replica and a sentinel (``redis-server --sentinel``),
two ``manage.py serve`` processes on ``redis+sentinel://``, a steady publisher posting
to both, and subscribers on every transport spread over the two. The master is failed
over twice over: by ``SENTINEL FAILOVER``, and by SIGKILL. Each client's messages are
checked for what a user would count: acknowledged messages missing without a reset,
duplicates, and ids given to two different messages (all must be 0); and the seconds
until publishing succeeds again are printed (docs/deployment.md quotes them).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import tempfile
import time
from pathlib import Path

import gevent
import pytest
import redis
import requests

from tests.support import EventStream, RedisServer, ServerProcess, WSClient, free_port, wait_until
from wsrelay.ids import MessageId

pytestmark = pytest.mark.e2e  # starts redis-servers, a sentinel and servers itself

MASTER = "main"
TEXT = {"Content-Type": "text/plain; charset=utf-8"}


def redis_process(*args: str) -> RedisServer:
    """A redis-server on a free port, without persistence, with ``args``."""
    port = free_port()
    directory = tempfile.mkdtemp(prefix="wsrelay-redis-")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", directory, *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    server = RedisServer(proc, port, directory)
    wait_until(server.ping, 10, message="redis-server did not start")
    return server


def sentinel_process(master_port: int) -> RedisServer:
    """A sentinel watching the master on ``master_port`` (quorum 1, down after 1 s)."""
    port = free_port()
    directory = tempfile.mkdtemp(prefix="wsrelay-sentinel-")
    config = Path(directory) / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 1\n"
        f"sentinel down-after-milliseconds {MASTER} 1000\n"
        f"sentinel failover-timeout {MASTER} 5000\n"
    )
    proc = subprocess.Popen(["redis-server", str(config), "--sentinel"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    server = RedisServer(proc, port, directory)
    wait_until(server.ping, 10, message="the sentinel did not start")
    return server


@pytest.fixture
def sentinel_set():
    """(master, replica, sentinel), the sentinel knowing the replica; all stopped after."""
    master = redis_process()
    replica = redis_process("--replicaof", "127.0.0.1", str(master.port))
    sentinel = sentinel_process(master.port)
    watcher = redis.Redis(port=sentinel.port, decode_responses=True)

    def replica_known() -> bool:
        replicas = watcher.sentinel_slaves(MASTER)
        return any(r["port"] == replica.port and r["master-link-status"] == "ok"
                   for r in replicas)

    try:
        wait_until(replica_known, 30, message="the sentinel never saw the replica")
        yield master, replica, sentinel
    finally:
        for process in (sentinel, replica, master):
            process.stop()


class PollClient:
    """A long-poll client going from cursor to cursor, keeping what it got and its resets."""

    def __init__(self, server: ServerProcess, channel: str, since: str) -> None:
        self.items: list[tuple[str, str]] = []
        self.resets: list[int] = []  # how many items it had when told of a gap
        self._greenlet = gevent.spawn(self._run, server, channel, since)

    def _run(self, server: ServerProcess, channel: str, cursor: str) -> None:
        while True:
            try:
                answer = requests.get(f"{server.url}/poll/{channel}",
                                      params={"since": cursor, "timeout": 2}, timeout=10)
            except requests.RequestException:
                gevent.sleep(0.2)
                continue
            if answer.status_code != 200:  # 503 while the broker is away: ask again
                gevent.sleep(0.2)
                continue
            body = answer.json()
            if body.get("reset"):
                self.resets.append(len(self.items))
            self.items += [(m["id"], m["data"]) for m in body["messages"]]
            cursor = body["cursor"]

    def failure(self) -> str:
        return repr(self._greenlet.exception) if self._greenlet.dead else ""

    def stop(self) -> None:
        self._greenlet.kill()


class SSEClient:
    """An SSE client collecting (id, data) of messages and counting resets; like a browser's
    EventSource it reconnects with ``Last-Event-ID`` when the stream ends (an open stream
    ends with ``event: error`` when it cannot read the broker)."""

    def __init__(self, server: ServerProcess, channel: str, since: str) -> None:
        self.items: list[tuple[str, str]] = []
        self.resets: list[int] = []
        self.url = f"{server.url}/sse/{channel}"
        self.last_id = since
        self.stream: EventStream | None = None
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            try:
                self.stream = EventStream(self.url, {"Last-Event-ID": self.last_id})
                self._read(self.stream)
            except (StopIteration, requests.RequestException):
                pass
            gevent.sleep(0.5)

    def _read(self, stream: EventStream) -> None:
        while True:
            event = stream.next(timeout=120)
            kind = getattr(event, "type", None)
            if kind == "reset":
                self.resets.append(len(self.items))
            elif kind in ("message", ""):
                self.items.append((event.id, event.data))
                self.last_id = event.id
            elif kind == "error":
                return

    def failure(self) -> str:
        return repr(self._greenlet.exception) if self._greenlet.dead else ""

    def stop(self) -> None:
        self._greenlet.kill()
        if self.stream is not None:
            self.stream.close()


def collect_ws(ws: WSClient, into: list[str]) -> None:
    while True:
        into.append(str(ws.recv(timeout=120)))


@pytest.mark.parametrize("how", ["SENTINEL FAILOVER", "SIGKILL"])
def test_a_failover_under_a_steady_publisher_loses_nothing_silently(
    sentinel_set, how, channel
):
    master, replica, sentinel = sentinel_set
    url = f"redis+sentinel://127.0.0.1:{sentinel.port}/{MASTER}"
    servers = [ServerProcess.serve(env={"WSRELAY_BROKER_URL": url}) for _ in range(2)]
    a, b = servers
    clients: list = []
    try:
        begin = requests.get(f"{a.url}/poll/{channel}", params={"timeout": 0},
                             timeout=10).json()["cursor"]
        sockets = [a.ws(f"/ws/{channel}?since={begin}"), b.ws(f"/ws/{channel}?since={begin}")]
        received: list[list[str]] = [[], []]
        readers = [gevent.spawn(collect_ws, ws, got)
                   for ws, got in zip(sockets, received, strict=True)]
        clients = [PollClient(a, channel, begin), SSEClient(b, channel, begin)]

        accepted: dict[str, str] = {}  # text -> id
        accepted_at: list[float] = []
        refused: list[float] = []

        def publish() -> None:
            for n in itertools.count():
                text = f"m{n}"
                try:
                    answer = requests.post(f"{servers[n % 2].url}/publish/{channel}",
                                           data=text, headers=TEXT, timeout=10)
                except requests.RequestException:
                    answer = None
                if answer is not None and answer.status_code == 200:
                    accepted[text] = answer.json()["id"]
                    accepted_at.append(time.monotonic())
                else:
                    assert answer is None or answer.json()["error"] == "broker_unavailable"
                    refused.append(time.monotonic())
                gevent.sleep(0.02)

        publisher = gevent.spawn(publish)
        wait_until(lambda: len(accepted) >= 30, 20)
        before = len(accepted)
        failed_over = time.monotonic()
        if how == "SIGKILL":
            master.proc.kill()
        else:
            redis.Redis(port=sentinel.port).execute_command("SENTINEL", "FAILOVER", MASTER)
        wait_until(lambda: redis.Redis(port=sentinel.port, decode_responses=True)
                   .sentinel_get_master_addr_by_name(MASTER)[1] == replica.port, 30,
                   message="no failover")
        wait_until(lambda: len(accepted) >= before + 30, 60,
                   message=f"publishing did not resume: {a.health()} {b.health()}")
        publisher.kill()
        last_refusal = max(refused, default=failed_over)
        resumed = min(t for t in accepted_at if t >= last_refusal)
        print(f"\n{how}: {len(refused)} publishes refused; publishing succeeded again "
              f"{resumed - failed_over:.1f} s after the failover began")

        # Ids: one message per id, ever.
        assert len(set(accepted.values())) == len(accepted), "an id was handed out twice"
        texts = sorted(accepted, key=lambda text: MessageId.parse(accepted[text]))
        wait_until(lambda: all(texts[-1] in got for got in received), 20)
        wait_until(lambda: all(texts[-1] in [d for _, d in c.items] for c in clients), 20,
                   message=str([(type(c).__name__, c.items[-3:], c.resets, c.failure())
                                for c in clients]))

        for got in received:  # live WebSockets: everything accepted, once, in order
            assert len(got) == len(set(got)), "a duplicate"
            assert [t for t in got if t in accepted] == texts
        for client in clients:  # cursors: every id once, in order; a missing one after a reset
            ids = [MessageId.parse(i) for i, _ in client.items]
            assert ids == sorted(set(ids)), "a duplicate or a step back"
            for id_, text in client.items:
                if text in accepted:
                    assert accepted[text] == id_, f"{text} came with another id"
            got = [text for _, text in client.items]
            missing = [t for t in texts if t not in got]
            assert not missing or client.resets, f"missing without a reset: {missing}"
        gevent.killall(readers)
        for ws in sockets:
            ws.close()
        for server in servers:
            health = server.health()
            assert health["ok"], json.dumps(health)
    finally:
        for client in clients:
            client.stop()
        for server in servers:
            server.stop()
