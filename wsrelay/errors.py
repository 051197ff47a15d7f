"""wsrelay's exceptions: one tree under :class:`WsrelayError`, so a caller can catch them all.

Each also keeps the builtin base its users caught before the tree existed
(``ValueError`` for a bad channel, ``RuntimeError`` for an unreachable broker).
"""

from __future__ import annotations

from flask import Response, jsonify


class WsrelayError(Exception):
    """The root of every exception wsrelay raises on purpose."""


class ConfigError(WsrelayError, ValueError):
    """An option with a value wsrelay cannot run with; the message names the option."""


class InvalidChannel(WsrelayError, ValueError):
    """A channel name outside the contract (1-128 characters of [A-Za-z0-9_.:-])."""


class MessageTooLarge(WsrelayError, ValueError):
    """A message above ``WSRELAY_MAX_MESSAGE_SIZE``."""


class BrokerUnavailable(WsrelayError, RuntimeError):
    """The broker (Redis) cannot be reached: nothing was accepted; retry later (answered
    503 / 1013). The one class the brokers raise (``wsrelay.broker.BrokerUnavailable``)."""


class Refuse(WsrelayError):
    """Raised by a connect or publish hook to refuse a client or its message; the message
    is sent back (a 403 ``refused``, an error envelope, a close frame 1008)."""


class InvalidIdentity(WsrelayError, TypeError):
    """An identity (what the identity hook returned, or was given to ``disconnect``) that is
    not a JSON value, so it could not be compared across processes."""


class NoRelay(WsrelayError, RuntimeError):
    """:func:`wsrelay.publish` found no relay to publish with (see its message)."""


class ApiError(WsrelayError):
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
        """The contract's JSON answer: ``{"error": code, "message": ...}`` with the status."""
        response = jsonify(error=self.code, message=self.message)
        response.status_code = self.status
        response.headers.update(self.headers)
        return response
