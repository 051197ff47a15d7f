"""Fixtures: real servers on free ports, a real redis-server, unique channels; the e2e mark.

The test process is gevent-patched like ``manage.py``, so in-process hub and
broker tests run exactly as they do in a server, and the clients (websockets'
sync client, requests, Playwright) cooperate with it.

Every test that starts a process is marked ``e2e``: ``pytest -m "not e2e"`` is
the inner loop, the in-process tests only, and its property tests draw a tenth
of their examples (see :func:`tests.support.examples`); a whole run draws them all.
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import uuid  # noqa: E402

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

from tests.support import RedisClusterProcesses, RedisServer, Relay, ServerProcess  # noqa: E402

# CI explores the same examples on every run, so a landing never depends on a random draw;
# on a developer's machine hypothesis keeps drawing new ones (and remembers failures).
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_configure(config: pytest.Config) -> None:
    """The inner loop (``-m "not e2e"``) is for speed: its property tests go a tenth as deep
    (``--hypothesis-profile`` still chooses, when given)."""
    inner = re.search(r"\bnot\s+e2e\b", config.getoption("markexpr") or "")
    if inner and not config.getoption("hypothesis_profile", None):
        settings.register_profile("inner-loop", parent=settings.default, max_examples=10)
        settings.load_profile("inner-loop")


#: The fixtures that start a process: a test using one (even through another fixture) is e2e.
PROCESS_FIXTURES = frozenset({"server", "make_server", "redis_server", "own_redis", "browser",
                              "redis_cluster"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``e2e`` every test that starts a process through a fixture; modules and tests
    that start processes themselves carry the mark explicitly."""
    for item in items:
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


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


@pytest.fixture(scope="session")
def redis_cluster():
    """A real Redis Cluster of three masters (no replicas), for the whole session."""
    instance = RedisClusterProcesses.start(masters=3)
    yield instance
    instance.stop()


@pytest.fixture
def own_redis():
    """A redis-server of this test alone, free to be killed, stopped and restarted."""
    instance = RedisServer.start()
    yield instance
    instance.stop()


@pytest.fixture
def pair():
    """Two connected sockets (server side, client side), closed after the test."""
    server, client = socket.socketpair()
    yield server, client
    server.close()
    client.close()


@pytest.fixture
def relay():
    """Make wsrelay apps served in this process (:class:`tests.support.Relay`); closed after."""
    made: list[Relay] = []

    def make(**config) -> Relay:
        made.append(Relay(**config))
        return made[-1]

    yield make
    for server in made:
        server.close()
