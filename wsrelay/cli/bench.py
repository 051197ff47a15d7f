"""``python manage.py bench``: run every scenario on every system, then print, save and plot.

Imports only what a plain install has: the load generator's libraries and
matplotlib are needed by the processes and the plot this command starts, and
are checked first, so a missing ``pip install -e '.[bench]'`` is one clear error.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import click

from ..bench import report, servers
from ..bench.baselines import nchan
from ..bench.scenarios import BY_NAME, SCENARIOS, TITLES, Scenario

NEEDED = ("uvloop", "picows", "httptools", "numpy", "matplotlib", "flask_socketio")


class Progress:
    """One line per run, rewritten in place on a terminal."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()

    def show(self, text: str) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + text[:150])
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def done(self, text: str) -> None:
        self.show(text)
        if self.tty:
            sys.stderr.write("\n")


def _drive(spec: dict, limit: float, progress: Progress, label: str) -> dict:
    """Run the load generator for one scenario and system; return its result."""
    with tempfile.TemporaryFile("w+") as errors:
        proc = servers.loadgen(json.dumps(spec), errors)
        watchdog = threading.Timer(limit, proc.kill)
        watchdog.start()
        result = None
        assert proc.stdout is not None  # Popen(stdout=PIPE)
        try:
            for line in proc.stdout:
                message = json.loads(line)
                if "progress" in message:
                    progress.show(f"{label}: {message['progress']}")
                else:
                    result = message["result"]
            proc.wait()
        finally:
            watchdog.cancel()
        if result is None:
            errors.seek(0)
            tail = errors.read().strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
            raise RuntimeError(f"load generator failed: {tail[0]}")
        return result


def _run(scenario: Scenario, system: str, quick: bool, redis: tuple[str, int] | None,
         progress: Progress, label: str) -> dict:
    params = scenario.params(quick)
    shared = redis if system in servers.GUNICORN else None
    env = {"WSRELAY_BROKER_URL": shared[0], "SOCKETIO_MESSAGE_QUEUE": shared[0]} if shared else {}
    progress.show(f"{label}: starting {TITLES[system]}")
    with servers.server(system, env) as (port, pid):
        pids = {"server": pid, "redis": shared[1] if shared else None}
        spec = {"kind": scenario.kind, "system": system, "port": port, "pids": pids,
                "params": params}
        return _drive(spec, 90 if quick else 300, progress, label)


def _absent(systems: set[str]) -> dict[str, str]:
    """The baselines of ``systems`` that are not installed here, and how to install them:
    their rows are skipped, the rest of the bench runs."""
    reason = nchan.missing() if "nchan" in systems else None
    return {"nchan": reason} if reason else {}


def _summary(row: dict) -> str:
    for key, unit in (("cpu_us_per_delivery", "µs CPU/delivery"),
                      ("kib_per_connection", "KiB/conn"), ("cpu_ms_per_message", "ms CPU/message")):
        if key in row:
            return f"{row[key]:.3g} {unit}, lost {row.get('lost', 0)}"
    return ""


@click.command()
@click.option("--quick", is_flag=True,
              help="tiny sizes (20 subscribers, a few messages): checks that it works, "
                   "its figures mean nothing")
@click.option("--scenario", "-s", "only", multiple=True,
              type=click.Choice([scenario.name for scenario in SCENARIOS]),
              help="run only this scenario (repeatable)")
@click.option("--system", "systems", multiple=True, type=click.Choice(list(TITLES)),
              help="run only this system (repeatable)")
@click.option("--out", default="docs/bench", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="where results.json, results.md and the PNG plots go")
def bench(quick: bool, only: tuple[str, ...], systems: tuple[str, ...], out: Path) -> None:
    """Benchmark wsrelay against seed 002's observer loop, Flask-SocketIO 5 and Nchan.

    Each server runs alone on core 0, the load generator on core 1; server CPU
    comes from /proc. Prints a table, writes OUT/results.json, OUT/results.md
    and OUT/*.png. Nchan (nginx's C pub/sub module) runs when installed
    (apt-get install nginx-light libnginx-mod-nchan); its rows are skipped otherwise.
    """
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        raise click.ClickException(
            f"missing {', '.join(missing)}: pip install -e '.[bench]'")
    if not servers.pinning():
        click.echo("warning: fewer than 2 cores; server and load generator share one", err=True)
    servers.pin_to(servers.LOAD_CORE)
    chosen = [BY_NAME[name] for name in only] if only else list(SCENARIOS)
    plan = [(scenario, system) for scenario in chosen for system in scenario.systems
            if not systems or system in systems]
    absent = _absent({system for _, system in plan})
    for system, why in absent.items():
        click.echo(f"{system}: {why}", err=True)
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress()
    rows: list[dict] = []
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        redis = None
        if any(system in servers.GUNICORN for _, system in plan):
            redis = stack.enter_context(servers.redis_server())
        for number, (scenario, system) in enumerate(plan, 1):
            label = f"[{number}/{len(plan)}] {scenario.name} · {system}"
            row = {"scenario": scenario.name, "system": system}
            reason = scenario.not_supported.get(system) or absent.get(system)
            if reason:
                rows.append({**row, "status": "n/a", "reason": reason})
                continue
            try:
                result = _run(scenario, system, quick, redis, progress, label)
            except Exception as exc:  # one failed run must not lose the others' figures
                rows.append({**row, "status": "failed", "reason": str(exc)[:300]})
                progress.done(f"{label}: FAILED: {exc}")
                continue
            rows.append({**row, "status": "ok", **result})
            progress.done(f"{label}: {_summary(rows[-1])}")
    meta = {
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": quick, "elapsed_s": round(time.monotonic() - started, 1),
        "machine": {"cpus": os.cpu_count(), "pinned": servers.pinning(),
                    "python": platform.python_version(), "kernel": platform.release()},
    }
    text = report.table(rows, quick)
    click.echo(text)
    report.save_json(out / "results.json", rows, meta)
    (out / "results.md").write_text(text)
    plots = report.plot(out, rows)
    click.echo(f"wrote {out / 'results.json'}, {out / 'results.md'}, "
               + ", ".join(str(p) for p in plots))
