"""Helpers for driving the demo page in real headless Chromium (Playwright's sync API).

The browser is the system's Chromium (``playwright install`` cannot download one
here). Pages are read through the ids the demo page documents: ``#log`` with
``li.msg > span.data``, ``#transport``, ``#state`` and ``window.demo``.
"""

from __future__ import annotations

import uuid

from playwright.sync_api import Browser, Page, Playwright

from tests.support import publish

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1000, "height": 700}
#: Milliseconds any single wait in a browser test may take.
TIMEOUT = 10_000

NO_WEBSOCKET = "delete window.WebSocket;"
NO_EVENTSOURCE = "delete window.EventSource;"

_MESSAGES_JS = (
    "() => [...document.querySelectorAll('#log li.msg span.data')].map(e => e.textContent)"
)


def launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)


def new_page(browser: Browser, *init_scripts: str) -> tuple[Page, list[str]]:
    """A page in a fresh context (its own cookies and connection pool), and the list
    that collects the page's uncaught JavaScript errors."""
    context = browser.new_context(viewport=VIEWPORT)
    for script in init_scripts:
        context.add_init_script(script)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return page, errors


def messages(page: Page) -> list[str]:
    """The text of every message in the page's log, top to bottom."""
    return page.evaluate(_MESSAGES_JS)


def wait_for_messages(page: Page, *expected: str, timeout: float = TIMEOUT) -> list[str]:
    """Wait until every ``expected`` text is in the log; return the whole log."""
    page.wait_for_function(
        f"(expected) => {{ const got = ({_MESSAGES_JS})(); "
        "return expected.every(t => got.includes(t)); }",
        arg=list(expected), timeout=timeout,
    )
    return messages(page)




def fence(base_url: str, channel: str, *pages: Page) -> list[list[str]]:
    """Publish a unique last message and wait for it on every page.

    Messages of a channel arrive in order, so once the fence is shown anything
    published before it (a late duplicate included) has been shown too. Returns
    each page's log without the fence.
    """
    mark = f"fence {uuid.uuid4().hex[:8]}"
    publish(base_url, channel, mark)
    logs = []
    for page in pages:
        log = wait_for_messages(page, mark)
        assert log.count(mark) == 1, log
        logs.append([text for text in log if text != mark])
    return logs
