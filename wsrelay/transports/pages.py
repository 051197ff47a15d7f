"""The demo page and the health check."""

from __future__ import annotations

from flask import Response, jsonify, render_template

from .common import relay


def index() -> str:
    return render_template("index.html")


def healthz() -> Response:
    """The process serves; the broker's state and the hub's numbers for a look."""
    status = relay().hub.broker.status()
    body = {"status": "ok" if status.get("ok") else "degraded", **status, **relay().hub.counts()}
    response = jsonify(body)
    response.status_code = 200
    return response
