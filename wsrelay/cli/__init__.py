"""``python manage.py ...``: serve, publish, token, stats, bench (one module per command)."""

from __future__ import annotations

import click

from . import bench, publish, serve, stats, token


@click.group()
def cli() -> None:
    """wsrelay: a real-time message relay for Flask on gevent-websocket."""


for command in (serve.serve, publish.publish, token.token, stats.stats, bench.bench):
    cli.add_command(command)
