"""``python manage.py ...``: serve, publish."""

from __future__ import annotations

import json
import signal
import sys
import urllib.error
import urllib.request

import click
import gevent
from gevent.pywsgi import WSGIServer

from .app import create_app
from .handler import RelayHandler


@click.group()
def cli() -> None:
    """wsrelay: a real-time message relay for Flask on gevent-websocket."""


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=5000, show_default=True, type=int, help="0 picks a free port")
@click.option("--access-log/--no-access-log", default=True, show_default=True)
def serve(host: str, port: int, access_log: bool) -> None:
    """Serve the relay on gevent (in-memory broker unless WSRELAY_BROKER_URL says otherwise)."""
    app = create_app()
    server = WSGIServer(
        (host, port), app, handler_class=RelayHandler, log="default" if access_log else None
    )
    server.start()
    bound_host, bound_port = server.address[:2]
    click.echo(f"wsrelay serving on http://{bound_host}:{bound_port}/", err=False)
    sys.stdout.flush()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, server.stop)
    server.serve_forever()
    app.extensions["wsrelay"].close()


@cli.command()
@click.argument("channel")
@click.argument("message")
@click.option("--url", default="http://127.0.0.1:5000", show_default=True,
              help="the running server, used when the broker is in-memory")
def publish(channel: str, message: str, url: str) -> None:
    """Publish MESSAGE (text) to CHANNEL and print its id.

    With a shared broker (Redis) the message goes straight into it; with the
    in-memory broker it is posted to the running server at --url.
    """
    app = create_app()
    relay = app.extensions["wsrelay"]
    if relay.hub.broker.shared:
        click.echo(relay.publish(channel, message).id)
        relay.close()
        return
    relay.close()
    request = urllib.request.Request(
        f"{url.rstrip('/')}/publish/{channel}", data=message.encode("utf-8"),
        headers={"Content-Type": "text/plain; charset=utf-8"}, method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            click.echo(json.load(response)["id"])
    except urllib.error.HTTPError as exc:
        raise click.ClickException(json.load(exc).get("message", str(exc))) from None
    except urllib.error.URLError as exc:
        raise click.ClickException(f"cannot reach {url}: {exc.reason}") from None
