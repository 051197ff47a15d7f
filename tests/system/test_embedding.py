"""The guide's chat app (docs/embedding.md), a host app wsrelay did not write, run as its users
run it: under gunicorn with gevent-websocket's stock worker and Redis, logged in through its
session, chatting through wsrelay's hooks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from tests.support import PYTHON, Closed, ServerProcess, WSClient, free_port
from tests.test_docs import ROOT, block

STOCK_WORKER = "geventwebsocket.gunicorn.workers.GeventWebSocketWorker"


def write_guide_app(folder: Path) -> None:
    """The guide's chat.py, exactly as docs/embedding.md shows it, into ``folder``."""
    example = block(ROOT / "docs" / "embedding.md", "python", "chat.py:")
    (folder / "chat.py").write_text(example.text)


@pytest.fixture
def chat(tmp_path, redis_server):
    write_guide_app(tmp_path)
    port = free_port()
    server = ServerProcess.start(
        [PYTHON, "-m", "gunicorn", "-w", "1", "-k", STOCK_WORKER, "-b", f"127.0.0.1:{port}",
         "--chdir", str(tmp_path), "chat:create_app()"],
        port, {"WSRELAY_BROKER_URL": redis_server.url})
    yield server
    server.stop()


def login(server, name):
    web = requests.Session()
    assert web.post(server.url + "/login", data={"name": name}, timeout=5).ok
    return web


def socket(server, web=None):
    cookie = "; ".join(f"{k}={v}" for k, v in (web.cookies.items() if web else []))
    return WSClient(server.ws_url + "/ws", subprotocols=["wsrelay.v1"],
                    headers={"Cookie": cookie} if cookie else {})


def next_message(ws):
    while True:
        answer = json.loads(ws.recv())
        if answer["type"] == "message":
            return answer


def test_the_guides_app_stamps_refuses_and_logs_out(chat):
    ada, bob = login(chat, "ada"), login(chat, "bob")
    home = ada.get(chat.url + "/", timeout=5)
    assert "ada" in home.text and "/static/wsrelay.js" in home.text  # the host's own page
    assert ada.get(chat.url + "/static/wsrelay.js", timeout=5).ok
    with socket(chat, ada) as ada_ws, socket(chat, bob) as bob_ws:
        assert bob_ws.ask(type="subscribe", channel="lobby", ack=1)["type"] == "ack"
        # The identity hook's user is stamped as the sender; the publish hook cleans the text.
        assert ada_ws.ask(type="publish", channel="lobby", data="  hi  ", ack=2)["type"] == "ack"
        got = next_message(bob_ws)
        assert (got["data"], got["sender"]) == ("hi", "ada")
        # A refused message is an error envelope; the connection stays open.
        refused = ada_ws.ask(type="publish", channel="lobby", data="spam!", ack=3)
        assert (refused["type"], refused["code"]) == ("error", "refused")
        assert ada_ws.ask(type="publish", channel="lobby", data="sorry", ack=4)["type"] == "ack"
        assert next_message(bob_ws)["data"] == "sorry"
        # POST /publish passes the same hooks, with the session's identity.
        posted = bob.post(chat.url + "/publish/lobby", data="from http", timeout=5)
        assert posted.ok, posted.text
        got = next_message(bob_ws)
        assert (got["data"], got["sender"]) == ("from http", "bob")
        assert bob.post(chat.url + "/publish/lobby", data="spam", timeout=5).json()["error"] \
            == "refused"
        # Someone else's private channel is refused by the connect hook.
        assert bob_ws.ask(type="subscribe", channel="user-ada", ack=5)["code"] == "refused"
        # The host's own error page stays the host's.
        forbidden = bob.post(chat.url + "/notify/ada", data="x", timeout=5)
        assert forbidden.status_code == 403 and "json" not in forbidden.headers["Content-Type"]
        # Logout closes the user's sockets.
        assert ada.post(chat.url + "/logout", timeout=5).ok
        with pytest.raises(Closed) as closed:
            for _ in range(20):
                ada_ws.recv()
        assert closed.value.code == 1008


def test_an_anonymous_client_may_not_join(chat):
    with socket(chat) as anonymous:
        assert anonymous.ask(type="subscribe", channel="lobby", ack=1)["code"] == "refused"
    refused = requests.post(chat.url + "/publish/lobby", data="hi", timeout=5)
    assert refused.status_code == 403 and refused.json()["error"] == "refused"
