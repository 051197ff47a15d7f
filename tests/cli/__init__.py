"""Helpers for the command tests: ``python manage.py ...`` run as a user runs it."""

from __future__ import annotations

import os
import subprocess

from tests.support import PYTHON, ROOT


def manage(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python manage.py ARGS`` with the memory broker unless ``env`` says otherwise."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WSRELAY_")}
    full_env.update(env or {})
    return subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=30)


def assert_clear_failure(result: subprocess.CompletedProcess, *needles: str) -> None:
    """Non-zero exit, one readable message, no traceback."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert result.stdout == ""
