"""wsrelay: a real-time message relay for Flask on gevent-websocket.

The names below are imported on first use (a module ``__getattr__``), so that
``import wsrelay`` imports nothing else: ``python -m wsrelay`` and the
``wsrelay`` command patch gevent in before anything imports ssl or socket.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .errors import (
        BrokerUnavailable,
        ConfigError,
        InvalidChannel,
        InvalidIdentity,
        MessageTooLarge,
        NoRelay,
        Refuse,
        WsrelayError,
    )
    from .hub import MessageServer
    from .relay import AppRelay, Relay, current_relay, publish
    from .transports.checks import Publication

#: Each public name, and the module it comes from.
_EXPORTS = {
    "create_app": "app",
    "Relay": "relay", "AppRelay": "relay", "current_relay": "relay", "publish": "relay",
    "Publication": "transports.checks",
    "MessageServer": "hub",
    "WsrelayError": "errors", "BrokerUnavailable": "errors", "ConfigError": "errors",
    "InvalidChannel": "errors", "MessageTooLarge": "errors", "NoRelay": "errors",
    "Refuse": "errors", "InvalidIdentity": "errors",
}

__all__ = [
    "AppRelay", "BrokerUnavailable", "ConfigError", "InvalidChannel", "InvalidIdentity",
    "MessageServer",
    "MessageTooLarge", "NoRelay", "Publication", "Refuse", "Relay", "WsrelayError",
    "create_app", "current_relay", "publish",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'wsrelay' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
