"""``python manage.py ...``: serve, publish, token, stats, bench."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import urllib.error
import urllib.request

import click
import gevent
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer

from ..app import create_app
from ..auth import DEFAULT_TTL, Tokens, check_subject, check_ttl
from ..broker import BrokerUnavailable
from ..config import DEFAULTS, ConfigError, from_environ
from ..server.handler import RelayHandler
from .bench import bench
from .stats import stats
from .ticker import ticker as demo_ticker


@click.group()
def cli() -> None:
    """wsrelay: a real-time message relay for Flask on gevent-websocket."""


@cli.command()
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
    if ticker:
        app.extensions["wsrelay"].start_background_task(demo_ticker)
    server = WSGIServer(  # a pool (unbounded), so that stop() waits for the requests
        (host, port), app, handler_class=RelayHandler, log="default" if access_log else None,
        spawn=Pool(),
    )
    server.start()
    bound_host, bound_port = server.address[:2]
    click.echo(f"wsrelay serving on http://{bound_host}:{bound_port}/", err=False)
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
        try:
            click.echo(relay.publish(channel, message).id)
        except (ValueError, BrokerUnavailable) as exc:  # bad channel, too large, no Redis
            raise click.ClickException(str(exc)) from None
        finally:
            relay.close()
        return
    relay.close()
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    if app.config["WSRELAY_SECRET_KEY"]:  # the server shares it: private channels work too
        with contextlib.suppress(ValueError):  # a bad name: the server will say what is wrong
            token = relay.tokens.issue(channel, publish=True, ttl=60)
            headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"{url.rstrip('/')}/publish/{channel}", data=message.encode("utf-8"),
        headers=headers, method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            click.echo(json.load(response)["id"])
    except urllib.error.HTTPError as exc:
        try:
            reason = json.load(exc)["message"]
        except (ValueError, KeyError, TypeError):
            reason = f"{url} answered HTTP {exc.code} {exc.reason}: is it a wsrelay server?"
        raise click.ClickException(reason) from None
    except urllib.error.URLError as exc:
        raise click.ClickException(f"cannot reach {url}: {exc.reason}") from None


@cli.command()
@click.option("--channel", "pattern", required=True,
              help="the channel, or a glob of channels (e.g. 'private-team-*')")
@click.option("--publish", is_flag=True, help="grant publishing too (subscribing always is)")
@click.option("--ttl", default=DEFAULT_TTL, show_default=True, type=float,
              help="seconds the token is valid (finite, positive)")
@click.option("--subject", default=None,
              help="whom the token is for: all clients showing its tokens share one publish rate")
def token(pattern: str, publish: bool, ttl: float, subject: str | None) -> None:
    """Print a signed, expiring token for the channels matching --channel.

    Signed with WSRELAY_SECRET_KEY, which the servers must share. Clients pass
    it as ?token=... (browsers' WebSockets) or 'Authorization: Bearer ...'.
    """
    try:
        check_ttl(ttl)
    except ValueError as exc:
        raise click.ClickException(f"--ttl {ttl}: {exc}") from None
    try:
        secret = {**DEFAULTS, **from_environ()}["WSRELAY_SECRET_KEY"]
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if not secret:
        raise click.ClickException(
            "WSRELAY_SECRET_KEY is not set. Set it to the key of the servers that will check "
            "the token (without one a server signs with a random key of its own, and no "
            "token opens its private channels)."
        )
    if subject is not None:
        try:
            check_subject(subject)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--subject") from None
    try:
        click.echo(Tokens(secret).issue(pattern, publish=publish, ttl=ttl, subject=subject))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--channel") from None


cli.add_command(bench)
cli.add_command(stats)
