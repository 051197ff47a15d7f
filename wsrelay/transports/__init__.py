"""The HTTP face of wsrelay: one blueprint, every route of the public contract."""

from __future__ import annotations

from flask import Blueprint

from . import admin, checks, pages, poll, publish, sse, websocket


def create_blueprint() -> Blueprint:
    bp = Blueprint("wsrelay", __name__)
    bp.before_request(checks.check_host)  # before anything else, on every route
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
    return bp
