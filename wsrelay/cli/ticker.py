"""Server push from a background greenlet: the demo's ticker.

``manage.py serve`` runs it for the demo page's ticker panel. It uses only the
public API, so it doubles as the example of publishing from a greenlet.
"""

from __future__ import annotations

import itertools
import logging

import gevent

import wsrelay

log = logging.getLogger(__name__)


def ticker(channel: str = "ticker", interval: float = 2.0) -> None:
    """Publish 1, 2, 3... to ``channel`` every ``interval`` seconds, forever.

    A failed publish (the broker is down) is logged and the count goes on:
    the next tick is the retry.
    """
    for n in itertools.count(1):
        try:
            wsrelay.publish(channel, str(n))
        except Exception as exc:
            log.warning("ticker: publish failed: %s", exc)
        gevent.sleep(interval)
