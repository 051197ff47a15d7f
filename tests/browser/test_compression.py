"""permessage-deflate in real headless Chromium: negotiated with the demo page, and large
messages intact both ways on the wire it compresses."""

from __future__ import annotations

import pytest
import requests
from playwright.sync_api import expect

from tests.browser import TIMEOUT, new_page, wait_for_messages
from tests.browser.test_demo_page import demo_url, expect_connected, say
from tests.support import publish, wait_until

pytestmark = pytest.mark.timeout(60)

ANSWER = "permessage-deflate; server_no_context_takeover"


def bytes_sent(server) -> int:
    stats = requests.get(f"{server.url}/dashboard/stats", timeout=5).json()
    return stats["process"]["bytes_sent"]


@pytest.fixture
def page(browser):
    instance, errors = new_page(browser)
    yield instance
    instance.context.close()
    assert not errors


def test_the_demo_negotiates_deflate_and_large_messages_arrive_intact(
    server, channel, browser, page
):
    """The handshake as Chromium saw it (its offer, wsrelay's answer), then a long chat line
    from the page and a large publish to it, each intact, the publish sent compressed."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    offers: list[dict] = []
    answers: list[dict] = []
    cdp.on("Network.webSocketWillSendHandshakeRequest",
           lambda event: offers.append(event["request"]["headers"]))
    cdp.on("Network.webSocketHandshakeResponseReceived",
           lambda event: answers.append(event["response"]["headers"]))
    page.goto(demo_url(server.url, channel, nick="ada"))
    expect_connected(page, "websocket")
    wait_until(lambda: offers and answers, message="Chromium reported no handshake")
    request, response = ({name.lower(): value for name, value in headers[0].items()}
                         for headers in (offers, answers))
    assert "permessage-deflate" in request["sec-websocket-extensions"]
    assert response["sec-websocket-extensions"] == ANSWER

    line = "compressed both ways, " * 90  # the composer takes 2000 characters
    say(page, line.strip())
    wait_for_messages(page, line.strip())

    before = bytes_sent(server)
    text = "".join(f"line {n}: the quick brown fox jumps over the lazy dog\n"
                   for n in range(6000))  # 340 KB of text that compresses well
    publish(server.url, channel, text)
    page.wait_for_function(
        "(n) => [...document.querySelectorAll('#log li.msg span.data')]"
        ".some(e => e.textContent.length === n)", arg=len(text), timeout=TIMEOUT,
    )
    shown = page.evaluate(
        "(n) => [...document.querySelectorAll('#log li.msg span.data')]"
        ".map(e => e.textContent).find(t => t.length === n)", len(text),
    )
    assert shown == text
    sent = bytes_sent(server) - before
    assert sent < len(text) // 5, f"{sent} bytes on the wire for a {len(text)}-byte message"


ECHO_JS = """
async ([url, size]) => {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  const text = Array.from({length: size / 32}, (_, i) => `message line ${i}`.padEnd(31) + "\\n")
    .join("");
  const binary = new Uint8Array(size).map((_, i) => (i * 7) % 251);
  const small = "hi";
  const received = [];
  const done = new Promise(resolve => {
    ws.onmessage = event => { received.push(event.data); if (received.length === 3) resolve(); };
  });
  ws.send(text); ws.send(binary); ws.send(small);
  await done;
  const echoed = new Uint8Array(received[1]);
  ws.close();
  return {
    extensions: ws.extensions,
    text: received[0] === text,
    binary: echoed.length === binary.length && echoed.every((b, i) => b === binary[i]),
    small: received[2] === small,
  };
}
"""


def test_large_messages_from_chromium_come_back_intact(server, channel, page):
    """Raw mode echoes to the sender: 512 KiB of text and of binary, compressed by Chromium
    on the way in and by wsrelay on the way out, and a small one, sent plain by wsrelay."""
    page.goto(f"{server.url}/healthz")  # a page of the server's own origin
    result = page.evaluate(ECHO_JS, [f"{server.ws_url}/ws/{channel}", 512 * 1024])
    assert result == {"extensions": ANSWER, "text": True, "binary": True, "small": True}


def test_with_compression_off_chromium_is_served_plain(make_server, channel, page):
    server = make_server(env={"WSRELAY_COMPRESSION": "0"})
    page.goto(f"{server.url}/healthz")
    result = page.evaluate(ECHO_JS, [f"{server.ws_url}/ws/{channel}", 64 * 1024])
    assert result == {"extensions": "", "text": True, "binary": True, "small": True}
    expect(page.locator("body")).to_be_visible()
