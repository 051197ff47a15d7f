"""``python manage.py stats``: the dashboard's numbers in a terminal."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import click

#: The totals shown as rows: key in ``/dashboard/stats``, label.
ROWS = (
    ("published", "messages published"),
    ("delivered", "messages delivered"),
    ("bytes_sent", "bytes sent"),
    ("slow_consumer_closes", "slow consumer closes"),
    ("broker_errors", "broker errors"),
)


def fetch(url: str, token: str | None) -> dict[str, Any]:
    """``GET <url>/dashboard/stats``, or a :class:`click.ClickException` saying what failed."""
    endpoint = f"{url.rstrip('/')}/dashboard/stats"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(endpoint, headers=headers),
                                    timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            reason = json.load(exc)["message"]
        except (ValueError, KeyError, TypeError):
            raise click.ClickException(
                f"{endpoint} answered HTTP {exc.code} {exc.reason}: is it a wsrelay server?"
            ) from None
        hint = " (pass --token or set WSRELAY_ADMIN_TOKEN)" if exc.code == 401 else ""
        raise click.ClickException(f"{url} refused: HTTP {exc.code}: {reason}{hint}") from None
    except urllib.error.URLError as exc:
        raise click.ClickException(f"cannot reach {url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:  # reset mid-answer, or not JSON
        raise click.ClickException(f"no answer from {url}: {exc}") from None


def quantile(buckets: list[list[Any]], q: float) -> float | None:
    """The ``q`` quantile of cumulative histogram buckets ``[[le, count], ...]``, linearly
    interpolated within its bucket as Prometheus' ``histogram_quantile`` does."""
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0
    for le, count in buckets:
        if count >= rank:
            if le == "+Inf":
                return lower
            upper = float(le)
            return lower + (upper - lower) * (rank - below) / max(count - below, 1)
        lower, below = float(le), count
    return lower


def _since(now: dict[str, Any], before: dict[str, Any] | None) -> list[list[Any]]:
    """The latency buckets of the window since ``before`` (since start without one)."""
    buckets = now["totals"]["latency"]["buckets"]
    if before is None:
        return buckets
    old = dict((le, count) for le, count in before["totals"]["latency"]["buckets"])
    return [[le, count - old.get(le, 0)] for le, count in buckets]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def render(url: str, now: dict[str, Any], before: dict[str, Any] | None) -> str:
    """The numbers of one answer as a small table; with ``before``, rates since it."""
    totals = now["totals"]
    elapsed = now["time"] - before["time"] if before is not None else 0.0
    broker = now["broker"]
    state = "draining" if now["draining"] else "ok" if broker.get("ok") else "degraded"
    workers = totals.get("processes") or 1
    lines = [
        f"wsrelay at {url}: {state}, broker {broker.get('broker')}, "
        f"{workers} process{'es' if workers != 1 else ''} (answered by pid {now['pid']})",
        "",
        f"{'':22}{'total':>14}" + (f"{'per second':>14}" if elapsed > 0 else ""),
    ]
    connections = totals["connections"]
    lines.append(f"{'connections':22}{sum(connections.values()):>14,}")
    lines += [f"{'  ' + transport:22}{count:>14,}" for transport, count in connections.items()]
    for key, label in ROWS:
        row = f"{label:22}{totals[key]:>14,}"
        if before is not None and elapsed > 0:
            row += f"{(totals[key] - before['totals'][key]) / elapsed:>14,.1f}"
        lines.append(row)
    window = _since(now, before)
    span = f"last {elapsed:.0f} s" if elapsed > 0 else "since start"
    lines.append(f"{'latency p50 / p99':22}{_ms(quantile(window, 0.5)):>14}"
                 f"{_ms(quantile(window, 0.99)):>14}  ({span})")
    closes = "  ".join(f"{code}: {count:,}" for code, count in totals["closes"].items())
    lines.append(f"{'closes by code':22}{closes or '-'}")
    lines += ["", f"busiest channels of pid {now['pid']}, last {now['busiest_window']:g} s:"]
    lines += [f"  {row['channel']:<40}{row['messages']:>10,}" for row in now["busiest"]]
    if not now["busiest"]:
        lines.append("  (no messages)")
    return "\n".join(lines)


@click.command()
@click.option("--url", default="http://127.0.0.1:5000", show_default=True,
              help="the running server")
@click.option("--token", envvar="WSRELAY_ADMIN_TOKEN",
              help="the server's WSRELAY_ADMIN_TOKEN (default: that variable)")
@click.option("--watch", type=click.FloatRange(min=0.1), metavar="SECONDS",
              help="print again every SECONDS, with rates; Ctrl-C stops")
def stats(url: str, token: str | None, watch: float | None) -> None:
    """Print the numbers of /dashboard: connections, messages, closes, busiest channels.

    Under gunicorn the totals cover every worker; the busiest channels are
    those of the worker that answered.
    """
    before = None
    try:
        while True:
            now = fetch(url, token or None)
            if watch is not None and sys.stdout.isatty():
                click.clear()
            click.echo(render(url, now, before))
            if watch is None:
                return
            click.echo("")
            before = now
            time.sleep(watch)
    except KeyboardInterrupt:
        return
