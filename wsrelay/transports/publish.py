"""``POST /publish/<channel>``: publish the request body."""

from __future__ import annotations

from flask import Response, current_app, jsonify, request

from ..broker import BrokerUnavailable
from ..errors import ApiError
from .common import admit, relay


def publish(channel: str) -> Response:
    """``application/octet-stream`` is binary; any other body must be UTF-8 text."""
    name = admit(channel)
    request.max_content_length = current_app.config["WSRELAY_MAX_MESSAGE_SIZE"]
    data = request.get_data(cache=False)  # raises 413 above the limit
    binary = request.mimetype == "application/octet-stream"
    if not binary:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(
                400, "invalid_utf8",
                "a text message must be UTF-8; send binary as application/octet-stream",
            ) from None
    try:
        message = relay().hub.publish(name, data, binary=binary)
    except BrokerUnavailable as exc:
        raise ApiError(503, "broker_unavailable", str(exc)) from None
    return jsonify(id=str(message.id))
