"""Logout: ``relay.disconnect(identity)`` and ``relay.unsubscribe(identity, channel)`` end a
user's WebSockets (raw and ``wsrelay.v1``), SSE streams and held long-polls, and nobody
else's; the disconnect hook hears of them. One process here, on a real server with real
clients (several processes on Redis: tests/system/test_logout.py)."""

from __future__ import annotations

import types

import gevent
import pytest
import requests
from flask import Flask, request
from gevent.pywsgi import WSGIServer

import wsrelay
from tests.support import EventStream, WSClient, free_port, wait_until
from wsrelay.server.handler import RelayHandler


def host_app(relay: wsrelay.Relay) -> Flask:
    """A host app whose users say who they are in ``X-User`` (a session stands for it)."""
    app = Flask(__name__)
    relay.init_app(app)

    @relay.identity_hook
    def who(req, claims):
        return req.headers.get("X-User")

    @app.post("/logout/<user>")
    def logout(user):
        return {"ended": relay.disconnect(user, request.args.get("reason", "logged out"))}

    @app.post("/leave/<user>/<channel>")
    def leave(user, channel):
        return {"ended": relay.unsubscribe(user, channel, "left the room")}

    return app


@pytest.fixture
def host():
    relay = wsrelay.Relay()
    left = []
    relay.disconnect_hook(left.append)
    app = host_app(relay)
    server = WSGIServer(("127.0.0.1", 0), app, handler_class=RelayHandler, log=None)
    server.start()
    port = server.server_port
    yield types.SimpleNamespace(url=f"http://127.0.0.1:{port}", ws=f"ws://127.0.0.1:{port}",
                                app=app, left=left)
    server.stop()
    app.extensions["wsrelay"].close()


def raw(host, user, channel):
    return WSClient(f"{host.ws}/ws/{channel}", headers={"X-User": user})


def v1(host, user, *channels):
    ws = WSClient(f"{host.ws}/ws", subprotocols=["wsrelay.v1"], headers={"X-User": user})
    for number, channel in enumerate(channels, 1):
        assert ws.ask(type="subscribe", channel=channel, ack=number)["type"] == "ack"
    return ws


def sse(host, user, channel):
    stream = EventStream(f"{host.url}/sse/{channel}", headers={"X-User": user})
    stream.wait_connected()
    return stream


def held_poll(host, user, channel):
    """A long-poll held by the server (a greenlet waits for its answer)."""
    relay = host.app.extensions["wsrelay"]
    before = sum(c.connection.id.startswith("poll-") for c in relay.identities.values())
    poll = gevent.spawn(requests.get, f"{host.url}/poll/{channel}?timeout=30",
                        headers={"X-User": user}, timeout=35)
    wait_until(lambda: sum(c.connection.id.startswith("poll-")
                           for c in relay.identities.values()) > before, 5)
    return poll


def publish(host, channel, data):
    assert requests.post(f"{host.url}/publish/{channel}", data=data, timeout=5).ok


def test_disconnect_ends_every_connection_of_the_user_and_no_one_elses(host):
    ada_raw, ada_v1 = raw(host, "ada", "user-ada"), v1(host, "ada", "user-ada", "lobby")
    ada_sse, ada_poll = sse(host, "ada", "user-ada"), held_poll(host, "ada", "user-ada")
    bob_raw, bob_v1 = raw(host, "bob", "lobby"), v1(host, "bob", "lobby")
    bob_sse = sse(host, "bob", "lobby")

    answer = requests.post(f"{host.url}/logout/ada", timeout=5)
    assert answer.json() == {"ended": 4}
    assert ada_raw.until_closed() == (1008, "logged out")
    assert ada_v1.until_closed() == (1008, "logged out")
    event = ada_sse.next_event()
    assert (event.type, event.data) == ("error", "logged out")
    with pytest.raises(StopIteration):  # the stream has ended
        ada_sse.next_event()
    refused = ada_poll.get(timeout=5)
    assert (refused.status_code, refused.json()) == (
        403, {"error": "refused", "message": "logged out"})
    # The disconnect hook heard of each WebSocket and the SSE stream (not of the poll).
    wait_until(lambda: host.left.count("ada") == 3, 5, message=str(host.left))
    assert "bob" not in host.left

    publish(host, "lobby", "still here")
    assert bob_raw.recv() == "still here"
    assert bob_v1.envelope("message")["data"] == "still here"
    assert bob_sse.next_event().data == "still here"
    assert requests.post(f"{host.url}/logout/ada", timeout=5).json() == {"ended": 0}
    for client in (bob_raw, bob_v1, bob_sse, ada_sse):
        client.close()


