"""The app factory."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from flask import Flask

from .relay import Relay
from .transports.websocket import app_protocol


def _templates() -> str:
    """The pages: ``templates/`` beside the package in a checkout (or an editable install),
    else where a regular install put them (``<prefix>/share/wsrelay/templates``)."""
    checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "templates")
    if os.path.isdir(checkout):
        return checkout
    return os.path.join(sys.prefix, "share", "wsrelay", "templates")


TEMPLATES = _templates()


class RelayApp(Flask):
    """A Flask app with the hook gevent-websocket's stock handler asks for the subprotocol
    before its early upgrade (see :func:`~wsrelay.transports.websocket.app_protocol`)."""

    app_protocol = staticmethod(app_protocol)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """A Flask app serving the relay; ``config`` overrides ``WSRELAY_*`` from the environment."""
    app = RelayApp("wsrelay", template_folder=TEMPLATES)
    app.config.from_mapping(config or {})
    Relay(app)
    return app
