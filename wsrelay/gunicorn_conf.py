"""gunicorn settings for wsrelay: ``gunicorn -c python:wsrelay.gunicorn_conf`` serves the app
(``gunicorn.conf.py`` of a checkout imports these). Command-line flags (-b, -w, -k) and
GUNICORN_CMD_ARGS override them.
"""

import os
import shutil
import tempfile

# Metrics: each worker writes its own to files in this directory and /metrics adds them up
# (prometheus-client's multiprocess mode). It must be set before anything imports
# prometheus_client, so before wsrelay; without one of yours, a fresh one for this run.
_own_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="wsrelay-metrics-")

from prometheus_client.multiprocess import mark_process_dead  # noqa: E402

from wsrelay.config import ConfigError, load, redact_url  # noqa: E402
from wsrelay.gunicorn_worker import adopt_stock_worker, check_workers, relays_of  # noqa: E402
from wsrelay.ops.metrics import reset_multiprocess_dir  # noqa: E402

try:
    _settings = load()
except ConfigError as exc:
    raise SystemExit(f"wsrelay: {exc}") from None

wsgi_app = "wsrelay.app:create_app()"
worker_class = "wsrelay.gunicorn_worker.RelayWorker"
bind = [_settings["WSRELAY_BIND"]]
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
# Each request in progress, SSE stream and held long-poll is one greenlet of the pool (an open
# WebSocket is not: it waits in a libev watcher once its handshake is done).
worker_connections = _settings["WSRELAY_WORKER_CONNECTIONS"]
# Long-lived connections are normal here; the worker heartbeat is not blocked by them.
timeout = 30
graceful_timeout = 10
keepalive = 5


def known_settings(server):
    """The served app's settings where they are known before a worker loads it: a preloaded
    app's own, or wsrelay's own app's (the environment and the config file). None for a
    host app (its ``app.config`` may name its broker): each worker checks it once loaded."""
    if server.cfg.preload_app:
        relays = relays_of(server.app.wsgi())
        return relays[0].app.config if relays else None
    if getattr(server.app, "app_uri", None) == wsgi_app:
        return _settings
    return None


def on_starting(server):
    settings = known_settings(server)
    workers = server.cfg.workers
    try:
        if settings is not None:
            check_workers(workers, settings)
    except SystemExit:
        on_exit(server)  # gunicorn will not call it: it never started
        raise
    reset_multiprocess_dir()
    if settings is None:
        server.log.info("wsrelay: %d worker(s), each checks its app's broker once loaded",
                        workers)
    else:
        server.log.info("wsrelay: broker %s, %d worker(s)",
                        redact_url(settings["WSRELAY_BROKER_URL"]), workers)


def child_exit(server, worker):
    """A worker is gone: its connections no longer count (its totals still do)."""
    mark_process_dead(worker.pid)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def post_worker_init(worker):
    adopt_stock_worker(worker)
