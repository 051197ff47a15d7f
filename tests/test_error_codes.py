"""The error-code table: every code the server sends is in it, with the status it is sent
with; the docs' table says the same; ``/client.json`` serves its retryable set."""

from __future__ import annotations

import re

import requests

from tests.support import ROOT
from wsrelay.error_codes import CODES, retryable_codes
from wsrelay.websocket.envelopes import max_request_size

SOURCES = sorted((ROOT / "wsrelay").rglob("*.py"))
#: ``ApiError(403, "forbidden"`` and ``_refusal("408 Request Timeout", "request_timeout"``.
HTTP_RAISED = re.compile(r'(?:ApiError|_refusal)\(\s*"?(\d{3})[^"]*"?,\s*"(\w+)"')
#: ``BadRequest("invalid_json"``, ``envelopes.error("broker_unavailable"``.
V1_RAISED = re.compile(r'(?:BadRequest|envelopes\.error)\(\s*"(\w+)"')
DOCS = ROOT / "docs" / "browser-client.md"
DOCS_ROW = re.compile(r"^\| `(\w+)` \| (\d{3}|—) \| (yes|no) \| (.+) \|$", re.M)


def raised() -> tuple[set[tuple[int, str]], set[str]]:
    http, v1 = set(), set()
    for path in SOURCES:
        text = path.read_text()
        http |= {(int(status), code) for status, code in HTTP_RAISED.findall(text)}
        v1 |= set(V1_RAISED.findall(text))
    return http, v1


def test_every_code_the_server_sends_is_in_the_table_with_its_status():
    http, v1 = raised()
    assert len(http) > 25 and len(v1) > 8  # the patterns still find the call sites
    for status, code in sorted(http):
        assert code in CODES, f"{code} (HTTP {status}) is not in wsrelay/error_codes.py"
        assert CODES[code].status == status, code
    for code in sorted(v1):
        assert code in CODES, f"{code} (wsrelay.v1) is not in wsrelay/error_codes.py"


def test_werkzeugs_own_errors_keep_their_names():
    """The JSON error handler names werkzeug's errors after their reason phrase."""
    assert CODES["not_found"].status == 404 and CODES["method_not_allowed"].status == 405


def test_the_docs_table_is_the_table():
    rows = {code: (status, retryable, meaning)
            for code, status, retryable, meaning in DOCS_ROW.findall(DOCS.read_text())}
    assert sorted(rows) == sorted(CODES)
    for code, entry in CODES.items():
        status, retryable, meaning = rows[code]
        assert status == (str(entry.status) if entry.status else "—"), code
        assert retryable == ("yes" if entry.retryable else "no"), code
        assert meaning == entry.meaning, code


def test_only_passing_troubles_are_retryable():
    assert retryable_codes() == sorted([
        "broker_unavailable", "connect_rate_limited", "rate_limited", "shutting_down",
        "too_many_connections", "too_many_streams",
    ])
    assert not any(entry.retryable for entry in CODES.values() if entry.status in (400, 401, 403))


def test_client_json_serves_the_limits_and_the_retryable_set(make_server):
    server = make_server(env={"WSRELAY_MAX_MESSAGE_SIZE": "3000"}, options=("--no-ticker",))
    response = requests.get(f"{server.url}/client.json", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"max_message_size": 3000, "max_request_size": max_request_size(3000),
                               "retryable": retryable_codes()}
