"""``/dashboard`` in real headless Chromium: live numbers, graphs and the busiest channels,
read through the page's ids (``#state``, ``#connections``, ``#published-meta``,
``#busiest``, ``#closes``, the two canvases)."""

from __future__ import annotations

import re

import gevent
import pytest
import requests
from playwright.sync_api import expect

from tests.browser import TIMEOUT, new_page
from tests.support import wait_until

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


def test_the_dashboard_opens_with_the_last_minutes_and_fractional_rates(make_server, page):
    """The server's ticker publishes every 2 s: the dashboard, opened after a while, draws
    what came before it was opened, and shows 0.5/s rather than 0 or 1."""
    server = make_server()  # with the ticker
    wait_until(lambda: len(stats(server)["samples"]) >= 12, timeout=20)
    page.goto(f"{server.url}/dashboard")
    expect(page.locator("#state")).to_have_text("ok")
    # The first answer is enough for a rate: the samples of the seconds before it.
    first = page.locator("#published").text_content()
    assert re.fullmatch(r"0\.[3-7]", first), first
    expect(page.locator("#published")).to_have_text(re.compile(r"^0\.[3-7]$"))
    body = stats(server)
    assert len(body["process_samples"]) == len(body["samples"]) >= 12
    assert {"t", "published", "delivered", "bytes_sent", "connections"} <= set(body["samples"][0])


def test_numbers_the_server_no_longer_confirms_are_marked_stale(make_server, page):
    server = make_server(options=("--no-ticker",))
    page.goto(f"{server.url}/dashboard")
    expect(page.locator("#state")).to_have_text("ok")
    expect(page.locator("#stale")).to_be_hidden()
    server.stop()
    expect(page.locator(".app[data-stale]")).to_have_count(1)
    expect(page.locator("#stale")).to_contain_text("as of")
    expect(page.locator("#connections")).to_have_text("0")  # the last known, greyed


def test_the_dashboard_reads_on_a_phone(make_server, browser):
    server = make_server(options=("--no-ticker",))
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                  is_mobile=True, has_touch=True)
    try:
        phone = context.new_page()
        phone.goto(f"{server.url}/dashboard")
        expect(phone.locator("#state")).to_have_text("ok")
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scroll
        tiles = [phone.locator(".tile").nth(n).bounding_box() for n in range(2)]
        assert tiles[0]["y"] == tiles[1]["y"] and tiles[1]["x"] + tiles[1]["width"] <= 390
        chart = phone.locator("#messages-chart").bounding_box()
        assert chart["x"] >= 0 and chart["x"] + chart["width"] <= 390
    finally:
        context.close()


def stats(server) -> dict:
    return requests.get(f"{server.url}/dashboard/stats", timeout=5).json()
