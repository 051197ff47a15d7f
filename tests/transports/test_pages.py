"""The demo page, the health check, and what unknown paths answer."""

from __future__ import annotations

import pytest
import requests

from tests.support import wait_until


def get(server, path: str, method: str = "GET") -> requests.Response:
    return requests.request(method, server.url + path, timeout=5)


def assert_json_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json"), response.text[:200]
    body = response.json()
    assert body["error"] == code and body["message"]


def test_index_is_the_demo_page(server):
    response = get(server, "/")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    page = response.text
    assert page.lstrip().lower().startswith("<!doctype html>")
    assert "<title>wsrelay demo</title>" in page
    for transport in ("websocket", "sse", "poll"):  # the page can show and pick each one
        assert f'value="{transport}"' in page or f"'{transport}'" in page, transport
    for endpoint in ("/ws/", "/sse/", "/poll/", "/publish/"):
        assert endpoint in page, endpoint


def test_healthz_reports_the_broker_and_the_counts(server, channel):
    response = get(server, "/healthz")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["status"] == "ok"
    assert body["broker"] == "memory" and body["ok"] is True
    before = body["subscribers"]
    with server.ws(f"/ws/{channel}"):
        assert get(server, "/healthz").json()["subscribers"] >= before + 1
    for key in ("channels", "subscribers", "waiters"):
        assert isinstance(body[key], int)


def test_healthz_on_redis(make_server, redis_server):
    server = make_server(env={"WSRELAY_BROKER_URL": redis_server.url})

    def connected():  # the pub/sub listener connects in the background after start
        body = get(server, "/healthz").json()
        return body if body["status"] == "ok" else None

    body = wait_until(connected, timeout=5, message="the redis broker never reported ok")
    assert body["broker"] == "redis" and body["ok"] is True


@pytest.mark.parametrize("path", [
    "/poll/", "/sse/", "/ws/", "/healthz/extra", "/static/wsrelay/nothing-here.js",
])
def test_unknown_api_routes_are_404_json(server, path):
    assert_json_error(get(server, path), 404, "not_found")


def test_publish_without_a_channel_is_404_json(server):
    assert_json_error(get(server, "/publish/", "POST"), 404, "not_found")


def test_plain_get_on_the_json_websocket_endpoint_is_426(server):
    # /ws (no channel) is the wsrelay.v1 endpoint: it exists, and speaks WebSocket only
    assert_json_error(get(server, "/ws"), 426, "upgrade_required")


@pytest.mark.parametrize("path", ["/poll", "/sse", "/publish"])
def test_an_endpoint_without_its_channel_is_404_json(server, path):
    """``/poll?since=...`` is an API call that forgot its channel, not a missing page."""
    assert_json_error(get(server, path + "?timeout=0"), 404, "not_found")


@pytest.mark.parametrize("method, path", [
    ("POST", "/poll/some-channel"), ("DELETE", "/sse/some-channel"),
    ("GET", "/publish/some-channel"), ("PUT", "/publish/some-channel"),
])
def test_wrong_method_on_an_api_route_is_405_json(server, method, path):
    assert_json_error(get(server, path, method), 405, "method_not_allowed")


@pytest.mark.parametrize("method, path, allowed", [
    ("POST", "/poll/some-channel", {"GET", "HEAD"}),
    ("GET", "/publish/some-channel", {"POST"}),
])
def test_405_says_which_methods_are_allowed(server, method, path, allowed):
    """RFC 9110 15.5.6: a 405 response must carry ``Allow`` (the JSON body keeps it)."""
    response = get(server, path, method)
    assert response.status_code == 405
    assert "Allow" in response.headers, dict(response.headers)
    methods = {m.strip() for m in response.headers["Allow"].split(",")}
    assert allowed <= methods <= allowed | {"OPTIONS"}


@pytest.mark.parametrize("path", ["/nope", "/index.html", "/pollx/abc", "/api/v2/thing"])
def test_unknown_page_is_a_plain_404(server, path):
    response = get(server, path)
    assert response.status_code == 404
    assert not response.headers["Content-Type"].startswith("application/json")
