"""gunicorn integration: the worker class and the start-up checks of ``gunicorn.conf.py``.

The several-workers check reads the app's own settings (its ``app.config``, where a
host app may name its broker), so every worker makes it once it has loaded the app:
RelayWorker (``-k wsrelay.gunicorn_worker.RelayWorker``, with or without the config
file) and, through the config file's ``post_worker_init``, any other worker class.
"""

from __future__ import annotations

import signal
import time
import weakref
from collections.abc import Mapping
from types import FrameType
from typing import Any

import gevent
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from geventwebsocket.handler import WebSocketHandler
from gunicorn.arbiter import Arbiter
from gunicorn.workers.ggevent import PyWSGIServer

from .config import load
from .relay import AppRelay
from .server.handler import RelayHandler
from .server.process import settle


class RelayServer(PyWSGIServer):
    """gunicorn's pywsgi server, known to its worker process, so that a stopping worker can
    stop accepting at once and tell when its last connection has ended."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _servers.add(self)


_servers: weakref.WeakSet[RelayServer] = weakref.WeakSet()


class RelayWorker(GeventWebSocketWorker):
    """gevent-websocket's worker with the handler that lets wsrelay refuse before the 101,
    and a graceful exit that sends clients away instead of waiting for them."""

    wsgi_handler = RelayHandler
    server_class = RelayServer

    def load_wsgi(self) -> None:
        """Load the app, then refuse to serve it if it would be one of several workers on
        the in-memory broker: gunicorn stops (a worker that fails to boot halts it)."""
        super().load_wsgi()
        check_loaded_app(self)
        settle()  # the app is loaded: out of the collector's sight (wsrelay.server.process)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """SIGTERM (a stop, or the old workers of a graceful reload): drain, then exit."""
        super().handle_exit(sig, frame)
        drain_after_exit(self)


def check_loaded_app(worker: Any) -> None:
    """In a worker that has loaded its app: refuse to serve it if its relay would be one
    of several workers on the in-memory broker, by its app's own settings."""
    for relay in relays_of(getattr(worker, "wsgi", None)):
        problem = workers_problem(worker.cfg.workers, relay.app.config)
        if problem:
            worker.log.error("%s", problem)
            _fail_to_boot(worker)


def _fail_to_boot(worker: Any) -> None:
    """Exit so that gunicorn halts. The first worker exits at once; the others (which
    load the same settings, so the first fails too, maybe later) wait until the halting
    arbiter stops them, since a second boot failure that reaches it while it halts is a
    traceback of gunicorn's."""
    if worker.age > 1:
        while worker.alive:
            gevent.sleep(0.05)
        raise SystemExit(0)
    raise SystemExit(Arbiter.WORKER_BOOT_ERROR)


def drain_after_exit(worker: GeventWebSocketWorker) -> None:
    """Drain every relay of the worker within its graceful timeout (less a margin for the
    worker's own shutdown), from a greenlet: a signal handler must not block. Once only:
    a stop signals the worker and the arbiter passes it on."""
    if getattr(worker, "wsrelay_draining", False):
        return
    worker.wsrelay_draining = True
    gevent.spawn(_drain_then_exit, relays_of(getattr(worker, "wsgi", None)),
                 max(0.5, min(worker.cfg.graceful_timeout - 1, 30)))


def relays_of(application: Any) -> list[AppRelay]:
    """The wsrelay of the worker's app: a Flask app's ``extensions["wsrelay"]``, found also
    under WSGI middleware that keeps the app it wraps as ``.app`` (werkzeug's do)."""
    for _ in range(10):
        extensions = getattr(application, "extensions", None)
        if isinstance(extensions, dict) and isinstance(extensions.get("wsrelay"), AppRelay):
            return [extensions["wsrelay"]]
        application = getattr(application, "app", None)
        if application is None:
            break
    return []


def _connections() -> int:
    return sum(len(server.pool) for server in _servers if server.pool is not None)


def _drain_then_exit(relays: list[AppRelay], timeout: float) -> None:
    """Stop accepting, send every client away, and end the worker once its last connection
    has ended.

    gunicorn looks at its connections once a second and exits when none is
    left; the worker leaves between two looks instead, by the ``SystemExit``
    gunicorn's own worker raises when it finds its parent gone. With
    connections left at the deadline gunicorn's own graceful timeout decides.
    """
    deadline = time.monotonic() + timeout
    for server in list(_servers):
        server.close()
    gevent.joinall([gevent.spawn(relay.shutdown, timeout) for relay in relays])
    while _connections() and time.monotonic() < deadline:
        gevent.sleep(0.02)
    main = gevent.get_hub().parent  # the main greenlet: gunicorn's loop
    if not _connections() and main is not None:
        gevent.kill(main, SystemExit)


def adopt_stock_worker(worker: Any) -> None:
    """Give another worker class (chosen with ``-k``) RelayWorker's check of its loaded
    app, and a stock ``GeventWebSocketWorker`` what else RelayWorker has: wsrelay's
    handler and server, and the drain on SIGTERM."""
    if isinstance(worker, RelayWorker):
        return
    check_loaded_app(worker)
    settle()
    if not isinstance(worker, GeventWebSocketWorker):
        return
    if worker.wsgi_handler is WebSocketHandler:
        worker.wsgi_handler = RelayHandler
    if worker.server_class is PyWSGIServer:
        worker.server_class = RelayServer

    def handle_exit(sig: int, frame: FrameType | None) -> None:
        worker.handle_exit(sig, frame)
        drain_after_exit(worker)

    signal.signal(signal.SIGTERM, handle_exit)


def workers_problem(workers: int, config: Mapping[str, Any]) -> str | None:
    """Why ``workers`` workers cannot serve with these options, or None: on the in-memory
    broker a broadcast would miss the other workers' clients."""
    broker = config["WSRELAY_BROKER_URL"]
    if workers > 1 and broker.startswith("memory:") and config["WSRELAY_WORKERS_CHECK"]:
        return (
            f"wsrelay: {workers} workers on the in-memory broker would each hold their own "
            "clients, and a message would reach only one worker's subscribers. Run one "
            "worker (-w 1), or share a Redis: WSRELAY_BROKER_URL=redis://localhost:6379/0"
        )
    return None


def check_workers(workers: int, config: Mapping[str, Any] | None = None) -> None:
    """Refuse several workers on the in-memory broker (:func:`workers_problem`).
    ``config``: the options (:func:`wsrelay.config.load` of the environment and file)."""
    problem = workers_problem(workers, load() if config is None else config)
    if problem:
        raise SystemExit(problem)
