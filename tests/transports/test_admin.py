"""``/metrics``, ``/dashboard`` and ``/dashboard/stats`` of real servers, read as an
operator and Prometheus read them."""

from __future__ import annotations

import os
import re
import signal
import socket

import gevent
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

import wsrelay
from tests.support import (
    ServerProcess,
    client_frame,
    handshake_request,
    raw_websocket,
    read_http_head,
    wait_until,
)
from tests.system.test_redis_e2e import spread_clients, subscribers_by_worker, worker_reports

pytestmark = pytest.mark.e2e  # its tests start processes (servers, manage.py) themselves

ADMIN_PATHS = ("/metrics", "/dashboard", "/dashboard/stats")


@pytest.fixture(scope="module")
def quiet():
    """One ``manage.py serve`` without the demo ticker, so the counters move only with what
    the tests do; small limits so a 1009 and a slow consumer are cheap to cause, and SSE
    keep-alives often enough that a closed stream is noticed at once."""
    server = ServerProcess.serve(options=("--no-ticker",), env={
        "WSRELAY_MAX_MESSAGE_SIZE": "65536", "WSRELAY_SUBSCRIBER_BUFFER": "131072",
        "WSRELAY_CLOSE_TIMEOUT": "1", "WSRELAY_SSE_KEEPALIVE": "1",
    })
    yield server
    server.stop()


