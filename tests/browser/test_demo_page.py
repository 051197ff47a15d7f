"""The demo page (``GET /``), a multi-room chat on wsrelay.js, in real headless Chromium.

Pages are driven as a user would (type, click) and read through the page's ids:
``#rooms``, ``#log li.msg`` (``.nick``, ``.data``), ``#online``, ``#transport``,
``#state``, the ticker panel. What wsrelay.js itself promises is tested in
``test_wsrelay_js.py``; here, that the page puts it to use.
"""

from __future__ import annotations

import datetime
import os
import re
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Page, expect

from tests.browser import (
    NO_EVENTSOURCE,
    NO_WEBSOCKET,
    TIMEOUT,
    fence,
    messages,
    new_page,
    publish,
    wait_for_messages,
)
from tests.support import ROOT, RedisServer, poll_json

pytestmark = pytest.mark.timeout(30)

expect.set_options(timeout=TIMEOUT)


@pytest.fixture
def open_page(browser):
    """Pages, each in its own context, with init scripts (e.g. removing WebSocket)."""
    opened: list[tuple[Page, list[str]]] = []

    def make(url: str, *init_scripts: str) -> Page:
        instance, errors = new_page(browser, *init_scripts)
        opened.append((instance, errors))
        instance.goto(url)
        return instance

    yield make
    for instance, _ in opened:
        instance.context.close()
    errors = [error for _, page_errors in opened for error in page_errors]
    assert not errors, errors


def demo_url(base: str, *rooms: str, nick: str = "", transport: str = "") -> str:
    query = {"rooms": ",".join(rooms), "nick": nick, "transport": transport}
    return f"{base}/?{urlencode({key: value for key, value in query.items() if value})}"


def expect_connected(page: Page, transport: str) -> None:
    """Connected, and every room's subscription live (``data-live``)."""
    expect(page.locator("#state")).to_have_text("open")
    expect(page.locator("#transport")).to_have_text(transport)
    expect(page.locator("#rooms li:not([data-live])")).to_have_count(0)


def say(page: Page, text: str) -> None:
    """Type into the composer and press Send, as a user would."""
    page.fill("#message", text)
    page.click("#send")
    expect(page.locator("#message")).to_have_value("")


def room_item(page: Page, room: str):
    return page.locator(f'#rooms li[data-room="{room}"]')


def authors(page: Page) -> list[str]:
    return page.locator("#log li.msg .nick").all_text_contents()


# -- chat ------------------------------------------------------------------------------


def test_two_pages_chat_in_a_room(server, channel, open_page):
    alice = open_page(demo_url(server.url, channel, nick="alice"))
    bob = open_page(demo_url(server.url, channel, nick="bob"))
    for page in (alice, bob):
        expect_connected(page, "websocket")
        expect(page.locator("#room-title")).to_have_text(channel)

    say(alice, "hello from alice")
    wait_for_messages(bob, "hello from alice")
    bob.fill("#message", "hi alice, bob here")
    bob.press("#message", "Enter")
    wait_for_messages(alice, "hi alice, bob here")
    # A service on the same channel: raw text, binary.
    publish(server.url, channel, "deploy finished")
    publish(server.url, channel, bytes(3))

    expected = ["hello from alice", "hi alice, bob here", "deploy finished", "[binary 3 bytes]"]
    assert fence(server.url, channel, alice, bob) == [expected, expected]
    assert authors(bob)[:3] == ["alice", "bob", "(raw)"]
    # Each message shows its id, the one the publisher was given.
    message_id = publish(server.url, channel, "with an id")
    wait_for_messages(bob, "with an id")
    expect(bob.locator(f'#log li.msg[data-id="{message_id}"] .data')).to_have_text("with an id")


