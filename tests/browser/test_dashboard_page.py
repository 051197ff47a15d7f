"""``/dashboard`` in real headless Chromium: live numbers, graphs and the busiest channels,
read through the page's ids (``#state``, ``#connections``, ``#published-meta``,
``#busiest``, ``#closes``, the two canvases)."""

from __future__ import annotations

import gevent
import pytest
import requests
from playwright.sync_api import expect

from tests.browser import TIMEOUT, new_page

pytestmark = pytest.mark.timeout(60)

expect.set_options(timeout=TIMEOUT)

TOKEN = "dashb0ard-token"

#: How many pixels of a canvas something was drawn on.
INKED = """(id) => {
  const canvas = document.getElementById(id);
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let inked = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i]) inked++;
  return inked;
}"""


@pytest.fixture
def page(browser):
    instance, errors = new_page(browser)
    yield instance
    instance.context.close()
    assert not errors, errors


def test_the_dashboard_shows_live_numbers_and_the_busiest_channel(make_server, page, channel):
    server = make_server(env={"WSRELAY_ADMIN_TOKEN": TOKEN}, options=("--no-ticker",))
    subscriber = server.ws(f"/ws/{channel}")
    page.goto(f"{server.url}/dashboard?token={TOKEN}")  # its fetches carry the token on
    expect(page.locator("#state")).to_have_text("ok")
    expect(page.locator("#connections")).to_have_text("1")
    expect(page.locator("#connections-meta")).to_contain_text("websocket 1")

    def publish_for_a_while() -> None:
        for n in range(30):
            requests.post(f"{server.url}/publish/{channel}", data=str(n), timeout=5)
            subscriber.recv()
            gevent.sleep(0.1)

    publisher = gevent.spawn(publish_for_a_while)
    expect(page.locator("#busiest")).to_contain_text(channel)
    expect(page.locator("#published")).not_to_have_text("-")
    publisher.get(timeout=20)
    expect(page.locator("#published-meta")).to_have_text("30 since start")
    expect(page.locator("#delivered-meta")).to_have_text("30 since start")
    assert page.evaluate(INKED, "connections-chart") > 500
    assert page.evaluate(INKED, "messages-chart") > 500

    subscriber.close(1000)
    expect(page.locator("#closes")).to_contain_text("1000 normal")
    expect(page.locator("#connections")).to_have_text("0")


def test_the_dashboard_says_when_the_server_is_gone(make_server, page):
    server = make_server(options=("--no-ticker",))
    page.goto(f"{server.url}/dashboard")  # no token set: this host may look
    expect(page.locator("#state")).to_have_text("ok")
    server.stop()
    expect(page.locator("#state")).to_have_text("unreachable")
    expect(page.locator("#alert")).to_contain_text("does not answer")
