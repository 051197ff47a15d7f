"""The HTTP face of wsrelay: one blueprint, every route of the public contract.

A guest in someone else's app: its JSON errors answer its own routes only, a
route of the host at one of its paths wins (whichever was registered first),
and it takes no page of the host (the demo page at ``/`` is opt-in).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from flask_cors import CORS
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from ..errors import ApiError
from . import admin, checks, pages, poll, publish, sse, websocket

#: Where the blueprint's files are served, under the prefix: wsrelay.js and wsrelay.mjs at
#: the contract's ``/static/wsrelay.js``, the pages' own files under ``/static/wsrelay/``
#: (a name of their own, so a host's ``static/dashboard.js`` is never taken).
STATIC_URL = "/static/wsrelay"
CLIENT_FILES = ("wsrelay.js", "wsrelay.mjs")
#: The paths whose unknown routes and wrong methods are wsrelay's to answer (in JSON).
API_ROOTS = ("/ws", "/poll", "/sse", "/publish", "/client.json", "/healthz", "/readyz",
             "/metrics", "/dashboard", STATIC_URL)


def http_error_response(exc: HTTPException) -> Response:
    """A Werkzeug error (400, 404, 405, 413, 500...) as the contract's JSON."""
    code = (exc.name or "error").lower().replace(" ", "_")
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}  # e.g. Allow
    return ApiError(exc.code or 500, code, exc.description or exc.name, headers).response()


def is_api_path(path: str, prefix: str = "") -> bool:
    return any(path == prefix + root or path.startswith(prefix + root + "/")
               for root in API_ROOTS)


def create_blueprint(config: dict[str, Any]) -> Blueprint:
    """wsrelay's routes for one app, under ``WSRELAY_URL_PREFIX``."""
    bp = Blueprint("wsrelay", __name__, static_folder="../static", static_url_path=STATIC_URL,
                   template_folder="../templates", url_prefix=config["WSRELAY_URL_PREFIX"])
    bp.before_request(checks.check_host_here)  # before anything else, on every route
    bp.before_request(yield_to_the_host)
    bp.register_error_handler(ApiError, ApiError.response)
    bp.register_error_handler(HTTPException, http_error_response)
    for name in CLIENT_FILES:
        bp.add_url_rule(f"/static/{name}", endpoint=name.replace(".", "_"),
                        view_func=pages.client_file,
                        defaults={"filename": name})
    if config["WSRELAY_DEMO_PAGE"]:
        bp.add_url_rule("/", view_func=pages.index)
    bp.add_url_rule("/healthz", view_func=pages.healthz)
    bp.add_url_rule("/client.json", view_func=pages.client_settings)
    bp.add_url_rule("/readyz", view_func=pages.readyz)
    bp.add_url_rule("/metrics", view_func=admin.metrics)
    bp.add_url_rule("/dashboard", view_func=admin.dashboard)
    bp.add_url_rule("/dashboard/stats", view_func=admin.dashboard_stats)
    bp.add_url_rule("/ws/<path:channel>", view_func=websocket.upgrade, websocket=True)
    bp.add_url_rule("/ws", endpoint="ws_json", view_func=websocket.upgrade, websocket=True)
    bp.add_url_rule(
        "/ws", endpoint="ws_json_plain", view_func=websocket.not_upgraded,
        methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
    )
    bp.add_url_rule(
        "/ws/<path:channel>", endpoint="ws_plain", view_func=websocket.not_upgraded,
        methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
    )
    bp.add_url_rule("/poll/<path:channel>", view_func=poll.poll)
    bp.add_url_rule("/sse/<path:channel>", view_func=sse.sse)
    bp.add_url_rule("/publish/<path:channel>", view_func=publish.publish, methods=["POST"])
    allowed = config["WSRELAY_ALLOWED_ORIGINS"]
    if allowed:  # the pages of the allowed foreign origins may read the HTTP transports
        CORS(bp, resources={r".*/(poll|sse|publish)/.*|.*/client\.json": {
            "origins": "*" if "*" in allowed else list(allowed),
            "allow_headers": ["Authorization", "Content-Type", "Last-Event-ID"],
            "max_age": 600,
        }})
    return bp


def yield_to_the_host() -> Any:
    """A route of the host application at one of wsrelay's paths is the host's: werkzeug
    picks the rule registered first, so when that was wsrelay's, serve the host's view."""
    rule = request.url_rule
    if rule is None:
        return None
    view = host_routes(current_app).get((rule.rule, request.method))
    if view is None:
        return None
    return current_app.ensure_sync(view)(**(request.view_args or {}))


def host_routes(app: Flask) -> dict[tuple[str, str], Any]:
    """The host's views whose rule is also one of wsrelay's, by (rule, method); read once
    (an app takes no route after its first request)."""
    state = app.extensions["wsrelay"]
    if state.host_routes is None:
        ours: set[str] = set()
        theirs: dict[tuple[str, str], Any] = {}
        rules = list(app.url_map.iter_rules())
        for rule in rules:
            if rule.endpoint.startswith("wsrelay."):
                ours.add(rule.rule)
        for rule in rules:
            if not rule.endpoint.startswith("wsrelay.") and rule.rule in ours:
                for method in rule.methods or ():
                    theirs.setdefault((rule.rule, method), app.view_functions[rule.endpoint])
        state.host_routes = theirs
    return state.host_routes


def routing_errors_in_json(prefix: str) -> Any:
    """An app-wide ``before_request``: an unknown path or a wrong method under wsrelay's
    roots is answered in JSON; the host's own 404 and 405 stay the host's."""

    def check() -> Response | None:
        exc = request.routing_exception
        if isinstance(exc, NotFound | MethodNotAllowed) and is_api_path(request.path, prefix):
            return http_error_response(exc)
        return None

    return check
