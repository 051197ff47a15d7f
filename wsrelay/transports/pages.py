"""The demo page and the health check."""

from __future__ import annotations

import os

from flask import Response, jsonify, render_template

from .common import relay


def index() -> str:
    return render_template("index.html")


def _report() -> dict:
    status = relay().hub.broker.status()
    return {"status": "ok" if status.get("ok") else "degraded", **status, **relay().hub.counts(),
            "pid": os.getpid()}  # which worker answered: behind gunicorn each has its own


def healthz() -> Response:
    """The process serves (always 200 while it does); the broker's state for a look."""
    return jsonify(_report())


def readyz() -> Response:
    """Whether to send this worker new clients: 503 while its broker is unreachable."""
    body = _report()
    response = jsonify(body)
    response.status_code = 200 if body["ok"] else 503
    return response
