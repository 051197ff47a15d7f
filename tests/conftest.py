"""Fixtures: real servers on free ports, a real redis-server, unique channels.

The test process is gevent-patched like ``manage.py``, so in-process hub and
broker tests run exactly as they do in a server, and the clients (websockets'
sync client, requests, Playwright) cooperate with it.
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import uuid  # noqa: E402

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

from tests.support import RedisServer, ServerProcess  # noqa: E402

# CI explores the same examples on every run, so a landing never depends on a random draw;
# on a developer's machine hypothesis keeps drawing new ones (and remembers failures).
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def channel() -> str:
    """A channel name no other test uses."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def server():
    """One ``manage.py serve`` on the in-memory broker, shared by the tests that only need
    default settings (each test uses its own channel)."""
    proc = ServerProcess.serve()
    yield proc
    proc.stop()


@pytest.fixture
def make_server():
    """Start servers with their own settings: ``make_server(env={...})``; all stopped after."""
    started: list[ServerProcess] = []

    def start(env: dict[str, str] | None = None, **kwargs) -> ServerProcess:
        proc = ServerProcess.serve(env=env, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium, headless, driven by Playwright; one for the whole session."""
    from playwright.sync_api import sync_playwright

    from tests.browser import launch

    with sync_playwright() as playwright:
        instance = launch(playwright)
        yield instance
        instance.close()


@pytest.fixture(scope="session")
def redis_server():
    """A real ``redis-server`` on a free port, no persistence, for the whole session."""
    instance = RedisServer.start()
    yield instance
    instance.stop()
