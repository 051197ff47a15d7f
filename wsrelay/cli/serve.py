"""``python manage.py serve``: the relay on gevent's WSGI server, with the demo's ticker."""

from __future__ import annotations

import logging
import os
import signal
import sys

import click
import gevent
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer

from ..app import create_app
from ..config import ConfigError, redact_url
from ..server.handler import ACCESS_LOGGER, RelayHandler
from ..server.open_files import ACCEPT_BACKLOG, connection_capacity, raise_open_files_limit
from ..server.process import GEN0_THRESHOLD, settle
from .ticker import ticker as demo_ticker


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=5000, show_default=True, type=int, help="0 picks a free port")
@click.option("--access-log/--no-access-log", default=True, show_default=True)
@click.option("--ticker/--no-ticker", default=True, show_default=True,
              help="publish 1, 2, 3... to channel 'ticker' every 2 s (the demo's server push)")
def serve(host: str, port: int, access_log: bool, ticker: bool) -> None:
    """Serve the relay on gevent (in-memory broker unless WSRELAY_BROKER_URL says otherwise)."""
    try:
        app = create_app()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    files = raise_open_files_limit()
    frozen = settle()  # the app is built: what it holds is out of the collector's sight
    server = WSGIServer(  # a pool (unbounded), so that stop() waits for the requests
        (host, port), app, handler_class=RelayHandler,
        log=logging.getLogger(ACCESS_LOGGER) if access_log else None,
        spawn=Pool(), backlog=ACCEPT_BACKLOG,
    )
    try:
        server.start()
    except OSError as exc:  # the address is taken, or not this machine's
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {os.strerror(exc.errno) if exc.errno else exc}"
        ) from None
    if ticker:
        app.extensions["wsrelay"].start_background_task(demo_ticker)
    broker = redact_url(app.config["WSRELAY_BROKER_URL"])
    click.echo(f"wsrelay serving on http://{server.server_host}:{server.server_port}/ "
               f"(broker {broker}, 1 worker)", err=False)
    click.echo(f"open files limit {files}: room for about {connection_capacity(files)} "
               "connections", err=False)
    click.echo(f"garbage collector: {frozen} start-up objects frozen, the youngest "
               f"generation collected every {GEN0_THRESHOLD} allocations", err=False)
    sys.stdout.flush()

    def stop() -> None:
        """Graceful: stop accepting, send clients away with what is queued, let the last
        answers out (at most a second more), then exit."""
        server.close()
        app.extensions["wsrelay"].shutdown()
        server.stop(timeout=1)

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, gevent.spawn, stop)
    server.serve_forever()
