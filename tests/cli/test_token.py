"""``python manage.py token``: a signed, expiring token, checked by a real server."""

from __future__ import annotations

import time

import pytest
import requests

from tests.cli import assert_clear_failure, manage

pytestmark = pytest.mark.e2e  # its tests start processes (servers, manage.py) themselves


@pytest.mark.parametrize("ttl", ["nan", "inf", "-inf", "1e400", "0", "-5"])
def test_token_refuses_a_ttl_that_is_not_finite_and_positive(ttl):
    """NaN or infinity made tokens that never expire."""
    result = manage("token", "--channel", "private-x", f"--ttl={ttl}",
                    env={"WSRELAY_SECRET_KEY": "k" * 40})
    assert_clear_failure(result, "--ttl", "finite, positive")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_token_with_a_finite_ttl_expires_then(make_server):
    server = make_server(env={"WSRELAY_SECRET_KEY": "k" * 40})
    result = manage("token", "--channel", "private-x", "--ttl", "1.5",
                    env={"WSRELAY_SECRET_KEY": "k" * 40})
    assert result.returncode == 0, result.stderr
    url = f"{server.url}/poll/private-x"
    params = {"token": result.stdout.strip(), "timeout": "0"}
    assert requests.get(url, params=params, timeout=5).status_code == 200
    time.sleep(2)
    answer = requests.get(url, params=params, timeout=5)
    assert (answer.status_code, answer.json()["error"]) == (401, "token_expired")
