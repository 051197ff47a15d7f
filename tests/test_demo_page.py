"""The demo page (``GET /``) in real headless Chromium against a real server.

Every transport the page can pick is exercised end to end: two browsers chat
over WebSocket; a browser without WebSocket falls back to SSE; one without
WebSocket and EventSource long-polls; the page rides out a server restart and
resumes after its connection was cut.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.browser import (
    NO_EVENTSOURCE,
    NO_WEBSOCKET,
    TIMEOUT,
    fence,
    launch,
    messages,
    new_page,
    publish,
    wait_for_messages,
)
from tests.support import ROOT

pytestmark = pytest.mark.timeout(30)

expect.set_options(timeout=TIMEOUT)

CONNECTIONS = re.compile(r"/(ws|sse|poll)/")


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        instance = launch(playwright)
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def page(browser):
    """One plain page for the module; each test navigates it afresh (the page closes
    its connection on ``pagehide``)."""
    instance, errors = new_page(browser)
    yield instance
    instance.context.close()
    assert not errors, errors


@pytest.fixture
def open_page(browser):
    """More pages, each in its own context, with init scripts (e.g. removing WebSocket)."""
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


def demo_url(base: str, channel: str, transport: str | None = None) -> str:
    url = f"{base}/?channel={quote(channel)}"
    return url + (f"&transport={transport}" if transport else "")


def expect_connected(page: Page, transport: str) -> None:
    expect(page.locator("#state")).to_have_text("open")
    expect(page.locator("#transport")).to_have_text(transport)


def send_from_page(page: Page, text: str) -> None:
    """Type into the composer and press Send, as a user would."""
    page.fill("#message", text)
    page.click("#send")
    expect(page.locator("#message")).to_have_value("")


# -- transports ------------------------------------------------------------------------


def test_two_pages_chat_over_websocket(server, channel, open_page):
    alice = open_page(demo_url(server.url, channel))
    bob = open_page(demo_url(server.url, channel))
    for page in (alice, bob):
        expect_connected(page, "websocket")
        assert page.evaluate("[demo.transport, demo.state]") == ["websocket", "open"]

    send_from_page(alice, "hello from alice")
    wait_for_messages(bob, "hello from alice")
    bob.fill("#message", "hi alice, bob here")
    bob.press("#message", "Enter")
    wait_for_messages(alice, "hi alice, bob here")
    with server.ws(f"/ws/{channel}") as service:
        service.send(b"\x00\x01\x02")
        service.send("ünïcödé ✓")
        wait_for_messages(alice, "[binary 3 bytes]", "ünïcödé ✓")
        wait_for_messages(bob, "[binary 3 bytes]", "ünïcödé ✓")

    expected = ["hello from alice", "hi alice, bob here", "[binary 3 bytes]", "ünïcödé ✓"]
    assert fence(server.url, channel, alice, bob) == [expected, expected]


def test_without_websocket_the_page_falls_back_to_sse(server, channel, open_page):
    legacy = open_page(demo_url(server.url, channel), NO_WEBSOCKET)
    modern = open_page(demo_url(server.url, channel))
    expect_connected(legacy, "sse")
    expect_connected(modern, "websocket")

    send_from_page(legacy, "from the sse page")
    wait_for_messages(modern, "from the sse page")
    send_from_page(modern, "from the websocket page")
    wait_for_messages(legacy, "from the websocket page")

    # From a service over HTTP: text, binary and text with \r (the last two travel
    # over SSE as `event: json`), and text that merely looks like such an item.
    message_id = publish(server.url, channel, "from http")
    publish(server.url, channel, bytes(range(16)))
    publish(server.url, channel, "line one\r\nline two")
    publish(server.url, channel, '{"data": "aGk=", "encoding": "base64"}')

    expected = [
        "from the sse page", "from the websocket page", "from http", "[binary 16 bytes]",
        "line one\r\nline two", '{"data": "aGk=", "encoding": "base64"}',
    ]
    legacy_log, modern_log = fence(server.url, channel, legacy, modern)
    assert legacy_log == expected
    assert modern_log == expected
    # Over SSE every message carries its id, the same one the publisher was given.
    assert legacy.locator(f'#log li.msg[data-id="{message_id}"] .data').text_content() == (
        "from http"
    )


def test_without_websocket_and_eventsource_a_burst_arrives_by_long_poll(
    server, channel, open_page
):
    page = open_page(demo_url(server.url, channel), NO_WEBSOCKET, NO_EVENTSOURCE)
    expect_connected(page, "poll")

    burst = [f"burst {i:02d}" for i in range(20)]
    with server.ws(f"/ws/{channel}") as other:
        for text in burst:
            other.send(text)
        wait_for_messages(page, burst[-1])
        (log,) = fence(server.url, channel, page)
        assert log == burst

        send_from_page(page, "from the polling page")
        received = [other.recv(timeout=5) for _ in range(len(burst) + 2)]
        assert received[-1] == "from the polling page"


@pytest.mark.parametrize("transport", ["poll", "sse"])
def test_a_forced_transport_is_used(server, channel, page, transport):
    page.goto(demo_url(server.url, channel, transport))
    expect_connected(page, transport)
    expect(page.locator("#transport-select")).to_have_value(transport)
    expect(page.locator("#transport-label")).to_contain_text("forced")

    publish(server.url, channel, f"to a {transport} page")
    with server.ws(f"/ws/{channel}") as other:
        wait_for_messages(page, f"to a {transport} page")
        send_from_page(page, f"from a {transport} page")
        assert other.recv(timeout=5) == f"from a {transport} page"
    (log,) = fence(server.url, channel, page)
    assert log == [f"to a {transport} page", f"from a {transport} page"]

    page.select_option("#transport-select", "websocket")
    expect_connected(page, "websocket")
    assert "transport=websocket" in page.url


# -- reconnecting ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "sse", "poll"])
def test_the_page_rides_out_a_server_restart(make_server, channel, open_page, mode):
    first = make_server()
    page = open_page(demo_url(first.url, channel, None if mode == "auto" else mode))
    transport = "websocket" if mode == "auto" else mode
    expect_connected(page, transport)
    send_from_page(page, "before the restart")
    wait_for_messages(page, "before the restart")

    first.stop()
    expect(page.locator("#state")).to_have_text("reconnecting")
    expect(page.locator("#log li.notice").filter(has_text="connection lost")).to_have_count(1)

    second = make_server(port=first.port)
    expect_connected(page, transport)  # a server restart is no reason to downgrade
    if transport != "websocket":
        # The memory broker forgot the channel: the page says so, it does not pretend.
        expect(page.locator("#log li.gap")).to_have_count(1)

    send_from_page(page, "after the restart, from the page")
    publish(second.url, channel, "after the restart, over http")
    (log,) = fence(second.url, channel, page)
    assert log == [
        "before the restart", "after the restart, from the page", "after the restart, over http",
    ]


def test_a_polling_page_resumes_after_its_connection_was_cut(server, channel, open_page):
    """``set_offline`` does not cut a request already open to localhost (a long-poll in
    flight or an SSE stream keeps flowing), but it fails every new one: a long-poll
    page is cut for real once its request in flight has answered."""
    page = open_page(demo_url(server.url, channel, "poll"))
    expect_connected(page, "poll")
    publish(server.url, channel, "before the cut")
    wait_for_messages(page, "before the cut")

    page.context.set_offline(True)
    publish(server.url, channel, "answers the poll in flight")
    expect(page.locator("#state")).to_have_text("reconnecting")
    missed = [f"while cut {i}" for i in range(3)]
    for text in missed:
        publish(server.url, channel, text)
    assert not set(missed) & set(messages(page))  # really cut off

    page.context.set_offline(False)
    expect(page.locator("#state")).to_have_text("open")
    (log,) = fence(server.url, channel, page)
    assert log == ["before the cut", "answers the poll in flight", *missed]
    expect(page.locator("#log li.gap")).to_have_count(0)  # resumed from history: no gap


def test_an_sse_page_resumes_after_leave_and_join(server, channel, page):
    """``set_offline`` leaves an open SSE stream alone, so the page itself drops it."""
    page.goto(demo_url(server.url, channel, "sse"))
    expect_connected(page, "sse")
    publish(server.url, channel, "before leaving")
    wait_for_messages(page, "before leaving")

    page.click("#leave")
    expect(page.locator("#state")).to_have_text("closed")
    missed = [f"while away {i}" for i in range(3)]
    for text in missed:
        publish(server.url, channel, text)

    page.click("#join")
    expect_connected(page, "sse")
    (log,) = fence(server.url, channel, page)
    assert log == ["before leaving", *missed]
    expect(page.locator("#log li.gap")).to_have_count(0)


# -- channel names ---------------------------------------------------------------------


@pytest.fixture
def connection_attempts(page):
    """URLs of every request and WebSocket the module's page opens during the test."""
    page.goto("about:blank")
    seen: list[str] = []

    def on_request(request):
        seen.append(request.url)

    def on_websocket(ws):
        seen.append(ws.url)

    page.on("request", on_request)
    page.on("websocket", on_websocket)
    yield seen
    page.remove_listener("request", on_request)
    page.remove_listener("websocket", on_websocket)


