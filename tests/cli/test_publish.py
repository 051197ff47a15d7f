"""``python manage.py publish``: server push from a shell or a script, as a user runs it."""

from __future__ import annotations

import re

import gevent
import pytest
from gevent.pywsgi import WSGIServer

from tests.cli import assert_clear_failure, manage
from tests.support import free_port, poll_json, untimed, wait_until

pytestmark = pytest.mark.e2e  # its tests start processes (servers, manage.py) themselves

ID = re.compile(r"\d{13}-\d{10}")


# -- against a running server (memory broker) ---------------------------------------------

def test_publish_posts_to_the_running_server_and_prints_the_id(server, channel):
    since = poll_json(server, channel, timeout=0)["cursor"]
    with server.ws(f"/ws/{channel}") as subscriber:
        result = manage("publish", channel, "hello from the shell ✓", "--url", server.url)
        assert result.returncode == 0, result.stderr
        assert subscriber.recv(timeout=5) == "hello from the shell ✓"  # text, intact
    printed = result.stdout.strip()
    assert ID.fullmatch(printed), result.stdout
    assert untimed(poll_json(server, channel, since=since, timeout=0)["messages"]) == [
        {"id": printed, "data": "hello from the shell ✓"}
    ]


def test_url_with_a_trailing_slash(server, channel):
    result = manage("publish", channel, "x", "--url", server.url + "/")
    assert result.returncode == 0, result.stderr
    assert ID.fullmatch(result.stdout.strip())


def test_unreachable_server_is_a_clear_error(channel):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = manage("publish", channel, "lost", "--url", url)
    assert_clear_failure(result, "cannot reach", url)


def test_refusal_by_the_server_is_shown(server):
    result = manage("publish", "bad$name", "x", "--url", server.url)
    assert_clear_failure(result, "channel names are")


def test_a_url_that_is_not_a_wsrelay_is_a_clear_error(channel):
    """A typo in --url (a path, another service) answers HTML: say so, no traceback."""
    def app(environ, start_response):
        start_response("404 Not Found", [("Content-Type", "text/html")])
        return [b"<html><body>Not Found</body></html>"]

    other = WSGIServer(("127.0.0.1", 0), app, log=None)
    other.start()
    try:
        url = f"http://127.0.0.1:{other.server_port}"
        result = manage("publish", channel, "x", "--url", url)
    finally:
        other.stop()
    assert_clear_failure(result, "404")


# -- with Redis: straight into the broker -------------------------------------------------

def test_publish_goes_straight_into_redis(make_server, redis_server, channel):
    env = {"WSRELAY_BROKER_URL": redis_server.url}
    server = make_server(env=env)
    dead_url = f"http://127.0.0.1:{free_port()}"  # proves no HTTP is involved
    with server.ws(f"/ws/{channel}") as subscriber:
        wait_until(lambda: server.health()["subscribers"] >= 1)
        result = manage("publish", channel, "pushed into redis", "--url", dead_url, env=env)
        assert result.returncode == 0, result.stderr
        assert subscriber.recv(timeout=5) == "pushed into redis"
    printed = result.stdout.strip()
    assert ID.fullmatch(printed), result.stdout
    since = f"{printed.split('-')[0]}-0000000000"
    assert untimed(poll_json(server, channel, since=since, timeout=0)["messages"]) == [
        {"id": printed, "data": "pushed into redis"}
    ]


def test_redis_publishes_reach_a_held_poll_in_order(make_server, redis_server, channel):
    env = {"WSRELAY_BROKER_URL": redis_server.url}
    server = make_server(env=env)
    first = manage("publish", channel, "one", env=env).stdout.strip()
    task = gevent.spawn(poll_json, server, channel, since=first, timeout=30)
    second = manage("publish", channel, "two", env=env).stdout.strip()
    assert untimed(task.get(timeout=10)["messages"]) == [{"id": second, "data": "two"}]
    assert first < second


def test_redis_bad_channel_is_a_clear_error(redis_server):
    result = manage("publish", "bad$name", "x", env={"WSRELAY_BROKER_URL": redis_server.url})
    assert_clear_failure(result, "channel names are")


def test_unreachable_redis_is_a_clear_error(channel):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    result = manage("publish", channel, "lost", env={"WSRELAY_BROKER_URL": url})
    assert_clear_failure(result, "unavailable")


@pytest.mark.parametrize("name", ["room?x=1", "bad room", "a/b", "x" * 129])
def test_a_channel_name_the_contract_refuses_is_one_line_before_any_request(name):
    result = manage("publish", name, "hello", "--url", "http://127.0.0.1:9")  # nothing there
    assert_clear_failure(result, "channel")
