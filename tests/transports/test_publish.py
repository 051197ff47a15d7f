"""``POST /publish/<channel>`` against a real server, checked through the other transports."""

from __future__ import annotations

import base64
import re

import gevent
import pytest
import requests

from tests.support import untimed

ID = re.compile(r"\d{13}-\d{10}")
TEXT = {"Content-Type": "text/plain; charset=utf-8"}
BINARY = {"Content-Type": "application/octet-stream"}


def post(server, channel: str, body, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(f"{server.url}/publish/{channel}", data=body, headers=headers or {},
                         timeout=10)


def published_id(response: requests.Response) -> str:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"id"} and ID.fullmatch(body["id"]), body
    return body["id"]


def cursor(server, channel: str) -> str:
    return requests.get(f"{server.url}/poll/{channel}", params={"timeout": 0},
                        timeout=5).json()["cursor"]


def polled(server, channel: str, since: str) -> list[dict]:
    response = requests.get(f"{server.url}/poll/{channel}",
                            params={"since": since, "timeout": 0}, timeout=5)
    assert response.status_code == 200, response.text
    return untimed(response.json()["messages"])


def assert_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code and body["message"]


# -- what is published --------------------------------------------------------------------

def test_text_plain_is_a_text_message(server, channel):
    since = cursor(server, channel)
    with server.ws(f"/ws/{channel}") as subscriber:
        new = published_id(post(server, channel, "héllo ✓".encode(), TEXT))
        assert subscriber.recv() == "héllo ✓"  # a text frame
    assert polled(server, channel, since) == [{"id": new, "data": "héllo ✓"}]


def test_octet_stream_is_a_binary_message(server, channel):
    data = bytes(range(256)) * 4
    since = cursor(server, channel)
    with server.ws(f"/ws/{channel}") as subscriber:
        new = published_id(post(server, channel, data, BINARY))
        assert subscriber.recv() == data  # a binary frame, the same bytes
    assert polled(server, channel, since) == [
        {"id": new, "data": base64.b64encode(data).decode(), "encoding": "base64"}
    ]


def test_binary_need_not_be_utf8(server, channel):
    since = cursor(server, channel)
    new = published_id(post(server, channel, b"\xff\xfe\x00", BINARY))
    assert polled(server, channel, since)[0]["id"] == new


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/json",
                                          "text/plain; charset=UTF-8"])
def test_any_other_body_is_utf8_text(server, channel, content_type):
    since = cursor(server, channel)
    headers = {"Content-Type": content_type} if content_type else {}
    new = published_id(post(server, channel, '{"k": "v ✓"}'.encode(), headers))
    assert polled(server, channel, since) == [{"id": new, "data": '{"k": "v ✓"}'}]


def test_ids_increase_and_match_poll(server, channel):
    since = cursor(server, channel)
    ids = [published_id(post(server, channel, f"m{i}", TEXT)) for i in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert [m["id"] for m in polled(server, channel, since)] == ids


def test_concurrent_publishes_get_distinct_ids_in_the_channel_order(server, channel):
    since = cursor(server, channel)
    tasks = [gevent.spawn(post, server, channel, f"c{i}", TEXT) for i in range(50)]
    ids = {published_id(task.get(timeout=10)): f"c{i}" for i, task in enumerate(tasks)}
    assert len(ids) == 50
    messages = polled(server, channel, since)
    assert [m["id"] for m in messages] == sorted(ids)
    assert all(ids[m["id"]] == m["data"] for m in messages)


def test_every_subscriber_gets_it_and_other_channels_do_not(server, channel):
    with server.ws(f"/ws/{channel}") as a, server.ws(f"/ws/{channel}") as b, \
            server.ws(f"/ws/{channel}-other") as other:
        published_id(post(server, channel, "for this channel", TEXT))
        assert a.recv() == "for this channel"
        assert b.recv() == "for this channel"
        with pytest.raises(TimeoutError):
            other.recv(timeout=0.3)


def test_publishing_without_subscribers_is_retained(server, channel):
    since = cursor(server, channel)
    new = published_id(post(server, channel, "nobody listens", TEXT))
    with server.ws(f"/ws/{channel}?since={since}") as late:
        assert late.recv() == "nobody listens"
    assert polled(server, channel, since)[0]["id"] == new


def test_chunked_body_within_the_limit_is_published(make_server, channel):
    server = make_server(env={"WSRELAY_MAX_MESSAGE_SIZE": "1000"})
    since = cursor(server, channel)
    body = iter([b"a" * 600, b"b" * 400])  # a generator: sent with Transfer-Encoding: chunked
    new = published_id(post(server, channel, body, TEXT))
    assert polled(server, channel, since) == [{"id": new, "data": "a" * 600 + "b" * 400}]


# -- refused ------------------------------------------------------------------------------

def test_body_at_the_limit_is_accepted_over_it_is_413(make_server, channel):
    server = make_server(env={"WSRELAY_MAX_MESSAGE_SIZE": "1000"})
    since = cursor(server, channel)
    published_id(post(server, channel, b"x" * 1000, BINARY))
    assert_error(post(server, channel, b"x" * 1001, BINARY), 413, "request_entity_too_large")
    assert_error(post(server, channel, "é" * 501, TEXT), 413, "request_entity_too_large")
    assert len(polled(server, channel, since)) == 1  # nothing of the refused ones


def test_chunked_body_over_the_limit_is_413_not_truncated(make_server, channel):
    """Without Content-Length the limit must hold too: never publish a cut message."""
    server = make_server(env={"WSRELAY_MAX_MESSAGE_SIZE": "1000"})
    since = cursor(server, channel)
    response = post(server, channel, iter([b"x" * 700, b"y" * 700]), BINARY)
    published = polled(server, channel, since)
    assert [len(base64.b64decode(m["data"])) for m in published] == []
    assert_error(response, 413, "request_entity_too_large")


def test_invalid_utf8_text_is_400_and_not_published(server, channel):
    since = cursor(server, channel)
    for body in (b"\xff\xfe", b"ok then \xc3", b"\xed\xa0\x80"):  # bad, truncated, surrogate
        assert_error(post(server, channel, body, TEXT), 400, "invalid_utf8")
    assert polled(server, channel, since) == []


@pytest.mark.parametrize("name", ["bad$name", "x" * 129, "a/b", "sp ace"])
def test_bad_channel_is_400(server, name):
    assert_error(post(server, name, "x", TEXT), 400, "invalid_channel")


def test_get_is_405_json(server, channel):
    assert_error(requests.get(f"{server.url}/publish/{channel}", timeout=5),
                 405, "method_not_allowed")


def test_foreign_origin_is_403(server, channel):
    since = cursor(server, channel)
    response = post(server, channel, "x", {**TEXT, "Origin": "http://evil.example"})
    assert_error(response, 403, "origin_not_allowed")
    assert polled(server, channel, since) == []
