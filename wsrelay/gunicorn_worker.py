"""gunicorn integration: the worker class and the start-up checks of ``gunicorn.conf.py``."""

from __future__ import annotations

from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from geventwebsocket.handler import WebSocketHandler

from .config import DEFAULTS, from_environ
from .handler import RelayHandler


class RelayWorker(GeventWebSocketWorker):
    """gevent-websocket's worker with the handler that lets wsrelay refuse before the 101."""

    wsgi_handler = RelayHandler


def use_relay_handler(worker: object) -> None:
    """Give a stock ``GeventWebSocketWorker`` (chosen with ``-k``) wsrelay's handler."""
    if isinstance(worker, GeventWebSocketWorker) and worker.wsgi_handler is WebSocketHandler:
        worker.wsgi_handler = RelayHandler


def check_workers(workers: int) -> None:
    """Refuse several workers on the in-memory broker: a broadcast would miss the others."""
    config = {**DEFAULTS, **from_environ()}
    broker = config["WSRELAY_BROKER_URL"]
    if workers > 1 and broker.startswith("memory:") and config["WSRELAY_WORKERS_CHECK"]:
        raise SystemExit(
            f"wsrelay: {workers} workers on the in-memory broker would each hold their own "
            "clients, and a message would reach only one worker's subscribers. Run one "
            "worker (-w 1), or share a Redis: WSRELAY_BROKER_URL=redis://localhost:6379/0"
        )
