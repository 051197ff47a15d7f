"""The demo page, the browser client's files and the health check."""

from __future__ import annotations

import os

from flask import Response, current_app, jsonify, render_template, send_from_directory

from ..error_codes import retryable_codes
from ..websocket.envelopes import max_request_size
from .checks import relay

#: The package's files: wsrelay.js, and the pages' scripts and styles.
STATIC_FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "static")
#: The pages (demo, dashboard) run only their own files: no inline script or style, nothing
#: foreign; what a message holds can never run as code in them.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; worker-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def index() -> Response:
    """The demo page: ``create_app()``'s ``/``, and a host's only with WSRELAY_DEMO_PAGE."""
    response = Response(render_template("wsrelay/index.html"))
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response


def client_file(filename: str) -> Response:
    """``/static/wsrelay.js`` (and ``.mjs``), from the package, whatever the host serves."""
    return send_from_directory(STATIC_FOLDER, filename)


def client_settings() -> Response:
    """What wsrelay.js needs to know before it sends: the size limits (it refuses a message
    over them itself, and publishes a text whose JSON escapes would exceed a wsrelay.v1
    frame by POST) and which error codes are worth retrying."""
    limit = current_app.config["WSRELAY_MAX_MESSAGE_SIZE"]
    response = jsonify(max_message_size=limit, max_request_size=max_request_size(limit),
                       retryable=retryable_codes())
    response.headers["Cache-Control"] = "no-cache"
    return response


def _report() -> dict:
    hub = relay().hub
    status = hub.broker.status()
    state = "draining" if hub.draining else "ok" if status.get("ok") else "degraded"
    return {"status": state, **status, **hub.counts(), "draining": hub.draining,
            "pid": os.getpid()}  # which worker answered: behind gunicorn each has its own


def healthz() -> Response:
    """The process serves (always 200 while it does); the broker's state for a look."""
    return jsonify(_report())


def readyz() -> Response:
    """Whether to send this worker new clients: 503 while its broker is unreachable or
    while it is stopping."""
    body = _report()
    response = jsonify(body)
    response.status_code = 200 if body["ok"] and not body["draining"] else 503
    return response
