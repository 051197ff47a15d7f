"""The bench's figures as a table (Markdown, so the README can take it as is), JSON and PNG."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from ..pacing import WRITE_DELAY
from .scenarios import BY_NAME, TITLES

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Row = dict
Column = tuple[str, str, Callable[[float], str]]


def _int(value: float) -> str:
    return f"{value:,.0f}"


def _fixed(digits: int) -> Callable[[float], str]:
    return lambda value: f"{value:,.{digits}f}"


def _percent(value: float) -> str:
    return f"{value * 100:.0f} %"


def _ms(value: float) -> str:
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


LATENCY: list[Column] = [("p50 ms", "p50_ms", _ms), ("p99 ms", "p99_ms", _ms)]
NOISE: list[Column] = [("load gen. CPU", "loadgen_cpu_share", _percent),
                       ("others' CPU", "others_cpu_share", _percent)]
STREAM: list[Column] = [
    ("asked deliveries/s", "asked_deliveries_per_s", _int),
    ("delivered/s", "deliveries_per_s", _int), ("undelivered", "lost", _int), *LATENCY,
    ("server CPU µs/delivery", "cpu_us_per_delivery", _fixed(2)),
    ("server CPU", "server_cpu_share", _percent), *NOISE,
]
HTTP: list[Column] = [
    ("delivered/s", "deliveries_per_s", _int), ("undelivered", "lost", _int), *LATENCY,
    ("server CPU µs/delivery", "cpu_us_per_delivery", _fixed(2)),
]
BURST: list[Column] = [
    ("deliveries", "deliveries", _int), ("lost", "lost", _int),
    ("server CPU µs/delivery", "cpu_us_per_delivery", _fixed(3)),
    ("delivered/s", "deliveries_per_s", _int), ("p99 ms", "p99_ms", _ms), *NOISE,
]
COLUMNS: dict[str, list[Column]] = {
    "burst": BURST,
    "json": [*BURST, ("wire B/delivery", "wire_bytes_per_delivery", _int)],
    "deflate": [*BURST, ("wire B/delivery", "wire_bytes_per_delivery", _int)],
    "steady": STREAM,
    "chat": STREAM,
    "moderate": STREAM,
    "moderate-light": STREAM,
    "idle": [
        ("connections", "connections", _int), ("KiB/connection", "kib_per_connection", _fixed(1)),
        ("connects/s", "connects_per_s", _int),
        ("server CPU µs/connect", "cpu_us_per_connect", _int), *NOISE,
    ],
    "inbound": [
        ("messages", "messages", _int), ("lost", "lost", _int),
        ("server CPU ms/message", "cpu_ms_per_message", _fixed(2)),
        ("wall ms/message", "wall_ms_per_message", _fixed(2)), *NOISE,
    ],
    "poll": [*HTTP, ("requests", "requests", _int),
             ("server CPU µs/request", "cpu_us_per_request", _fixed(1)),
             ("server CPU", "server_cpu_share", _percent), *NOISE],
    "sse": [*HTTP, ("server CPU", "server_cpu_share", _percent), *NOISE],
    "redis": [("delivered/s", "deliveries_per_s", _int), ("undelivered", "lost", _int), *LATENCY,
              ("server CPU µs/delivery", "cpu_us_per_delivery", _fixed(2)),
              ("redis-server CPU µs/message", "redis_cpu_us_per_message", _fixed(1)),
              ("flood messages/s", "flood_messages_per_s", _int),
              ("flood undelivered", "flood_lost", _int),
              ("flood out of order", "flood_reordered", _int),
              ("flood server CPU µs/message", "flood_server_cpu_us_per_message", _fixed(1)),
              ("flood redis-server CPU µs/message", "flood_redis_cpu_us_per_message", _fixed(1)),
              *NOISE],
}


def _find(rows: Iterable[Row], scenario: str, system: str) -> Row | None:
    for row in rows:
        if row["scenario"] == scenario and row["system"] == system and row["status"] == "ok":
            return row
    return None


def targets(rows: list[Row]) -> list[dict]:
    """The issue's targets for wsrelay, each met or not (absent when its scenario did not run)."""
    checks = []

    def check(scenario: str, text: str, test: Callable[[Row], bool]) -> None:
        row = _find(rows, scenario, "wsrelay")
        if row is not None:
            checks.append({"scenario": scenario, "target": text, "met": bool(test(row))})

    seed = _find(rows, "burst", "seed-loop")
    check("burst", "server CPU per delivery <= 1 µs, nothing lost",
          lambda r: r["cpu_us_per_delivery"] <= 1 and r["lost"] == 0)
    if seed is not None:
        check("burst", ">= 5x less CPU per delivery than the seed loop",
              lambda r: seed["cpu_us_per_delivery"] >= 5 * r["cpu_us_per_delivery"])
    check("steady", "nothing lost, p99 <= 50 ms", lambda r: r["lost"] == 0 and r["p99_ms"] <= 50)
    check("moderate", "nothing lost, p99 <= 30 ms, server CPU per delivery <= 2.5 µs",
          lambda r: r["lost"] == 0 and r["p99_ms"] <= 30 and r["cpu_us_per_delivery"] <= 2.5)
    nchan_moderate = _find(rows, "moderate", "nchan")
    if nchan_moderate is not None:
        check("moderate", "<= a third of Nchan's server CPU per delivery",
              lambda r: 3 * r["cpu_us_per_delivery"] <= nchan_moderate["cpu_us_per_delivery"])
    check("moderate-light", f"nothing lost, p99 <= the write window + 5 ms "
          f"({WRITE_DELAY * 1000 + 5:g} ms)",
          lambda r: r["lost"] == 0 and r["p99_ms"] <= WRITE_DELAY * 1000 + 5)
    check("idle", "<= 16 KiB of server memory per connection",
          lambda r: r["kib_per_connection"] <= 16)
    check("inbound", "<= 2 ms of server CPU per 1 MiB message",
          lambda r: r["cpu_ms_per_message"] <= 2 and r["lost"] == 0)
    memory, shared = _find(rows, "redis", "wsrelay"), _find(rows, "redis", "wsrelay-redis")
    if memory is not None and shared is not None:
        flood = shared["flood_messages_per_s"] / memory["flood_messages_per_s"]
        cost = shared["cpu_us_per_delivery"] / memory["cpu_us_per_delivery"]
        checks += [
            {"scenario": "redis", "met": flood >= 0.25 and shared["flood_lost"] == 0
             and shared["flood_reordered"] == 0,
             "target": f"a flood on Redis (gunicorn -w 2) at >= 1/4 of the memory broker's "
                       f"rate, nothing lost or reordered: {flood:.2f}x"},
            {"scenario": "redis", "met": cost <= 1.5,
             "target": f"server CPU per delivery on Redis <= 1.5x the memory broker's: "
                       f"{cost:.2f}x"},
        ]
    return checks