def test_rooms_are_joined_switched_and_left(server, channel, open_page):
    lobby, dev = f"{channel}-lobby", f"{channel}-dev"
    alice = open_page(demo_url(server.url, lobby, nick="alice"))
    bob = open_page(demo_url(server.url, lobby, dev, nick="bob"))
    expect_connected(alice, "websocket")
    expect_connected(bob, "websocket")

    alice.fill("#room-input", dev)
    alice.click("#join")
    expect(room_item(alice, dev)).to_have_class("active")
    expect(alice.locator("#room-title")).to_have_text(dev)
    assert sorted(alice.evaluate("demo.client.channels")) == sorted([lobby, dev, "ticker"])

    bob.evaluate(f"demo.enter({lobby!r})")
    say(bob, "in the lobby")  # alice is looking at dev: an unread count, not the log
    expect(room_item(alice, lobby).locator(".unread")).to_have_text("1")
    assert "in the lobby" not in messages(alice)
    room_item(alice, lobby).locator(".select").click()
    wait_for_messages(alice, "in the lobby")
    expect(room_item(alice, lobby).locator(".unread")).to_have_text("")

    room_item(alice, dev).locator(".leave").click()
    expect(room_item(alice, dev)).to_have_count(0)
    assert dev not in alice.evaluate("demo.client.channels")
    assert f"rooms={lobby}" in alice.url  # a reload keeps the rooms


def test_a_bad_room_name_is_refused_with_a_reason(server, channel, open_page):
    page = open_page(demo_url(server.url, channel))
    expect_connected(page, "websocket")
    for bad, reason in [("no spaces", "letters, digits"), ("x" * 129, "1-128"),
                        ("ticker", "ticker"), ("", "Type a room name")]:
        page.fill("#room-input", bad)
        page.click("#join")
        expect(page.locator("#room-error")).to_be_visible()
        expect(page.locator("#room-error")).to_contain_text(reason)
        expect(page.locator("#room-input")).to_have_attribute("aria-invalid", "true")
    assert page.locator("#rooms li").count() == 1
    page.fill("#room-input", channel + "-ok")
    page.click("#join")
    expect(page.locator("#room-error")).to_be_hidden()
    expect(page.locator("#rooms li")).to_have_count(2)


def test_the_online_count_follows_who_is_in_the_room(server, channel, open_page):
    alice = open_page(demo_url(server.url, channel))
    expect_connected(alice, "websocket")
    expect(alice.locator("#online")).to_have_text("1 online")
    bob = open_page(demo_url(server.url, channel))
    expect_connected(bob, "websocket")
    expect(bob.locator("#online")).to_have_text("2 online")
    expect(alice.locator("#online")).to_have_text("2 online")  # refreshed every few seconds
    bob.evaluate(f"demo.leave({channel!r})")
    expect(alice.locator("#online")).to_have_text("1 online")


def test_the_ticker_shows_the_servers_push(server, open_page):
    page = open_page(demo_url(server.url, "lobby"))
    expect(page.locator("#ticker-value")).to_have_text(re.compile(r"^\d+$"))
    first = int(page.locator("#ticker-value").text_content())
    page.wait_for_function(
        "(first) => Number(document.getElementById('ticker-value').textContent) > first",
        arg=first,
    )
    expect(page.locator("#ticker-strip span.on")).not_to_have_count(0)


# -- transports ------------------------------------------------------------------------


@pytest.mark.parametrize("missing, transport", [
    ([NO_WEBSOCKET], "sse"), ([NO_WEBSOCKET, NO_EVENTSOURCE], "poll"),
])
def test_without_websocket_the_page_falls_back_and_chats(
    server, channel, open_page, missing, transport
):
    legacy = open_page(demo_url(server.url, channel, nick="legacy"), *missing)
    modern = open_page(demo_url(server.url, channel, nick="modern"))
    expect_connected(legacy, transport)
    expect_connected(modern, "websocket")
    expect(legacy.locator("#online")).to_have_text("-")  # presence needs the WebSocket

    say(legacy, f"from the {transport} page")
    wait_for_messages(modern, f"from the {transport} page")
    say(modern, "from the websocket page")
    wait_for_messages(legacy, "from the websocket page")
    expected = [f"from the {transport} page", "from the websocket page"]
    assert fence(server.url, channel, legacy, modern) == [expected, expected]


