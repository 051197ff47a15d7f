"""Log set-up: plain lines by default, one JSON object per line with WSRELAY_LOG_FORMAT=json.

Connection logs carry their numbers as ``extra`` fields, so the JSON form
has them as keys and the plain form reads as a sentence. Neither ever holds
a message payload or a token: only names, counts, codes and reasons.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Set once wsrelay's logger has its handler.
_configured = False


def configure(form: str = "plain", level: int = logging.INFO) -> None:
    """Send wsrelay's logs to stderr in ``form`` ("plain" or "json"), once per process."""
    global _configured
    if _configured:
        return
    logger = logging.getLogger("wsrelay")
    handler = logging.StreamHandler(sys.stderr)
    if form == "json":
        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        ))
    else:
        handler.setFormatter(logging.Formatter(PLAIN))
    logger.addHandler(handler)
    logger.setLevel(level)
    _configured = True
