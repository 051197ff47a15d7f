"""The demo's server push: ``manage.py serve`` publishes to ``ticker`` from a greenlet."""

import pytest

from tests.support import ServerProcess

pytestmark = pytest.mark.e2e  # its tests start processes (servers, manage.py) themselves


def test_serve_pushes_the_ticker_once_per_tick():
    server = ServerProcess.serve()  # the ticker is on by default
    try:
        with server.ws("/ws/ticker") as client:
            first = int(client.recv(timeout=5))
            second = int(client.recv(timeout=5))
        assert second == first + 1, "one ticker, started once"
    finally:
        server.stop()
