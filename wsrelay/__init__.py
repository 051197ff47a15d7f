"""wsrelay: a real-time message relay for Flask on gevent-websocket."""

from .app import create_app
from .auth import Refuse
from .hub import MessageServer
from .relay import Relay, current_relay, publish

__all__ = ["MessageServer", "Refuse", "Relay", "create_app", "current_relay", "publish"]
__version__ = "0.1.0"
