"""``python manage.py token``: a signed, expiring token for clients of private channels."""

from __future__ import annotations

import click

from ..auth import DEFAULT_TTL, Tokens, check_subject, check_ttl
from ..config import ConfigError, load


@click.command()
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
        secret = load()["WSRELAY_SECRET_KEY"]
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