def test_unsubscribe_ends_one_channel_and_leaves_the_rest_open(host):
    ada_v1 = v1(host, "ada", "user-ada", "lobby")
    ada_raw_private, ada_raw_lobby = raw(host, "ada", "user-ada"), raw(host, "ada", "lobby")
    ada_sse_private, ada_sse_lobby = sse(host, "ada", "user-ada"), sse(host, "ada", "lobby")
    ada_elsewhere = v1(host, "ada", "lobby")  # not subscribed to it (yet)
    bob_v1 = v1(host, "bob", "user-ada")  # bob may read it here: he is not the one leaving

    answer = requests.post(f"{host.url}/leave/ada/user-ada", timeout=5)
    assert answer.json() == {"ended": 3}
    assert ada_v1.envelope("unsubscribed") == {
        "type": "unsubscribed", "channel": "user-ada", "reason": "left the room"}
    assert ada_raw_private.until_closed() == (1008, "left the room")
    assert ada_sse_private.next_event().type == "error"

    publish(host, "user-ada", "private")
    publish(host, "lobby", "public")
    assert ada_v1.envelope("message")["data"] == "public"  # and not "private"
    assert ada_raw_lobby.recv() == "public"
    assert ada_sse_lobby.next_event().data == "public"
    assert bob_v1.envelope("message")["data"] == "private"
    # This connection may not come back to the channel; a new one passes the checks anew.
    again = ada_v1.ask(type="subscribe", channel="user-ada", ack=9)
    assert (again["type"], again["code"]) == ("error", "refused")
    sent = ada_v1.ask(type="publish", channel="user-ada", data="x", ack=10)
    assert sent["code"] == "refused"
    assert ada_elsewhere.ask(type="subscribe", channel="user-ada", ack=11)["code"] == "refused"
    with v1(host, "ada", "user-ada"):
        pass
    for client in (ada_v1, ada_elsewhere, ada_raw_lobby, ada_sse_private, ada_sse_lobby, bob_v1):
        client.close()


def test_an_identity_that_is_not_json_is_refused_at_connect_not_at_logout():
    relay = wsrelay.Relay()
    app = Flask(__name__)
    relay.init_app(app)

    @relay.identity_hook
    def who(req, claims):
        return object()  # a User object, say

    try:
        answer = app.test_client().get("/poll/lobby?timeout=0")
        assert answer.status_code == 500
        with app.app_context(), pytest.raises(wsrelay.InvalidIdentity, match="JSON value"):
            relay.disconnect(object())
    finally:
        app.extensions["wsrelay"].close()


def test_a_connection_without_identity_is_not_ended_by_anyones_logout(host):
    anonymous = WSClient(f"{host.ws}/ws/lobby")
    assert requests.post(f"{host.url}/logout/null", timeout=5).json() == {"ended": 0}
    publish(host, "lobby", "hello")
    assert anonymous.recv() == "hello"
    anonymous.close()


def test_a_logout_that_cannot_reach_redis_raises_the_error_wsrelay_exports():
    """The local clients are ended; the caller learns the other workers' are not."""
    relay = wsrelay.Relay()
    app = Flask(__name__)
    app.config["WSRELAY_BROKER_URL"] = f"redis://127.0.0.1:{free_port()}/0"  # nobody there
    relay.init_app(app)
    try:
        with app.app_context():
            with pytest.raises(wsrelay.BrokerUnavailable) as raised:
                relay.disconnect("ada")
            assert isinstance(raised.value, wsrelay.WsrelayError)
            with pytest.raises(wsrelay.BrokerUnavailable):
                wsrelay.publish("lobby", "hi")
    finally:
        app.extensions["wsrelay"].close()