def table(rows: list[Row], quick: bool) -> str:
    """One Markdown table per scenario, then the targets."""
    parts = []
    for name in dict.fromkeys(row["scenario"] for row in rows):
        columns = COLUMNS[name]
        lines = [f"**{BY_NAME[name].heading(quick)}**", "",
                 "| system | " + " | ".join(header for header, _, _ in columns) + " |",
                 "|---|" + "---:|" * len(columns)]
        for row in rows:
            if row["scenario"] != name:
                continue
            if row["status"] == "ok":
                cells = [fmt(row[key]) if row.get(key) is not None else ""
                         for _, key, fmt in columns]
                if row.get("steady_error"):
                    cells[0] = f"failed: {row['steady_error']}"
            else:
                cells = [f"{row['status']}: {row.get('reason', '')}"] + [""] * (len(columns) - 1)
            lines.append(f"| {TITLES[row['system']]} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    checks = targets(rows)
    if checks:
        parts.append("\n".join(
            ["**Targets (wsrelay)**", ""]
            + [f"- {'met' if c['met'] else 'MISSED'}: {c['scenario']}: {c['target']}"
               for c in checks]))
    return "\n\n".join(parts) + "\n"


def save_json(path: Path, rows: list[Row], meta: dict) -> None:
    scenarios = {row["scenario"] for row in rows}
    document = {
        **meta,
        "scenarios": {name: {"title": BY_NAME[name].heading(meta["quick"]),
                             "params": BY_NAME[name].params(meta["quick"])}
                      for name in sorted(scenarios)},
        "rows": rows,
        "targets": targets(rows),
    }
    path.write_text(json.dumps(document, indent=1) + "\n")


# -- plots ---------------------------------------------------------------------------------

SHORT = {"wsrelay": "wsrelay", "wsrelay-redis": "wsrelay\non Redis",
         "wsrelay-nodelay": "wsrelay\nno delay", "seed-loop": "seed loop",
         "flask-socketio": "Flask-\nSocketIO", "flask-socketio-redis": "Flask-SocketIO\non Redis",
         "nchan": "Nchan", "gevent-floor": "bare gevent\ngreenlets",
         "gevent-floor-callbacks": "bare gevent\ncallbacks"}
COLOURS = {"wsrelay": "tab:blue", "wsrelay-redis": "tab:purple", "wsrelay-nodelay": "tab:cyan",
           "seed-loop": "tab:orange", "flask-socketio": "tab:green",
           "flask-socketio-redis": "tab:olive", "nchan": "tab:red",
           "gevent-floor": "tab:gray", "gevent-floor-callbacks": "tab:brown"}


#: the scenarios that stream messages: their latency distributions and delivery rates are plotted
STREAMS = ("steady", "chat", "moderate", "moderate-light", "poll", "sse", "redis")


def plot(directory: Path, rows: list[Row]) -> list[Path]:
    """latency.png (distribution per scenario and system), throughput.png, cost.png."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    ok = [row for row in rows if row["status"] == "ok"]
    written = []
    figures = {"latency.png": _latency, "throughput.png": _throughput, "cost.png": _cost}
    for name, draw in figures.items():
        figure = draw(pyplot, ok)
        if figure is None:
            continue
        figure.tight_layout()
        figure.savefig(directory / name, dpi=110)
        pyplot.close(figure)
        written.append(directory / name)
    return written


def _latency(pyplot: ModuleType, rows: list[Row]) -> Figure | None:
    """Latency CDFs: x = latency (log), y = share of deliveries at most that late."""
    names = [name for name in STREAMS
             if any(r["scenario"] == name and "quantiles" in r for r in rows)]
    if not names:
        return None
    columns = min(len(names), 4)
    lines = -(-len(names) // columns)
    figure, axes = pyplot.subplots(lines, columns, figsize=(3.6 * columns, 3.6 * lines),
                                   squeeze=False)
    for axis in axes.flat[len(names):]:
        axis.set_visible(False)
    for axis, name in zip(axes.flat, names, strict=False):
        for row in rows:
            if row["scenario"] == name and "quantiles" in row:
                q = row["quantiles"]
                axis.plot([max(ms, 0.01) for ms in q["ms"]], q["percent"],
                          label=TITLES[row["system"]], color=COLOURS[row["system"]])
        axis.set_xscale("log")
        axis.set_xlabel("delivery latency (ms)")
        axis.set_ylabel("% of deliveries")
        axis.set_title(name, fontsize=10)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    return figure


def _label(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:,.0f}k"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.3g}"


def _panel(axis: Axes, rows: list[Row], scenario: str, key: str, title: str) -> None:
    """One bar per system for one figure of one scenario (linear: bars compare honestly)."""
    present = [row for row in rows if row["scenario"] == scenario and key in row]
    names = [SHORT[row["system"]] for row in present]
    bars = axis.bar(names, [row[key] for row in present],
                    color=[COLOURS[row["system"]] for row in present])
    axis.bar_label(bars, labels=[_label(row[key]) for row in present], fontsize=7)
    asked = [row["asked_deliveries_per_s"] for row in present if "asked_deliveries_per_s" in row]
    if key == "deliveries_per_s" and asked:
        axis.axhline(asked[0], color="grey", linestyle="dashed", linewidth=1, label="asked")
        axis.legend(fontsize=7, loc="upper right")
    axis.set_title(title, fontsize=9)
    axis.tick_params(axis="x", labelsize=7)
    axis.grid(True, axis="y", alpha=0.3)
    axis.margins(y=0.15)


def _grid(pyplot: ModuleType, rows: list[Row],
          panels: list[tuple[str, str, str]]) -> Figure | None:
    panels = [p for p in panels if any(r["scenario"] == p[0] and p[1] in r for r in rows)]
    if not panels:
        return None
    figure, axes = pyplot.subplots(1, len(panels), figsize=(2.8 * len(panels), 3.4),
                                   squeeze=False)
    for axis, (scenario, key, title) in zip(axes[0], panels, strict=True):
        _panel(axis, rows, scenario, key, title)
    return figure


def _throughput(pyplot: ModuleType, rows: list[Row]) -> Figure | None:
    return _grid(pyplot, rows, [
        (name, "deliveries_per_s", f"{name}: deliveries/s")
        for name in STREAMS])


def _cost(pyplot: ModuleType, rows: list[Row]) -> Figure | None:
    return _grid(pyplot, rows, [
        ("burst", "cpu_us_per_delivery", "burst: server CPU µs/delivery"),
        ("steady", "cpu_us_per_delivery", "steady: server CPU µs/delivery"),
        ("idle", "kib_per_connection", "idle: server KiB/connection"),
        ("idle", "cpu_us_per_connect", "idle: server CPU µs/connect"),
        ("inbound", "cpu_ms_per_message", "inbound: server CPU ms per 1 MiB"),
    ])
