"""The app factory: wsrelay as an app of its own (``manage.py serve``, gunicorn)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from .ops.logs import configure as configure_logs
from .relay import Relay


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """A Flask app serving the relay, with the demo page at ``/`` and wsrelay's log lines
    (WSRELAY_LOG_FORMAT); ``config`` overrides ``WSRELAY_*`` from the environment."""
    app = Flask("wsrelay", static_folder=None)  # its files are the blueprint's
    app.config["WSRELAY_DEMO_PAGE"] = True
    app.config.from_mapping(config or {})
    Relay(app)
    configure_logs(app.config["WSRELAY_LOG_FORMAT"])
    return app
