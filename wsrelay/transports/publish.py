"""``POST /publish/<channel>``: publish the request body."""

from __future__ import annotations

from flask import Response, current_app, jsonify, request

from ..auth import PUBLISH
from ..broker import BrokerUnavailable
from ..errors import ApiError
from .checks import admit, check_publish_rate, here, relay


def publish(channel: str) -> Response:
    """``application/octet-stream`` is binary; any other body must be UTF-8 text."""
    client = here()
    access = admit(client, channel, PUBLISH)
    name = access.channel
    check_publish_rate(client, access.claims)
    limit = current_app.config["WSRELAY_MAX_MESSAGE_SIZE"]
    # A declared length over the limit is refused before reading; a chunked body is read
    # one byte past the limit, since Werkzeug stops there silently instead of refusing.
    request.max_content_length = limit + 1
    data = request.get_data(cache=False)
    if len(data) > limit:
        raise ApiError(413, "request_entity_too_large", f"a message is at most {limit} bytes")
    binary = request.mimetype == "application/octet-stream"
    if not binary:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(
                400, "invalid_utf8",
                "a text message must be UTF-8; send binary as application/octet-stream",
            ) from None
    try:  # the publish hooks have their say, and the identity is stamped as the sender
        message = relay().publish_from_client(name, data, binary=binary, transport="http",
                                              identity=client.identity)
    except BrokerUnavailable as exc:
        raise ApiError(503, "broker_unavailable", str(exc)) from None
    return jsonify(id=str(message.id))
