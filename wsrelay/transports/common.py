"""Argument checks shared by every transport, answered as :class:`ApiError`."""

from __future__ import annotations

from flask import current_app, request

from ..channels import InvalidChannel, check_channel
from ..errors import ApiError
from ..ids import InvalidMessageId, MessageId
from ..origins import origin_allowed


def relay():
    """The :class:`~wsrelay.relay.Relay` of the current app."""
    return current_app.extensions["wsrelay"]


def checked_channel(name: str) -> str:
    try:
        return check_channel(name)
    except InvalidChannel as exc:
        raise ApiError(400, "invalid_channel", str(exc)) from None


def checked_since(text: str | None) -> MessageId | None:
    """``since`` from the query (or ``Last-Event-ID``); absent or empty means none."""
    if not text:
        return None
    try:
        return MessageId.parse(text)
    except InvalidMessageId as exc:
        raise ApiError(400, "invalid_since", str(exc)) from None


def check_origin() -> None:
    """Refuse a browser request from an origin that is neither ours nor allowed."""
    origin = request.headers.get("Origin")
    allowed = current_app.config["WSRELAY_ALLOWED_ORIGINS"]
    if not origin_allowed(origin, request.host, allowed):
        raise ApiError(403, "origin_not_allowed", f"origin {origin[:200]!r} is not allowed")


def admit(channel: str) -> str:
    """The checks every request to a channel passes first."""
    name = checked_channel(channel)
    check_origin()
    return name
