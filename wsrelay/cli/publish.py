"""``python manage.py publish``: server push from a shell or a script."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import click

from ..app import create_app
from ..broker import BrokerUnavailable
from ..channels import check_channel
from ..errors import ConfigError, InvalidChannel


@click.command()
@click.argument("channel")
@click.argument("message")
@click.option("--url", default="http://127.0.0.1:5000", show_default=True,
              help="the running server, used when the broker is in-memory")
def publish(channel: str, message: str, url: str) -> None:
    """Publish MESSAGE (text) to CHANNEL and print its id.

    With a shared broker (Redis) the message goes straight into it; with the
    in-memory broker it is posted to the running server at --url.
    """
    try:  # a name the server would refuse is refused here, before any request
        check_channel(channel)
    except InvalidChannel as exc:
        raise click.ClickException(str(exc)) from None
    try:
        app = create_app()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    relay = app.extensions["wsrelay"]
    if relay.hub.broker.shared:
        try:
            click.echo(relay.publish(channel, message).id)
        except (ValueError, BrokerUnavailable) as exc:  # too large, no Redis
            raise click.ClickException(str(exc)) from None
        finally:
            relay.close()
        return
    relay.close()
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    if app.config["WSRELAY_SECRET_KEY"]:  # the server shares it: private channels work too
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