def test_the_transport_can_be_chosen(server, channel, open_page):
    page = open_page(demo_url(server.url, channel, nick="ada"))
    expect_connected(page, "websocket")
    page.select_option("#transport-select", "poll")
    expect_connected(page, "poll")
    assert "transport=poll" in page.url and "nick=ada" in page.url
    expect(page.locator("#transport-select")).to_have_value("poll")
    say(page, "polling by choice")
    assert fence(server.url, channel, page) == [["polling by choice"]]


def chat_then_stop(make_server, open_page, channel, env=None):
    """A page that said something over WebSocket, then saw its server stop."""
    first = make_server(env=env)
    page = open_page(demo_url(first.url, channel, nick="ada"))
    expect_connected(page, "websocket")
    say(page, "before the restart")
    wait_for_messages(page, "before the restart")
    first.stop()
    expect(page.locator("#state")).to_have_text("connecting")
    return first, page


def test_the_page_rides_out_a_server_restart(make_server, channel, open_page):
    first, page = chat_then_stop(make_server, open_page, channel)
    expect(page.locator("#log li.notice").filter(has_text="Connection lost")).to_have_count(1)
    say(page, "typed while the server was down")  # waits, then is sent
    pending = page.locator("#log li.msg.pending")
    expect(pending).to_have_count(1)  # shown at once, and marked so
    expect(pending.locator(".status")).to_have_text("sending…")

    second = make_server(port=first.port)
    expect_connected(page, "websocket")
    expect(page.locator("#log li.notice").filter(has_text="Reconnected")).to_have_count(1)
    # The memory broker forgot the channel: the page says so, it does not pretend.
    expect(page.locator("#log li.gap")).to_have_count(1)
    (log,) = fence(second.url, channel, page)
    assert log == ["before the restart", "typed while the server was down"]
    expect(page.locator("#log li.msg.pending")).to_have_count(0)


def test_a_joined_room_shows_its_history_with_the_servers_times(server, channel, open_page):
    """Opening the page (or joining a room) shows what the room said before, oldest first,
    each message at the time the server accepted it, not when this browser got it."""
    said = [f'{{"nick": "ada", "text": "earlier {n}"}}' for n in range(3)]
    ids = [publish(server.url, channel, text) for text in said]
    stamped = {item["id"]: item["time"] for item in poll_json(
        server, channel, since=f"{ids[0].split('-')[0]}-0", timeout=0)["messages"]}
    page = open_page(demo_url(server.url, channel, nick="bob"))
    expect_connected(page, "websocket")
    expect(room_item(page, channel)).to_have_attribute("data-history", "")
    assert messages(page) == ["earlier 0", "earlier 1", "earlier 2"]
    assert authors(page) == ["ada"] * 3
    for message_id in ids:
        time = page.locator(f'#log li.msg[data-id="{message_id}"] time')
        assert time.get_attribute("datetime") == iso(stamped[message_id])
    expect(page.locator("#log .sender")).to_have_count(0)  # this server stamps no sender

    publish(server.url, channel, '{"nick": "ada", "text": "live one"}')  # after the history
    wait_for_messages(page, "live one")
    assert messages(page) == ["earlier 0", "earlier 1", "earlier 2", "live one"]
    other = f"{channel}-other"
    publish(server.url, other, "said before bob joined")
    page.fill("#room-input", other)
    page.click("#join")
    wait_for_messages(page, "said before bob joined")


def iso(ms: int) -> str:
    """What ``Date.toISOString`` gives for ``ms`` since the epoch."""
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def test_a_restart_on_redis_reports_no_gap(make_server, redis_server, channel, open_page):
    """With Redis history survives a restart of wsrelay: no "messages were missed" (the
    memory broker's restart, above, is a real gap and says so)."""
    env = {"WSRELAY_BROKER_URL": redis_server.url}
    first, page = chat_then_stop(make_server, open_page, channel, env)
    second = make_server(env=env, port=first.port)
    expect_connected(page, "websocket")
    (log,) = fence(second.url, channel, page)
    assert log == ["before the restart"]
    expect(page.locator("#log li.gap")).to_have_count(0)