def _flush_events(page: Page) -> None:
    """A request issued now is reported after any issued before it."""
    with page.expect_request("**/healthz"):
        page.evaluate("fetch('/healthz')")


def test_a_bad_channel_name_shows_an_error_and_does_not_connect(
    server, channel, page, connection_attempts
):
    seen = connection_attempts
    page.goto(f"{server.url}/?channel={quote('no spaces!')}")
    expect(page.locator("#channel-error")).to_be_visible()
    expect(page.locator("#channel-error")).to_contain_text("Invalid channel name")
    expect(page.locator("#channel")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#state")).to_have_text("closed")
    assert page.evaluate("demo.join('still bad!')") is False
    _flush_events(page)
    assert not [url for url in seen if CONNECTIONS.search(url)], seen

    # On a page already in a channel, a bad name typed in is refused and changes nothing.
    page.goto(demo_url(server.url, channel))
    expect_connected(page, "websocket")
    seen.clear()
    for bad in ["a/b", "x" * 129, ""]:
        page.fill("#channel", bad)
        page.click("#join")
        expect(page.locator("#channel-error")).to_be_visible()
        expect(page.locator("#current-channel")).to_have_text(channel)
        expect(page.locator("#state")).to_have_text("open")
    _flush_events(page)
    assert not [url for url in seen if CONNECTIONS.search(url)], seen
    page.fill("#channel", channel + "-ok")
    expect(page.locator("#channel-error")).to_be_hidden()


# -- the picture in the README ---------------------------------------------------------


def test_screenshot_of_the_demo_page(server, open_page):
    room = "lobby"
    alice = open_page(demo_url(server.url, room))
    bob = open_page(demo_url(server.url, room))
    expect_connected(alice, "websocket")
    expect_connected(bob, "websocket")
    send_from_page(bob, "Hi! Is anyone on the lobby channel?")
    wait_for_messages(alice, "Hi! Is anyone on the lobby channel?")
    send_from_page(alice, "Yes, over WebSocket. Open a tab with ?transport=sse to compare.")
    publish(server.url, room, "deploy finished: build 1842 is live")
    publish(server.url, room, bytes(48))
    send_from_page(bob, "Got the deploy note over the same channel.")
    wait_for_messages(
        alice, "deploy finished: build 1842 is live", "[binary 48 bytes]",
        "Got the deploy note over the same channel.",
    )
    alice.locator("#message").blur()
    path = ROOT / "docs" / "demo.png"
    Path(path.parent).mkdir(exist_ok=True)
    alice.screenshot(path=str(path))
    assert 0 < path.stat().st_size < 300_000
