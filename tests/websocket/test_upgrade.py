"""A WebSocket leaves its request once upgraded (wsrelay's handler): the request ends,
the connection lives on in a greenlet of its own, and what it asks later is still checked
as its request was."""

import json
import types

import pytest

from tests.server.test_handler import serve, stop
from tests.support import WSClient, wait_until
from wsrelay import create_app
from wsrelay.server.handler import RelayHandler


@pytest.fixture
def detaching():
    """An app whose requests record when they end, and whose connect hook records the
    header it sees; its own address is not exempt from the per-IP count."""
    from flask import request as flask_request

    import wsrelay

    app = create_app({"WSRELAY_LIMITS_EXEMPT": ()})
    relay = app.extensions["wsrelay"]
    ended, asked = [], []

    @app.teardown_request
    def record_end(exc):
        ended.append(flask_request.path)

    @relay.connect_hook
    def check(request, channel, claims, action):
        asked.append((request.headers.get("X-User"), channel, action))
        if channel.endswith("-closed"):
            raise wsrelay.Refuse("closed room")

    server = serve(RelayHandler, app)
    yield types.SimpleNamespace(
        url=f"ws://127.0.0.1:{server.server_port}", relay=relay, ended=ended, asked=asked
    )
    stop(server)


def test_the_request_ends_once_upgraded_and_the_connection_lives_on(detaching):
    with WSClient(f"{detaching.url}/ws/room") as a, WSClient(f"{detaching.url}/ws/room") as b:
        wait_until(lambda: detaching.ended.count("/ws/room") == 2,
                   message="the upgrade requests have ended")
        a.send("after the request")
        assert b.recv() == "after the request"
        assert detaching.relay.hub.counts()["connections"] == 2


def test_a_detached_connection_gives_its_place_in_the_per_ip_count_back(detaching):
    limits = detaching.relay.limits
    with WSClient(f"{detaching.url}/ws/room") as client:
        wait_until(lambda: "/ws/room" in detaching.ended)
        assert limits.counts()["connections"] == 1
        client.send("x")
        assert client.recv() == "x"
    wait_until(lambda: limits.counts()["connections"] == 0,
               message="the count is released when the connection ends")


def test_a_later_channel_passes_the_connect_hook_with_the_upgrade_request(detaching):
    with WSClient(f"{detaching.url}/ws", subprotocols=["wsrelay.v1"],
                  headers={"X-User": "alice"}) as client:
        wait_until(lambda: "/ws" in detaching.ended)
        client.send(json.dumps({"type": "subscribe", "channel": "team-closed", "ack": 1}))
        refused = json.loads(client.recv())
        assert (refused["type"], refused["code"]) == ("error", "refused")
        client.send(json.dumps({"type": "subscribe", "channel": "team", "ack": 2}))
        assert json.loads(client.recv())["ack"] == 2
    assert ("alice", "team-closed", "subscribe") in detaching.asked
    assert ("alice", "team", "subscribe") in detaching.asked


def test_a_later_private_channel_still_needs_a_token(detaching):
    with WSClient(f"{detaching.url}/ws", subprotocols=["wsrelay.v1"]) as client:
        client.send(json.dumps({"type": "subscribe", "channel": "private-x", "ack": 1}))
        refused = json.loads(client.recv())
        assert refused["type"] == "error" and refused["code"].startswith("token")
