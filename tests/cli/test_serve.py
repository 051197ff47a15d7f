"""``manage.py serve`` / ``wsrelay serve`` as a user starts them: a port already taken, and
the access log (tokens redacted, in the WSRELAY_LOG_FORMAT's form)."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest
import requests

from tests.support import PYTHON, ROOT, wait_until

pytestmark = pytest.mark.e2e  # its tests start processes themselves

ENTRIES = {"manage.py": ["manage.py"], "python -m wsrelay": ["-m", "wsrelay"]}


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_a_port_in_use_is_one_line_naming_the_address(entry):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("WSRELAY_")}
        result = subprocess.run(
            [PYTHON, *ENTRIES[entry], "serve", "--port", str(port)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
        )
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ], result.stderr


def access_lines(server, marker: str) -> list[str]:
    """The server's log lines that hold ``marker`` (waited for: the line follows the answer)."""
    wait_until(lambda: marker in server.log(), message=f"no access line:\n{server.log()}")
    return [line for line in server.log().splitlines() if marker in line]


def test_access_lines_have_their_tokens_redacted(make_server):
    server = make_server(options=("--access-log",))
    secret = "eyJzZWNyZXQi.s3cr3t-value"
    response = requests.get(f"{server.url}/healthz",
                            params={"marker": "plain-1", "token": secret, "x": "1"}, timeout=5)
    assert response.status_code == 200
    [line] = access_lines(server, "plain-1")
    assert secret not in server.log()
    assert " INFO wsrelay.access: 127.0.0.1 - - " in line, line
    assert '"GET /healthz?marker=plain-1&token=[redacted]&x=1 HTTP/1.1" 200 ' in line, line


def test_access_lines_follow_the_json_log_format(make_server, channel):
    server = make_server(env={"WSRELAY_LOG_FORMAT": "json"}, options=("--access-log",))
    secret = "json-s3cr3t"
    requests.get(f"{server.url}/poll/{channel}",
                 params={"timeout": "0", "token": secret, "marker": "json-1"}, timeout=5)
    [line] = access_lines(server, "json-1")
    assert secret not in server.log()
    entry = json.loads(line)
    assert entry["logger"] == "wsrelay.access" and entry["level"] == "INFO", entry
    assert f"GET /poll/{channel}?timeout=0&token=[redacted]&marker=json-1 " in entry["message"]

