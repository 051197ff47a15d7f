"""``gunicorn -c gunicorn.conf.py``: the production way to serve wsrelay, run for real."""

from __future__ import annotations

import os
import subprocess
import time

import gevent
import pytest
import requests

from tests.support import (
    PYTHON,
    ROOT,
    Bystander,
    Refused,
    ServerProcess,
    free_port,
    poll_json,
    publish,
    untimed,
    wait_until,
)
from tests.system import flood
from wsrelay.server.process import GEN0_THRESHOLD

pytestmark = pytest.mark.e2e  # its tests start processes (servers, manage.py) themselves

STOCK_WORKER = "geventwebsocket.gunicorn.workers.GeventWebSocketWorker"


@pytest.fixture
def gunicorn():
    """Start ``gunicorn -c gunicorn.conf.py -b <free port> ARGS``; all stopped after the test."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        proc = ServerProcess.gunicorn(*args, env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("WSRELAY_") and k not in ("WEB_CONCURRENCY", "GUNICORN_CMD_ARGS")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}






def first_sse_event(server, channel: str, since: str) -> dict[str, str]:
    """The first event of ``/sse/<channel>?since=``, as ``{field: value}``."""
    with requests.get(f"{server.url}/sse/{channel}", params={"since": since}, stream=True,
                      timeout=(5, 10)) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        buffer = b""
        for chunk in response.iter_content(chunk_size=None):
            buffer += chunk
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                fields = dict(line.split(": ", 1) for line in block.decode().split("\n")
                              if line and not line.startswith(":") and ": " in line)
                if "data" in fields:
                    return fields
    raise AssertionError("the stream ended without an event")


def refused_at_start(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    port = free_port()
    result = subprocess.run(
        [PYTHON, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
    )
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    return result


# -- which worker holds which connection --------------------------------------------------

def _children(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry))
    return children


def _established_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01":  # ESTABLISHED, server side
                    inodes.add(fields[9])
    return inodes


def connections_per_worker(server: ServerProcess) -> dict[int, int]:
    """How many accepted connections each gunicorn worker process holds."""
    inodes = _established_inodes(server.port)
    counts = {}
    for worker in _children(server.proc.pid):
        held = 0
        for fd in os.listdir(f"/proc/{worker}/fd"):
            try:
                target = os.readlink(f"/proc/{worker}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held += 1
        counts[worker] = held
    return counts


# -- tests --------------------------------------------------------------------------------

def test_config_boots_and_relays_websocket_poll_sse_and_publish(gunicorn, channel):
    # a short keep-alive lets the worker notice the closed SSE stream, so it stops promptly
    server = gunicorn(env=clean_env(WSRELAY_SSE_KEEPALIVE="0.5"))
    assert server.health()["status"] == "ok"
    cursor = poll_json(server, channel, timeout=0)["cursor"]
    with server.ws(f"/ws/{channel}") as a, server.ws(f"/ws/{channel}") as b:
        a.send("over websocket")
        a.send(b"\x00binary\xff")
        for client in (a, b):
            assert client.recv() == "over websocket"
            assert client.recv() == b"\x00binary\xff"
        posted = publish(server, channel, "over http")
        assert b.recv() == "over http"
    messages = poll_json(server, channel, since=cursor, timeout=0)["messages"]
    assert [m.get("encoding") for m in messages] == [None, "base64", None]
    assert messages[0]["data"] == "over websocket" and untimed(messages)[2] == {
        "id": posted, "data": "over http"}
    event = first_sse_event(server, channel, since=messages[1]["id"])
    assert event == {"id": posted, "data": "over http"}
    # a held long-poll is answered by a later publish
    task = gevent.spawn(poll_json, server, channel, since=posted, timeout=30)
    wait_until(lambda: server.health()["waiters"] >= 1)
    later = publish(server, channel, "later")
    assert untimed(task.get(timeout=5)["messages"]) == [{"id": later, "data": "later"}]
    # refusals before the upgrade work under the gunicorn worker too
    with pytest.raises(Refused) as info:
        server.ws("/ws/bad$name")
    assert info.value.status == 400


def test_config_alone_serves_with_the_bind_from_the_environment(channel):
    port = free_port()
    server = ServerProcess.start(
        [PYTHON, "-m", "gunicorn", "-c", "gunicorn.conf.py"], port,
        clean_env(WSRELAY_BIND=f"127.0.0.1:{port}"),
    )
    try:
        with server.ws(f"/ws/{channel}") as client:
            client.send("no arguments needed")
            assert client.recv() == "no arguments needed"
    finally:
        server.stop()


def test_two_workers_on_the_memory_broker_are_refused_at_start():
    result = refused_at_start("-w", "2", env=clean_env())
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "2 workers on the in-memory broker" in output, output
    assert "-w 1" in output and "WSRELAY_BROKER_URL=redis://" in output
    assert "Traceback" not in output


def test_web_concurrency_is_checked_too():
    result = refused_at_start(env=clean_env(WEB_CONCURRENCY="3"))
    assert result.returncode != 0
    assert "3 workers on the in-memory broker" in result.stdout + result.stderr


def test_wsrelays_worker_refuses_two_workers_on_the_memory_broker_without_the_config_file(
    tmp_path,
):
    """``-k`` naming wsrelay's worker, no ``-c`` (and no gunicorn.conf.py in the directory,
    which gunicorn would read): the worker checks its app's own settings once loaded."""
    port = free_port()
    result = subprocess.run(
        [PYTHON, "-m", "gunicorn", "-w", "2", "-k", "wsrelay.gunicorn_worker.RelayWorker",
         "-b", f"127.0.0.1:{port}", "wsrelay.app:create_app()"],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 3, output  # gunicorn's "worker failed to boot"
    assert "2 workers on the in-memory broker" in output, output
    assert "-w 1" in output and "WSRELAY_BROKER_URL=redis://" in output
    assert "Worker failed to boot" in output and "Traceback" not in output, output
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_wsrelays_worker_alone_serves_without_the_config_file(tmp_path, channel):
    port = free_port()
    log = tmp_path / "gunicorn.log"
    args = [PYTHON, "-m", "gunicorn", "-w", "1", "-k", "wsrelay.gunicorn_worker.RelayWorker",
            "-b", f"127.0.0.1:{port}", "wsrelay.app:create_app()"]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=tmp_path, env=clean_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    server = ServerProcess(proc, port, str(log))
    try:
        server.wait_ready()
        cursor = poll_json(server, channel, timeout=0)["cursor"]
        publish(server, channel, "one worker is fine")
        messages = poll_json(server, channel, since=cursor, timeout=0)["messages"]
        assert [m["data"] for m in messages] == ["one worker is fine"]
    finally:
        server.stop()

def test_two_workers_on_redis_give_every_client_every_message_in_one_order(
    gunicorn, redis_server, channel
):
    server = gunicorn("-w", "2", env=clean_env(WSRELAY_BROKER_URL=redis_server.url))
    wait_until(lambda: len(_children(server.proc.pid)) == 2, message="two workers")
    clients = []
    try:
        # connect until both workers hold some clients (the kernel picks the acceptor)
        while len(clients) < 200:
            batch = [gevent.spawn(server.ws, f"/ws/{channel}") for _ in range(20)]
            clients += [task.get(timeout=10) for task in batch]
            per_worker = connections_per_worker(server)
            if len(clients) >= 40 and len(per_worker) == 2 and min(per_worker.values()) >= 5:
                break
        assert len(per_worker) == 2 and min(per_worker.values()) > 0, per_worker
        assert sum(per_worker.values()) == len(clients), per_worker
        start = publish(server, channel, "start")
        for client in clients:
            assert client.recv(timeout=10) == "start"

        senders = clients[:: max(1, len(clients) // 20)]
        per_sender = 5
        total = len(senders) * per_sender

        def send_all(index, client):
            for n in range(per_sender):
                client.send(f"s{index}-{n}")
                gevent.sleep(0)

        def receive_all(client):
            return [client.recv(timeout=15) for _ in range(total)]

        receiving = [gevent.spawn(receive_all, client) for client in clients]
        sending = [gevent.spawn(send_all, i, client) for i, client in enumerate(senders)]
        gevent.joinall(sending, timeout=15, raise_error=True)
        received = [task.get(timeout=20) for task in receiving]
    finally:
        for client in clients:
            client.close()

    order = received[0]
    assert sorted(order) == sorted(f"s{i}-{n}" for i in range(len(senders))
                                   for n in range(per_sender))
    for i in range(len(senders)):  # each sender's messages in its own order
        mine = [m for m in order if m.startswith(f"s{i}-")]
        assert mine == [f"s{i}-{n}" for n in range(per_sender)]
    assert all(seen == order for seen in received), "clients saw different orders"
    # and long-poll (whichever worker answers) reports the same order
    answer = poll_json(server, channel, since=start, timeout=0)
    assert [m["data"] for m in answer["messages"]] == order


def test_stock_worker_with_the_config_refuses_a_bad_channel_before_the_upgrade(
    gunicorn, channel
):
    server = gunicorn("-k", STOCK_WORKER, env=clean_env())
    for path in ("/ws/bad$name", "/ws/" + "x" * 129):
        with pytest.raises(Refused) as info:
            server.ws(path)
        assert info.value.status == 400
        assert b"invalid_channel" in info.value.body
    with pytest.raises(Refused) as info:
        server.ws(f"/ws/{channel}", origin="http://evil.example")
    assert info.value.status == 403
    with server.ws(f"/ws/{channel}") as a, server.ws(f"/ws/{channel}") as b:
        a.send("still relays")
        assert b.recv() == "still relays"
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 10


def test_a_flooded_worker_outlives_its_timeout_and_serves_the_others(gunicorn, channel):
    """A worker that never yields misses its heartbeat and the master kills it, with every
    client on it. One flooding client, for longer than the timeout, must not do that."""
    server = gunicorn("--timeout", "3", env=clean_env(
        WSRELAY_CONTROL_FRAME_RATE="1e9", WSRELAY_CONTROL_FRAME_BURST="1000000000",
    ))
    (worker,) = _children(server.proc.pid)
    with Bystander(server, channel) as bystander:
        report = flood.result(flood.start(server.port, f"/ws/{channel}-flood", "pong", 8))
    assert "WORKER TIMEOUT" not in server.log()
    assert _children(server.proc.pid) == [worker], "the worker was replaced"
    assert report.close_code is None and report.seconds >= 8, report
    bystander.assert_served(p99=1.0)


FROZEN_APP = '''
import gc

from flask import Flask

from wsrelay import Relay

app = Flask(__name__)
Relay(app)


@app.get("/frozen")
def frozen():
    return {"frozen": gc.get_freeze_count(), "gen0": gc.get_threshold()[0]}
'''


@pytest.mark.parametrize("worker", ["wsrelay.gunicorn_worker.RelayWorker", STOCK_WORKER])
def test_a_worker_freezes_its_loaded_heap_out_of_the_collectors_sight(tmp_path, worker):
    """Once the app is loaded, a worker moves what it loaded out of the garbage collector's
    generations (``gc.freeze``) and collects the youngest less often, as ``manage.py serve``
    does: under wsrelay's worker and gevent-websocket's with the config file."""
    (tmp_path / "frozen_app.py").write_text(FROZEN_APP)
    port = free_port()
    server = ServerProcess.start(
        [PYTHON, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "-w", "1",
         "-k", worker, "-b", f"127.0.0.1:{port}", "--chdir", str(tmp_path), "frozen_app:app"],
        port, clean_env())
    try:
        collector = requests.get(f"{server.url}/frozen", timeout=5).json()
        assert collector["frozen"] > 10_000  # flask, gevent, wsrelay and the app
        assert collector["gen0"] == GEN0_THRESHOLD
    finally:
        server.stop()
