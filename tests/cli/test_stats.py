"""``python manage.py stats``: the dashboard's numbers in a terminal, run as a user runs it."""

from __future__ import annotations

import os
import re
import signal
import subprocess

import gevent
import pytest
import requests
from gevent.pywsgi import WSGIServer

from tests.cli import assert_clear_failure, manage
from tests.support import PYTHON, ROOT, free_port

pytestmark = pytest.mark.e2e  # its tests start processes (servers, manage.py) themselves


@pytest.fixture
def quiet(make_server):
    """A server without the demo ticker: its numbers move only with what the test does."""
    return make_server(options=("--no-ticker",))


def dashboard_stats(server, **headers) -> dict:
    return requests.get(server.url + "/dashboard/stats", headers=headers, timeout=5).json()


def row(output: str, label: str) -> list[str]:
    """The cells after ``label`` on its line of the table."""
    line = next(line for line in output.splitlines() if line.startswith(label))
    return line[len(label):].split()


def test_stats_prints_the_servers_numbers(quiet, channel):
    clients = [quiet.ws(f"/ws/{channel}") for _ in range(2)]
    try:
        for n in range(3):
            requests.post(f"{quiet.url}/publish/{channel}", data=f"m{n}", timeout=5)
        for client in clients:
            assert [client.recv() for _ in range(3)] == ["m0", "m1", "m2"]
        result = manage("stats", "--url", quiet.url)
        body = dashboard_stats(quiet)
    finally:
        for client in clients:
            client.close()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"wsrelay at {quiet.url}: ok, broker memory, 1 process (answered by pid " in out
    assert row(out, "messages published") == ["3"]
    assert row(out, "messages delivered") == ["6"]
    assert row(out, "  websocket") == ["2"]
    assert row(out, "connections") == ["2"]
    assert row(out, "bytes sent") == [f"{body['totals']['bytes_sent']:,}"]
    assert row(out, "slow consumer closes") == ["0"]
    assert re.search(r"latency p50 / p99 +\d+\.\d ms +\d+\.\d ms +\(since start\)", out), out
    assert f"busiest channels of pid {quiet.proc.pid}, last 1 s:" in out


def test_watch_prints_rates_until_interrupted(quiet, channel):
    with quiet.ws(f"/ws/{channel}") as subscriber:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WSRELAY_")}
        watcher = subprocess.Popen(
            [PYTHON, "manage.py", "stats", "--url", quiet.url, "--watch", "0.5"], cwd=ROOT,
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            first = watcher.stdout.readline()  # started (importing can take seconds under load)
            assert first.startswith("wsrelay at "), first + watcher.stderr.read()
            for n in range(20):  # ~40 messages a second for 2 s
                requests.post(f"{quiet.url}/publish/{channel}", data=str(n), timeout=5)
                subscriber.recv()
                gevent.sleep(0.1)
        finally:
            watcher.send_signal(signal.SIGINT)
            out, err = watcher.communicate(timeout=10)
    out = first + out
    assert watcher.returncode == 0, err
    assert "Traceback" not in err
    tables = out.split("wsrelay at ")[1:]
    assert len(tables) >= 3, out
    assert "per second" not in tables[0]  # the first answer has nothing to compare with
    rates = [float(row(table, "messages published")[1]) for table in tables[1:]
             if "per second" in table]
    assert rates and max(rates) > 0, out


def test_the_admin_token_is_passed_with_token_or_the_environment(make_server):
    server = make_server(env={"WSRELAY_ADMIN_TOKEN": "adm1n"}, options=("--no-ticker",))
    refused = manage("stats", "--url", server.url)
    assert_clear_failure(refused, "HTTP 401", "--token")
    assert_clear_failure(manage("stats", "--url", server.url, "--token", "nope"), "HTTP 401")
    assert manage("stats", "--url", server.url, "--token", "adm1n").returncode == 0
    from_env = manage("stats", "--url", server.url, env={"WSRELAY_ADMIN_TOKEN": "adm1n"})
    assert from_env.returncode == 0, from_env.stderr
    assert "messages published" in from_env.stdout


def test_an_unreachable_server_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}"
    assert_clear_failure(manage("stats", "--url", url), f"cannot reach {url}")


def test_a_server_that_is_not_wsrelay_is_a_clear_error():
    def not_found(environ, start_response):
        start_response("404 Not Found", [("Content-Type", "text/html")])
        return [b"<h1>nothing here</h1>"]

    other = WSGIServer(("127.0.0.1", 0), not_found, log=None)
    other.start()
    try:
        url = f"http://127.0.0.1:{other.server_port}"
        assert_clear_failure(manage("stats", "--url", url), "HTTP 404", "wsrelay server")
    finally:
        other.stop()
