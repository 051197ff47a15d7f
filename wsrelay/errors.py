"""Errors as the contract shapes them: JSON ``{"error", "message"}`` with the right status."""

from __future__ import annotations

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException


class ApiError(Exception):
    """An error answered to an HTTP client (or as a close frame after an early upgrade)."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def response(self) -> Response:
        response = jsonify(error=self.code, message=self.message)
        response.status_code = self.status
        response.headers.update(self.headers)
        return response


_API_ROOTS = ("/ws", "/client.json", "/poll", "/sse", "/publish", "/healthz", "/readyz", "/static",
              "/metrics", "/dashboard")


def _is_api_path(path: str) -> bool:
    return any(path == root or path.startswith(root + "/") for root in _API_ROOTS)


def _http_error(exc: HTTPException) -> Response | HTTPException:
    if exc.code == 404 and not _is_api_path(request.path):
        return exc
    code = (exc.name or "error").lower().replace(" ", "_")
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}  # e.g. Allow
    return ApiError(exc.code or 500, code, exc.description or exc.name, headers).response()


def register_error_handlers(app: Flask) -> None:
    """Answer API errors as JSON; leave HTML pages of the host application alone."""
    app.register_error_handler(ApiError, lambda exc: exc.response())
    app.register_error_handler(HTTPException, _http_error)
