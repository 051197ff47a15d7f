"""gunicorn integration: the worker class and the start-up checks of ``gunicorn.conf.py``."""

from __future__ import annotations

import signal

import gevent
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from geventwebsocket.handler import WebSocketHandler

from .config import DEFAULTS, from_environ
from .handler import RelayHandler
from .relay import shutdown_all


class RelayWorker(GeventWebSocketWorker):
    """gevent-websocket's worker with the handler that lets wsrelay refuse before the 101,
    and a graceful exit that sends clients away instead of waiting for them."""

    wsgi_handler = RelayHandler

    def handle_exit(self, sig, frame) -> None:
        """SIGTERM (a stop, or the old workers of a graceful reload): drain, then exit."""
        super().handle_exit(sig, frame)
        drain_after_exit(self)


def drain_after_exit(worker: GeventWebSocketWorker) -> None:
    """Drain every relay of the worker within its graceful timeout (less a margin for the
    worker's own shutdown), from a greenlet: a signal handler must not block."""
    gevent.spawn(shutdown_all, max(0.5, min(worker.cfg.graceful_timeout - 1, 30)))


def adopt_stock_worker(worker: object) -> None:
    """Give a stock ``GeventWebSocketWorker`` (chosen with ``-k``) what RelayWorker has:
    wsrelay's handler, and the drain on SIGTERM."""
    if not isinstance(worker, GeventWebSocketWorker) or isinstance(worker, RelayWorker):
        return
    if worker.wsgi_handler is WebSocketHandler:
        worker.wsgi_handler = RelayHandler

    def handle_exit(sig, frame) -> None:
        worker.handle_exit(sig, frame)
        drain_after_exit(worker)

    signal.signal(signal.SIGTERM, handle_exit)


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
