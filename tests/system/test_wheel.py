"""wsrelay as its users get it: a wheel built from this checkout, installed in a fresh virtual
environment, serving the guide's chat app (docs/embedding.md) from a folder outside the
checkout under gunicorn with gevent-websocket's stock worker, two workers and Redis, and its
page in real headless Chromium."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests
from playwright.sync_api import expect

from tests.browser import new_page
from tests.support import PYTHON, ServerProcess, free_port
from tests.system.test_embedding import (
    STOCK_WORKER,
    login,
    next_message,
    socket,
    write_guide_app,
)
from tests.test_docs import ROOT

#: Building the wheel and installing it with its dependencies takes a minute or two.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh venv with the wheel (its dependencies come from the package index)."""
    where = tmp_path_factory.mktemp("wheel")
    subprocess.run([PYTHON, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w",
                    str(where / "dist")], check=True, timeout=300)
    wheel = next((where / "dist").glob("wsrelay-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(where / "venv")], check=True, timeout=120)
    subprocess.run([str(where / "venv" / "bin" / "pip"), "install", "-q", str(wheel)],
                   check=True, timeout=600)
    return where / "venv" / "bin"


def test_the_wheel_gives_the_command_and_python_m(venv, tmp_path):
    for command in ([str(venv / "wsrelay"), "--help"], [str(venv / "python"), "-m", "wsrelay",
                                                        "--help"]):
        shown = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                               timeout=60, check=True).stdout
        assert all(name in shown for name in ("serve", "publish", "token", "stats", "bench"))
    located = subprocess.run(
        [str(venv / "python"), "-c", "import wsrelay; print(wsrelay.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert str(ROOT) not in located  # the installed copy, not this checkout


@pytest.fixture(scope="module")
def chat(venv, tmp_path_factory, redis_server):
    """The guide's chat.py from a folder outside the checkout, on the wheel's gunicorn with
    gevent-websocket's stock worker, two workers sharing Redis."""
    folder = tmp_path_factory.mktemp("chat")
    write_guide_app(folder)
    port = free_port()
    server = ServerProcess.start(
        [str(venv / "gunicorn"), "-w", "2", "-k", STOCK_WORKER, "-b", f"127.0.0.1:{port}",
         "--chdir", str(folder), "chat:create_app()"],
        port, {"WSRELAY_BROKER_URL": redis_server.url, "WSRELAY_REDIS_PREFIX": "wheel"})
    yield server
    server.stop()


def test_the_guides_app_from_the_wheel_under_two_stock_workers(chat):
    web = requests.Session()
    assert "wsrelay.connect" in web.get(chat.url + "/static/wsrelay.js", timeout=5).text
    assert web.get(chat.url + "/dashboard", timeout=5).status_code == 200  # loopback
    ada = login(chat, "ada")
    listeners = [socket(chat, login(chat, f"bob{n}")) for n in range(4)]  # both workers
    try:
        for n, ws in enumerate(listeners):
            assert ws.ask(type="subscribe", channel="lobby", ack=n)["type"] == "ack"
        with socket(chat, ada) as ada_ws:
            assert ada_ws.ask(type="publish", channel="lobby", data="hi all",
                       ack=9)["type"] == "ack"
        for ws in listeners:
            got = next_message(ws)
            assert (got["data"], got["sender"]) == ("hi all", "ada")
    finally:
        for ws in listeners:
            ws.close()


def test_the_guides_page_from_the_wheel_in_chromium(chat, browser):
    """Log in through the guide's form, chat on its page; another user's message and a
    publish from a view arrive over the page's WebSocket, stamped by the server."""
    page, errors = new_page(browser)
    received: list[str] = []
    page.on("websocket", lambda ws: ws.on(
        "framereceived", lambda payload: received.append(f"{ws.url} {payload}")))
    page.goto(chat.url + "/")
    page.fill("input[name=name]", "grace")
    page.get_by_role("button", name="in").click()
    expect(page.locator("#me")).to_have_text("grace")
    lines = page.locator("#log li")
    # Her own line comes back once her subscriptions are in place, stamped and trimmed.
    page.fill("#text", "  hello  ")
    page.get_by_role("button", name="say").click()
    expect(lines).to_have_text(["grace: hello"])
    # Another user, on a socket of his own (perhaps the other worker), says hi.
    with socket(chat, login(chat, "bob")) as bob_ws:
        assert bob_ws.ask(type="publish", channel="lobby", data="hi grace",
                   ack=1)["type"] == "ack"
    # A view publishes to her private channel (the guide's /notify, for its admin).
    notified = login(chat, "admin").post(chat.url + "/notify/grace", data="tea at five",
                                         timeout=5)
    assert notified.ok, notified.text
    expect(lines).to_have_text(["grace: hello", "bob: hi grace", "(private) tea at five"])
    over_websocket = [frame for frame in received if frame.startswith(chat.ws_url + "/ws ")]
    assert any("hi grace" in frame for frame in over_websocket), received
    assert any("tea at five" in frame for frame in over_websocket), received
    assert errors == []
    page.context.close()
