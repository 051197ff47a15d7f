"""Every error code wsrelay answers, in one table: HTTP status, retryable or not, meaning.

The same name serves HTTP (``{"error": code}``) and ``wsrelay.v1`` (``{"type": "error",
"code": code}``). ``retryable`` says whether the same request may succeed later without
the client changing anything (the broker came back, a rate window passed, a worker
stopped draining); the browser client retries those with its reconnect backoff and drops
the others. ``GET /client.json`` serves the retryable set to it; a test checks that every
code the server raises is here and that the docs' table says the same.
"""

from __future__ import annotations

from typing import NamedTuple


class ErrorCode(NamedTuple):
    #: The HTTP status; None for a code only ``wsrelay.v1`` sends (a malformed frame).
    status: int | None
    retryable: bool
    meaning: str


CODES: dict[str, ErrorCode] = {
    # the request itself: retrying it unchanged cannot help
    "bad_request": ErrorCode(400, False, "a request head whose framing is ambiguous"),
    "bad_handshake": ErrorCode(400, False, "a WebSocket handshake that is not valid"),
    "channel_required": ErrorCode(400, False, "raw mode needs /ws/<channel>"),
    "invalid_channel": ErrorCode(400, False, "not 1-128 characters of [A-Za-z0-9_.:-]"),
    "invalid_host": ErrorCode(400, False, "a Host the relay does not answer to"),
    "invalid_since": ErrorCode(400, False, "since is not a message id"),
    "invalid_timeout": ErrorCode(400, False, "timeout is not 0-60 seconds"),
    "invalid_samples": ErrorCode(400, False, "samples is not a number from 0 to 300"),
    "invalid_utf8": ErrorCode(400, False, "a text message that is not UTF-8"),
    "invalid_json": ErrorCode(None, False, "a wsrelay.v1 frame that is not one JSON object"),
    "invalid_request": ErrorCode(None, False, "JSON that is not a flat wsrelay.v1 request"),
    "unknown_type": ErrorCode(None, False, "a wsrelay.v1 request type that does not exist"),
    "invalid_ack": ErrorCode(None, False, "ack is not an integer from 0 to 2^53-1"),
    "invalid_data": ErrorCode(None, False, "data is not a string, or not valid base64"),
    "invalid_encoding": ErrorCode(None, False, "encoding is neither absent nor base64"),
    "request_entity_too_large": ErrorCode(
        413, False, "a message over WSRELAY_MAX_MESSAGE_SIZE (the connection stays open)"),
    "internal_server_error": ErrorCode(500, False, "the server failed (its log has why)"),
    "method_not_allowed": ErrorCode(405, False, "a method the endpoint does not take"),
    "not_found": ErrorCode(404, False, "no such API route"),
    "upgrade_required": ErrorCode(426, False, "a plain request on a WebSocket endpoint"),
    "unsupported_version": ErrorCode(426, False, "a WebSocket version other than 13"),
    "websocket_unsupported": ErrorCode(501, False, "a server that cannot upgrade"),
    "headers_too_large": ErrorCode(431, False, "request headers over 64 KiB or 100 lines"),
    "request_timeout": ErrorCode(408, False, "a request head that came too slowly"),
    # who is asking: a new token or another page is needed
    "token_required": ErrorCode(401, False, "the channel needs a token"),
    "invalid_token": ErrorCode(401, False, "a token this server did not sign"),
    "token_expired": ErrorCode(401, False, "the token has expired"),
    "forbidden": ErrorCode(403, False, "the token does not grant this channel or action"),
    "refused": ErrorCode(403, False, "refused by the application's connect hook"),
    "origin_not_allowed": ErrorCode(403, False, "a page of an origin not allowed"),
    "origin_required": ErrorCode(403, False, "no Origin under WSRELAY_REQUIRE_ORIGIN"),
    "too_many_subscriptions": ErrorCode(
        429, False, "over WSRELAY_MAX_SUBSCRIPTIONS channels on one connection"),
    # the server, now: the same request succeeds later
    "rate_limited": ErrorCode(429, True, "publishing faster than the rate limit"),
    "connect_rate_limited": ErrorCode(429, True, "connecting faster than the per-IP rate"),
    "too_many_connections": ErrorCode(429, True, "over the per-IP connection limit"),
    "too_many_streams": ErrorCode(503, True, "the worker holds all the streams it may"),
    "broker_unavailable": ErrorCode(503, True, "the message broker cannot be reached"),
    "shutting_down": ErrorCode(503, True, "this worker is stopping: connect to another"),
}


def retryable_codes() -> list[str]:
    """The codes worth retrying unchanged, sorted (what ``/client.json`` serves)."""
    return sorted(code for code, entry in CODES.items() if entry.retryable)
