"""The Python API: publish from anywhere, background tasks started once."""

import gevent
import pytest

import wsrelay
from wsrelay import create_app
from wsrelay.channels import InvalidChannel
from wsrelay.relay import MessageTooLarge, _apps


@pytest.fixture
def app():
    _apps.clear()
    app = create_app({"WSRELAY_MAX_MESSAGE_SIZE": 1000, "WSRELAY_SUBSCRIBER_BUFFER": 10_000})
    yield app
    app.extensions["wsrelay"].close()
    _apps.clear()


def history(app, channel):
    from wsrelay.ids import MessageId

    return app.extensions["wsrelay"].hub.broker.history(channel, MessageId(0, 0)).messages


def test_publish_without_app_context_uses_the_only_app(app):
    message = wsrelay.publish("news", "hello")
    binary = gevent.spawn(wsrelay.publish, "news", b"\x00\x01").get(timeout=5)
    assert [m.id for m in history(app, "news")] == [message.id, binary.id]
    assert binary.binary and not message.binary


def test_publish_checks_channel_and_size(app):
    with pytest.raises(InvalidChannel):
        wsrelay.publish("bad channel", "x")
    with pytest.raises(MessageTooLarge):
        wsrelay.publish("news", "x" * 1001)


def test_with_two_apps_publish_needs_an_app_context(app):
    other = create_app()
    try:
        with pytest.raises(RuntimeError, match="app context"):
            wsrelay.publish("news", "x")
        with other.app_context():
            wsrelay.publish("news", "to other")
        assert [m.data for m in history(other, "news")] == [b"to other"]
        assert history(app, "news") == []
    finally:
        other.extensions["wsrelay"].close()


def test_background_task_starts_once(app):
    relay = app.extensions["wsrelay"]
    ticks = []

    def ticker():
        while True:
            ticks.append(wsrelay.publish("ticker", str(len(ticks) + 1)))
            gevent.sleep(0.01)

    first = relay.start_background_task(ticker)
    assert relay.start_background_task(ticker) is first
    gevent.sleep(0.1)
    first.kill()
    assert len(ticks) >= 3
    assert [m.data for m in history(app, "ticker")][:3] == [b"1", b"2", b"3"]


@pytest.fixture
def cross_origin_app():
    app = create_app({"WSRELAY_ALLOWED_ORIGINS": ("https://app.example",)})
    yield app
    app.extensions["wsrelay"].close()


def test_allowed_origins_may_read_the_http_transports(cross_origin_app):
    web = cross_origin_app.test_client()
    origin = {"Origin": "https://app.example"}
    published = web.post("/publish/news", data="hi", headers=origin)
    assert published.status_code == 200
    assert published.headers["Access-Control-Allow-Origin"] == "https://app.example"
    polled = web.get("/poll/news?timeout=0", headers=origin)
    assert polled.headers["Access-Control-Allow-Origin"] == "https://app.example"
    preflight = web.options("/publish/news", headers={
        **origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    })
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed


def test_a_foreign_origin_gets_neither_an_answer_nor_cors_headers(cross_origin_app):
    web = cross_origin_app.test_client()
    refused = web.post("/publish/news", data="hi", headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403
    assert "Access-Control-Allow-Origin" not in refused.headers


def test_without_allowed_origins_there_are_no_cors_headers(app):
    answer = app.test_client().get("/poll/news?timeout=0",
                                   headers={"Origin": "http://localhost"})
    assert answer.status_code == 200
    assert "Access-Control-Allow-Origin" not in answer.headers
