"""gunicorn settings for wsrelay: ``gunicorn -c gunicorn.conf.py`` serves the app.

Command-line flags (-b, -w, -k) and GUNICORN_CMD_ARGS override these.
"""

import os

from wsrelay.gunicorn_worker import adopt_stock_worker, check_workers

wsgi_app = "wsrelay.app:create_app()"
worker_class = "wsrelay.gunicorn_worker.RelayWorker"
bind = [os.environ.get("WSRELAY_BIND", "127.0.0.1:8000")]
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
# Each WebSocket, SSE stream and held long-poll is one greenlet of the pool.
worker_connections = int(os.environ.get("WSRELAY_WORKER_CONNECTIONS", "10000"))
# Long-lived connections are normal here; the worker heartbeat is not blocked by them.
timeout = 30
graceful_timeout = 10
keepalive = 5


def on_starting(server):
    check_workers(server.cfg.workers)


def post_worker_init(worker):
    adopt_stock_worker(worker)
