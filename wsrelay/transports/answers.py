"""The direct path's answers as (status, headers, body), as Flask would have made them.

One place for what a refused or failed request and a long-poll are answered
with, however they were served: in a greenlet, in the event loop, or by a
connection's lane (:mod:`wsrelay.transports.poll_lane`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from werkzeug.exceptions import InternalServerError
from werkzeug.http import HTTP_STATUS_CODES

from ..errors import ApiError
from .poll import HEADERS

log = logging.getLogger("wsrelay.transports.direct")

Parts = tuple[str, Sequence[tuple[str, str]], bytes]


def status_line(code: int) -> str:
    """The status as werkzeug writes it (``403 FORBIDDEN``)."""
    return f"{code} {HTTP_STATUS_CODES.get(code, 'UNKNOWN').upper()}"


def error_parts(exc: ApiError) -> Parts:
    """What the blueprint's error handler answers for ``exc`` (Flask's ``jsonify``, compact
    outside debug mode): status, headers, body."""
    body = (json.dumps({"error": exc.code, "message": exc.message}, separators=(",", ":"),
                       sort_keys=True) + "\n").encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
               *exc.headers.items()]
    return status_line(exc.status), headers, body


def poll_parts(body: bytes) -> Parts:
    """A poll's answer; its headers a tuple: its response is made once per body
    (:func:`~wsrelay.server.front.response_bytes`)."""
    return "200 OK", (*HEADERS, ("Content-Length", str(len(body)))), body


def failure() -> Parts:
    """An unexpected error, logged and answered as Flask's error handler would."""
    log.exception("the direct path failed")
    error = InternalServerError()
    return error_parts(ApiError(500, "internal_server_error", error.description or ""))