def scrape(server: ServerProcess, **headers: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of ``/metrics``, as Prometheus parses them: ``{(name, labels): value}``."""
    response = requests.get(server.url + "/metrics", headers=headers, timeout=5)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples}


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def stats(server: ServerProcess, **headers: str) -> dict:
    response = requests.get(server.url + "/dashboard/stats", headers=headers, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def publish(server: ServerProcess, channel: str, data: bytes) -> None:
    response = requests.post(f"{server.url}/publish/{channel}", data=data,
                             headers={"Content-Type": "application/octet-stream"}, timeout=5)
    assert response.status_code == 200, response.text


# -- what /metrics counts ---------------------------------------------------------------


def test_publishes_deliveries_bytes_connections_latency_and_closes(quiet, channel):
    subscribers, messages = 3, 5
    before = scrape(quiet)
    clients = [quiet.ws(f"/ws/{channel}") for _ in range(subscribers)]
    wait_until(lambda: sample(scrape(quiet), "wsrelay_connections", transport="websocket")
               == sample(before, "wsrelay_connections", transport="websocket") + subscribers)
    payload = b"\x01" * 200
    for _ in range(messages):
        publish(quiet, channel, payload)
    for client in clients:
        assert [client.recv() for _ in range(messages)] == [payload] * messages

    after = scrape(quiet)

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grew("wsrelay_messages_published_total") == messages
    assert grew("wsrelay_messages_delivered_total") == messages * subscribers
    # each delivery is a 204-byte frame (2-byte header with a 2-byte extended length)
    assert grew("wsrelay_bytes_sent_total") >= messages * subscribers * (len(payload) + 4)
    assert grew("wsrelay_publish_latency_seconds_count") == messages
    assert grew("wsrelay_publish_latency_seconds_bucket", le="+Inf") == messages
    assert grew("wsrelay_publish_latency_seconds_sum") > 0

    for client in clients:
        client.close(1000)
    wait_until(lambda: sample(scrape(quiet), "wsrelay_closes_total", code="1000")
               == sample(before, "wsrelay_closes_total", code="1000") + subscribers)
    assert sample(scrape(quiet), "wsrelay_connections", transport="websocket") == sample(
        before, "wsrelay_connections", transport="websocket")


def test_a_message_too_big_is_counted_as_a_1009_close(quiet, channel):
    before = sample(scrape(quiet), "wsrelay_closes_total", code="1009")
    with raw_websocket(quiet.port, f"/ws/{channel}") as (sock, rest):
        # the head of a frame over WSRELAY_MAX_MESSAGE_SIZE=65536: the server needs no more
        sock.sendall(client_frame(2, b"x" * 70_000)[:14])
        data = rest
        while len(data) < 4:
            data += sock.recv(100)
        assert data[0] == 0x88 and int.from_bytes(data[2:4], "big") == 1009
    wait_until(lambda: sample(scrape(quiet), "wsrelay_closes_total", code="1009") == before + 1)


def test_sse_and_long_poll_connections_are_counted_while_open(quiet, channel):
    before = scrape(quiet)
    with requests.get(f"{quiet.url}/sse/{channel}", stream=True, timeout=(5, 10)) as stream:
        assert stream.status_code == 200
        poll = gevent.spawn(requests.get, f"{quiet.url}/poll/{channel}",
                            params={"timeout": 10}, timeout=20)
        wait_until(lambda: [sample(scrape(quiet), "wsrelay_connections", transport=t)
                            - sample(before, "wsrelay_connections", transport=t)
                            for t in ("sse", "poll")] == [1, 1])
        publish(quiet, channel, b"end of the poll")
        assert poll.get(timeout=10).status_code == 200
    wait_until(lambda: all(sample(scrape(quiet), "wsrelay_connections", transport=t)
                           == sample(before, "wsrelay_connections", transport=t)
                           for t in ("sse", "poll")))


def test_a_slow_consumer_close_is_counted(quiet, channel):
    before = sample(scrape(quiet), "wsrelay_slow_consumer_closes_total")
    slow = socket.create_connection(("127.0.0.1", quiet.port), timeout=10)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and it never reads
    try:
        slow.sendall(handshake_request(f"/ws/{channel}", quiet.port))
        assert read_http_head(slow)[0] == 101
        chunk = b"s" * 32768
        with quiet.ws(f"/ws/{channel}?echo=0") as publisher:
            for sent in range(1, 2001):  # the kernel's buffers hold a few MiB at most
                publisher.send(chunk)
                if sent % 16 == 0 and sample(
                    scrape(quiet), "wsrelay_slow_consumer_closes_total"
                ) == before + 1:
                    break
            else:
                raise AssertionError("the slow reader was never closed")
    finally:
        slow.close()


# -- who may read it ----------------------------------------------------------------------


def test_the_admin_token_is_required_when_set(make_server):
    server = make_server(env={"WSRELAY_ADMIN_TOKEN": "s3cret-admin"})
    for path in ADMIN_PATHS:
        url = server.url + path
        missing = requests.get(url, timeout=5)
        assert missing.status_code == 401, path
        assert missing.json()["error"] == "token_required"
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = requests.get(url, headers={"Authorization": "Bearer s3cret-admiN"}, timeout=5)
        assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_token"), path
        header = requests.get(url, headers={"Authorization": "Bearer s3cret-admin"}, timeout=5)
        assert header.status_code == 200, path
        query = requests.get(url, params={"token": "s3cret-admin"}, timeout=5)
        assert query.status_code == 200, path
    # what the admin token opens is only these pages: it grants nothing on channels
    assert requests.get(f"{server.url}/sse/private-x", params={"token": "s3cret-admin"},
                        timeout=5).status_code == 401


@pytest.fixture
def app():
    """An app in this process, for requests from addresses a test cannot connect from."""
    app = wsrelay.create_app({"WSRELAY_ADMIN_TOKEN": "", "WSRELAY_PROXY_HOPS": 0})
    yield app
    app.extensions["wsrelay"].close()


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"])
def test_without_a_token_a_client_on_the_loopback_interface_may_read(app, address):
    client = app.test_client()
    for path in ADMIN_PATHS:
        assert client.get(path, environ_base={"REMOTE_ADDR": address}).status_code == 200, path


@pytest.mark.parametrize("address", ["10.1.2.3", "192.168.1.20", "2001:db8::1", "", "bogus"])
def test_without_a_token_another_host_is_refused(app, address):
    client = app.test_client()
    for path in ADMIN_PATHS:
        response = client.get(path, environ_base={"REMOTE_ADDR": address})
        assert response.status_code == 403, path
        assert response.json["error"] == "forbidden"
        assert "WSRELAY_ADMIN_TOKEN" in response.json["message"]


def test_a_request_relayed_by_a_local_proxy_is_not_local(app):
    """A reverse proxy on this host connects from 127.0.0.1 for every client."""
    client = app.test_client()
    local = {"REMOTE_ADDR": "127.0.0.1"}
    assert client.get("/metrics", environ_base=local,
                      headers={"X-Forwarded-For": "10.1.2.3"}).status_code == 403
    assert client.get("/metrics", environ_base=local,
                      headers={"Forwarded": "for=10.1.2.3"}).status_code == 403
    app.config["WSRELAY_PROXY_HOPS"] = 1  # a proxy we know of: the address it saw counts
    assert client.get("/metrics", environ_base=local,
                      headers={"X-Forwarded-For": "10.1.2.3"}).status_code == 403
    assert client.get("/metrics", environ_base=local,
                      headers={"X-Forwarded-For": "127.0.0.1"}).status_code == 200


def test_with_a_token_another_host_may_read_with_it(app):
    app.config["WSRELAY_ADMIN_TOKEN"] = "t0ken"
    client = app.test_client()
    remote = {"REMOTE_ADDR": "10.1.2.3"}
    assert client.get("/metrics", environ_base=remote).status_code == 401
    assert client.get("/metrics", environ_base=remote,
                      headers={"Authorization": "Bearer t0ken"}).status_code == 200
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 401


# -- the dashboard ----------------------------------------------------------------------


def test_the_dashboard_is_a_page_fed_by_its_stats(quiet):
    response = requests.get(quiet.url + "/dashboard", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.headers["Cache-Control"] == "no-store"
    page = response.text
    assert "<title>wsrelay dashboard</title>" in page
    assert 'data-stats="/dashboard/stats"' in page
    assert page.count("<canvas") == 2
    assert "https://" not in page  # no CDN: it works offline
    # Its code and styles are files of its own, so a strict policy can forbid anything inline.
    assert re.findall(r'<script src="([^"]+)"', page) == ["/static/wsrelay/dashboard.js"]
    assert "<script>" not in page and "<style" not in page and " style=" not in page
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy and "style-src 'self';" in policy
    assert "unsafe-inline" not in policy
    assert requests.get(quiet.url + "/static/wsrelay/dashboard.js", timeout=5).status_code == 200


def test_dashboard_stats_has_totals_this_process_and_its_busiest_channels(quiet, channel):
    with quiet.ws(f"/ws/{channel}") as subscriber:
        first = stats(quiet)
        for _ in range(3):
            publish(quiet, channel, b"hi")
        assert [subscriber.recv() for _ in range(3)] == [b"hi"] * 3

        def busiest() -> list:
            body = stats(quiet)
            return [row for row in body["busiest"] if row["channel"] == channel]

        rows = wait_until(busiest, timeout=5, message="the channel never was among the busiest")
        assert 1 <= rows[0]["messages"] <= 3  # the window of one sync may split the burst
        body = stats(quiet)
    assert body["pid"] == quiet.proc.pid
    assert body["multiprocess"] is False
    assert body["draining"] is False
    assert body["broker"]["broker"] == "memory" and body["broker"]["ok"] is True
    assert set(body["counts"]) >= {"connections", "channels", "subscribers", "waiters"}
    assert body["busiest_window"] == 1.0
    totals, process = body["totals"], body["process"]
    assert totals["published"] - first["totals"]["published"] == 3
    assert totals["delivered"] - first["totals"]["delivered"] == 3
    assert totals["connections"]["websocket"] >= 1
    assert totals["processes"] == 1
    for key in ("published", "delivered", "bytes_sent", "slow_consumer_closes", "broker_errors"):
        assert totals[key] == process[key], key  # one process: its numbers are the totals
    assert totals["latency"]["count"] >= 3
    assert totals["latency"]["buckets"][-1][0] == "+Inf"
    assert body["time"] > first["time"]


# -- gunicorn: every worker's numbers, added up -----------------------------------------


def test_gunicorn_workers_metrics_are_added_up(redis_server, channel):
    server = ServerProcess.gunicorn("-w", "2", env={"WSRELAY_BROKER_URL": redis_server.url})
    try:
        worker_reports(server, 2)
        clients = spread_clients(server, f"/ws/{channel}", workers=2, each=1)
        for n, client in enumerate(clients):  # raw mode: published by the worker holding it
            client.send(f"m{n}")
        publish(server, channel, b"over http")
        total = len(clients) + 1
        for client in clients:
            assert len([client.recv(timeout=10) for _ in range(total)]) == total

        def added_up() -> dict | None:  # each worker syncs its counters once a second
            samples = scrape(server, Connection="close")
            summed = (sample(samples, "wsrelay_messages_published_total") == total
                      and sample(samples, "wsrelay_messages_delivered_total")
                      == total * len(clients)
                      and sample(samples, "wsrelay_connections", transport="websocket")
                      == len(clients) and sample(samples, "wsrelay_processes") == 2)
            return samples if summed else None

        wait_until(added_up, timeout=10, message="the workers' metrics never added up")

        published: dict[int, int] = {}  # each worker's own count, from its dashboard answer

        def every_worker_answered() -> bool:
            body = stats(server, Connection="close")
            assert body["multiprocess"] is True
            assert body["totals"]["published"] == total  # whichever worker answers
            published[body["pid"]] = body["process"]["published"]
            return len(published) == 2

        wait_until(every_worker_answered, timeout=10, interval=0.01)
        assert sum(published.values()) == total and min(published.values()) >= 1

        # A worker killed: its connections leave the gauge, its totals stay.
        by_worker = subscribers_by_worker(server, 2, len(clients))
        victim = min(by_worker)
        os.kill(victim, signal.SIGKILL)
        survivors = by_worker[max(by_worker)]
        wait_until(lambda: (lambda s: sample(s, "wsrelay_connections", transport="websocket")
                            == survivors and sample(s, "wsrelay_processes") == 2
                            and sample(s, "wsrelay_messages_published_total") == total)(
                                scrape(server, Connection="close")),
                   timeout=15, message="the killed worker's connections still counted")
        for client in clients:
            client.close()
    finally:
        server.stop()


@pytest.mark.parametrize(("host", "allowed"), [
    ("localhost:5000", True), ("127.0.0.1:5000", True), ("[::1]:5000", True), ("[::1]", True),
    ("evil.example", False), ("evil.example:5000", False), ("10.0.0.7:5000", False),
])
def test_without_a_token_a_rebound_name_is_not_local(app, host, allowed):
    """A foreign page whose name now resolves to 127.0.0.1 (DNS rebinding) still names its
    own host: refused, though it comes from loopback."""
    client = app.test_client()
    response = client.get("/dashboard/stats", headers={"Host": host},
                          environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert (response.status_code == 200) is allowed, response.status_code