def test_the_ticker_comes_back_with_redis(make_server, open_page):
    """Redis stopped while the page loads: the ticker starts once Redis is back (it used to
    stay at "-" while the page said "open")."""
    redis = RedisServer.start()
    try:
        server = make_server(env={"WSRELAY_BROKER_URL": redis.url})
        redis.stop()
        page = open_page(demo_url(server.url, "lobby"))
        expect(page.locator("#state")).to_have_text("open")
        expect(page.locator("#log li.notice.error").first).to_contain_text("broker")
        assert page.locator("#ticker-value").text_content() == "-"
        redis.restart()
        expect(page.locator("#ticker-value")).to_have_text(re.compile(r"^\d+$"), timeout=20_000)
        expect(page.locator("#rooms li:not([data-live])")).to_have_count(0)
    finally:
        redis.stop()


def test_tabs_of_the_demo_can_share_one_connection(server, channel, browser):
    context = browser.new_context()
    try:
        tabs = []
        for nick in ("ada", "bob"):
            tab = context.new_page()
            tab.goto(demo_url(server.url, channel, nick=nick) + "&share=1")
            tabs.append(tab)
        for tab in tabs:
            expect_connected(tab, "websocket")
        say(tabs[0], "one socket for both")
        for tab in tabs:
            wait_for_messages(tab, "one socket for both")
        assert tabs[1].evaluate("demo.client instanceof wsrelay.SharedClient")
    finally:
        context.close()


def test_the_page_runs_under_its_content_security_policy(server, channel, open_page):
    violations = []
    page = open_page(demo_url(server.url, channel))
    page.on("console", lambda message: violations.append(message.text)
            if "Content Security Policy" in message.text else None)
    expect_connected(page, "websocket")
    say(page, "no inline code needed")
    wait_for_messages(page, "no inline code needed")
    assert "script-src 'self'" in page.evaluate(
        "fetch(location.href).then(r => r.headers.get('content-security-policy'))")
    assert violations == []


# -- the picture in the README ---------------------------------------------------------


def test_screenshot_of_the_demo_page(make_server, open_page, tmp_path):
    """The picture in docs/: rewritten only with ``UPDATE_SCREENSHOT=1`` (or when it
    is missing), so a test run does not leave the tracked file modified."""
    server = make_server()  # a fresh ticker and fresh ids
    lobby, dev = "lobby", "dev"
    ada = open_page(demo_url(server.url, lobby, dev, nick="ada"))
    grace = open_page(demo_url(server.url, lobby, dev, nick="grace"))
    expect_connected(ada, "websocket")
    expect_connected(grace, "websocket")

    grace.evaluate(f"demo.enter({dev!r})")
    say(grace, "Staging is green, shipping build 1842.")
    publish(server.url, dev, '{"nick": "deploy-bot", "text": "build 1842 is live"}')
    grace.evaluate(f"demo.enter({lobby!r})")
    say(grace, "Morning! Anyone up for a review?")
    wait_for_messages(ada, "Morning! Anyone up for a review?")
    say(ada, "Sure, send it over. I'm in two rooms on one WebSocket.")
    say(grace, "Nice. The ticker on the left is pushed by the server every 2 s.")
    say(ada, "And if the connection drops, every room resumes from its last id.")
    publish(server.url, lobby, '{"nick": "ci-bot", "text": "main: all 480 tests passed"}')
    wait_for_messages(ada, "main: all 480 tests passed")
    expect(ada.locator("#online")).to_have_text("2 online")
    expect(room_item(ada, dev).locator(".unread")).to_have_text("2")
    ada.wait_for_function("() => Number(document.getElementById('ticker-value').textContent) >= 3")
    ada.locator("#message").blur()
    ada.mouse.move(0, 0)  # no hover colour anywhere
    docs = ROOT / "docs" / "demo.png"
    if os.environ.get("UPDATE_SCREENSHOT") == "1" or not docs.exists():
        docs.parent.mkdir(exist_ok=True)
        path = docs
    else:
        path = tmp_path / "demo.png"
    ada.screenshot(path=str(path))
    assert 0 < path.stat().st_size < 300_000
