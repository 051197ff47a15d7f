"""The load generator: drives one system through one scenario and measures it.

Run by ``python manage.py bench`` as ``python -m wsrelay.bench.loadgen SPEC``
(SPEC is JSON: kind, system, port, pids, params) on its own core, in a
process without gevent: asyncio on uvloop with picows clients, so parsing a
delivery costs well under a microsecond here and the server, not the load
generator, is what is measured. It reads the server's CPU time from /proc
around exactly the work it asked for, and prints JSON lines: ``{"progress":
text}`` while it runs, then ``{"result": {...}}``.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import numpy
import uvloop

from .procstat import cpu_seconds, machine_busy_seconds, rss_bytes
from .wire import (
    SYNC,
    RawClient,
    Tally,
    chat_payload,
    connect_http,
    connect_publisher,
    connect_websocket,
    payload,
)

Client = TypeVar("Client")

#: Latency quantiles kept for the plots (percent): the body, then the tail.
QUANTILES = [*range(0, 99), 99, 99.5, 99.9, 99.99, 100]
#: the share of a core the load generator took, and the share other processes took
NOISE = ("loadgen_cpu_share", "others_cpu_share")


def emit(kind: str, value: object) -> None:
    print(json.dumps({kind: value}), flush=True)


class Meter:
    """Server (and Redis) CPU, load-generator CPU and wall time over one measured stretch."""

    def __init__(self, pids: dict[str, int | list[int]]) -> None:
        """``pids``: the process of each part, or its processes (gunicorn's workers)."""
        self.pids = {name: pid if isinstance(pid, list) else [pid]
                     for name, pid in pids.items() if pid}
        self.start()

    def start(self) -> None:
        self.cpu = {name: _cpu(pids) for name, pids in self.pids.items()}
        self.own = time.process_time()
        self.machine = machine_busy_seconds()
        self.wall = time.monotonic()

    def read(self) -> dict[str, float]:
        wall = time.monotonic() - self.wall
        figures = {f"{name}_cpu_s": _cpu(pids) - self.cpu[name]
                   for name, pids in self.pids.items()}
        own = time.process_time() - self.own
        others = machine_busy_seconds() - self.machine - own - sum(figures.values())
        figures["wall_s"] = wall
        figures["loadgen_cpu_share"] = own / wall if wall else 0.0
        #: cores' worth of CPU that other processes took meanwhile (10 ms resolution)
        figures["others_cpu_share"] = max(0.0, others / wall) if wall else 0.0
        return figures


def _cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def received(tally: Tally, count: int) -> Callable[[], bool]:
    """Whether ``count`` messages have arrived, asked again and again by :func:`until`."""
    return lambda: tally.received >= count


async def until(predicate: Callable[[], bool], timeout: float, step: float = 0.002) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


async def connect_all(count: int, concurrency: int, connect: Callable[[], Awaitable[Client]],
                      what: str) -> list[Client]:
    """Open ``count`` clients, ``concurrency`` at a time, reporting progress every second."""
    gate = asyncio.Semaphore(concurrency)
    clients: list[Client] = []

    async def one() -> None:
        async with gate:
            clients.append(await connect())

    async def report() -> None:
        while True:
            await asyncio.sleep(1)
            emit("progress", f"{len(clients)}/{count} {what} connected")

    reporter = asyncio.create_task(report())
    try:
        await asyncio.gather(*(one() for _ in range(count)))
    finally:
        reporter.cancel()
    return clients


async def sync(publisher: RawClient, receivers: Sequence[object], tally: Tally) -> None:
    """Publish sync messages until every receiver got one: all are subscribed."""
    for _ in range(100):
        publisher.publish(SYNC)
        if await until(lambda: tally.synced >= len(receivers), 0.2, 0.01):
            await asyncio.sleep(0.3)  # let the last sync copies go out before measuring
            return
    raise RuntimeError(f"only {tally.synced} of {len(receivers)} subscribers got a sync message")


def latency_figures(tally: Tally) -> dict:
    samples = numpy.frombuffer(tally.latencies, dtype=numpy.int64) / 1e6
    if not len(samples):
        return {}
    quantiles = numpy.percentile(samples, QUANTILES)
    return {
        "p50_ms": float(numpy.percentile(samples, 50)),
        "p99_ms": float(numpy.percentile(samples, 99)),
        "max_ms": float(samples.max()),
        "quantiles": {"percent": QUANTILES, "ms": [round(float(q), 4) for q in quantiles]},
    }


# -- scenarios -------------------------------------------------------------------------

async def burst(spec: dict, tally: Tally, meter: Meter) -> dict:
    """All subscribers connected; one of them publishes ``messages`` at once, ``rounds`` times.
    With ``wire`` (the compression scenarios), chat-like JSON messages, and the bytes on
    the wire counted."""
    p = spec["params"]
    wire = p.get("wire")
    clients = await connect_all(
        p["subscribers"], 100,
        lambda: connect_websocket(spec["system"], spec["port"], tally, wire=wire),
        "subscribers")
    await sync(clients[0], clients, tally)
    n, per_round = len(clients), p["messages"] * len(clients)
    cpu = wall = 0.0
    busy = dict.fromkeys(NOISE, 0.0)  # CPU shares over the rounds, weighted by their length
    for round_ in range(p["rounds"]):
        emit("progress", f"round {round_ + 1}/{p['rounds']}")
        goal = tally.received + per_round
        meter.start()
        for index in range(p["messages"]):
            clients[0].publish(chat_payload(p["size"], index) if wire else payload(p["size"]))
        await until(received(tally, goal), 60, 0.0005)
        figures = meter.read()
        cpu += figures["server_cpu_s"]
        wall += figures["wall_s"]
        for key in busy:
            busy[key] += figures[key] * figures["wall_s"]
        await asyncio.sleep(0.2)
    expected = p["rounds"] * per_round
    return {
        "subscribers": n, "deliveries": tally.received, "lost": expected - tally.received,
        "server_cpu_s": cpu, "cpu_us_per_delivery": cpu / max(tally.received, 1) * 1e6,
        "deliveries_per_s": tally.received / wall, "closed_by_server": tally.closed_by_server,
        **{key: value / wall for key, value in busy.items()}, **latency_figures(tally),
        **({"wire_bytes_per_delivery": tally.wire_bytes / max(tally.received, 1)}
           if wire else {}),
    }


async def measure_stream(p: dict, publishers: Sequence, receivers: int, tally: Tally,
                         meter: Meter) -> dict:
    """Publish ``rate`` messages/s for ``duration`` s round-robin over ``publishers``;
    wait up to ``drain`` s for the last deliveries; measure it all."""
    rate, total = p["rate"], round(p["rate"] * p["duration"])
    expected = total * receivers
    size = p["size"]
    meter.start()
    start = time.monotonic()
    sent, next_report = 0, start + 1
    lags = []
    while sent < total:
        now = time.monotonic()
        due = min(total, int((now - start) * rate) + 1)
        while sent < due:
            publishers[sent % len(publishers)].publish(payload(size))
            sent += 1
        if now >= next_report:
            next_report += 1
            emit("progress", f"{now - start:.0f}/{p['duration']} s, "
                             f"{tally.received:,} of {sent * receivers:,} delivered")
        await asyncio.sleep(0.001)
        lags.append(time.monotonic() - now - 0.001)
    publish_s = time.monotonic() - start
    emit("progress", f"draining: {tally.received:,} of {expected:,} delivered")
    await until(lambda: tally.received >= expected, p["drain"])
    figures = meter.read()
    delivered = tally.received
    cpu = figures["server_cpu_s"]
    result = {
        "messages": total, "publish_s": publish_s, "expected": expected,
        "deliveries": delivered, "lost": expected - delivered,
        "asked_deliveries_per_s": rate * receivers,
        "deliveries_per_s": delivered / figures["wall_s"],
        "cpu_us_per_delivery": cpu / max(delivered, 1) * 1e6,
        "cpu_us_per_message": cpu / total * 1e6,
        "server_cpu_share": cpu / figures["wall_s"],
        "closed_by_server": tally.closed_by_server,
        "loadgen_lag_p99_ms": sorted(lags)[int(len(lags) * 0.99)] * 1e3,
        **figures, **latency_figures(tally),
    }
    if "redis_cpu_s" in figures:
        result["redis_cpu_us_per_message"] = figures["redis_cpu_s"] / total * 1e6
    return result


async def stream(spec: dict, tally: Tally, meter: Meter) -> dict:
    """WebSocket subscribers; the first ``senders`` of them publish."""
    p = spec["params"]
    clients = await connect_all(
        p["subscribers"], 100, lambda: connect_websocket(spec["system"], spec["port"], tally),
        "subscribers")
    await sync(clients[0], clients, tally)
    result = await measure_stream(p, clients[: p["senders"]], len(clients), tally, meter)
    return {"subscribers": len(clients), "senders": p["senders"], **result}


async def http_stream(spec: dict, tally: Tally, meter: Meter) -> dict:
    """Long-poll or SSE readers; one WebSocket client publishes without receiving."""
    p = spec["params"]
    system, kind = spec["system"], spec["kind"]
    readers = await connect_all(
        p["subscribers"], 100, lambda: connect_http(system, kind, spec["port"], tally),
        f"{kind} clients")
    publisher = await connect_publisher(system, spec["port"])
    await sync(publisher, readers, tally)
    requests = tally.requests
    result = await measure_stream(p, [publisher], len(readers), tally, meter)
    if kind == "poll":
        requests = tally.requests - requests
        result.update(requests=requests,
                      cpu_us_per_request=result["server_cpu_s"] / max(requests, 1) * 1e6)
    return {"subscribers": len(readers), **result}


async def idle(spec: dict, tally: Tally, meter: Meter) -> dict:
    """Open ``connections`` WebSockets and leave them idle: memory per connection, connect rate."""
    p = spec["params"]
    pid = spec["pids"]["server"]
    before = rss_bytes(pid)
    meter.start()
    clients = await connect_all(
        p["connections"], p["concurrency"],
        lambda: connect_websocket(spec["system"], spec["port"], tally), "connections")
    figures = meter.read()
    await asyncio.sleep(p["settle"])
    after = rss_bytes(pid)
    n = len(clients)
    return {
        "connections": n, "connect_s": figures["wall_s"],
        "connects_per_s": n / figures["wall_s"],
        "cpu_us_per_connect": figures["server_cpu_s"] / n * 1e6,
        "rss_before_mib": before / 2**20, "rss_after_mib": after / 2**20,
        "kib_per_connection": (after - before) / n / 1024,
        "closed_by_server": tally.closed_by_server,
        **{key: figures[key] for key in NOISE},
    }


async def inbound(spec: dict, tally: Tally, meter: Meter) -> dict:
    """One client sends large text messages, one at a time; it is the only subscriber."""
    p = spec["params"]
    client = await connect_websocket(spec["system"], spec["port"], tally)
    await sync(client, [client], tally)
    meter.start()
    for i in range(p["messages"]):
        client.publish(payload(p["size"]))
        if not await until(received(tally, i + 1), 30):
            break
    figures = meter.read()
    done = max(tally.received, 1)
    return {
        "messages": p["messages"], "size": p["size"], "deliveries": tally.received,
        "lost": p["messages"] - tally.received,
        "cpu_ms_per_message": figures["server_cpu_s"] / done * 1e3,
        "wall_ms_per_message": figures["wall_s"] / done * 1e3,
        "closed_by_server": tally.closed_by_server, **figures,
    }


async def redis(spec: dict, tally: Tally, meter: Meter) -> dict:
    """A flood, then the steady stream. The flood: one client publishes as fast as the
    server takes it (at most ``window`` messages not yet delivered) to ``flood_subscribers``
    readers, ``flood`` messages or for ``flood_s`` seconds; its clients leave before the
    stream starts."""
    p = spec["params"]
    flooded = Tally()
    readers = await connect_all(
        p["flood_subscribers"], 10,
        lambda: connect_websocket(spec["system"], spec["port"], flooded), "flood readers")
    publisher = await connect_publisher(spec["system"], spec["port"])
    await sync(publisher, readers, flooded)
    total, window, count = p["flood"], p["window"], len(readers)
    emit("progress", f"flood: {total:,} messages, {p['flood_s']} s at most")
    meter.start()
    sent = 0
    deadline = time.monotonic() + p["flood_s"]
    while sent < total and time.monotonic() < deadline:
        room = max(0, min(total, flooded.received // count + window) - sent)
        for _ in range(room):
            publisher.publish(payload(p["size"]))
        sent += room
        await asyncio.sleep(0.0005)
    await until(lambda: flooded.received >= sent * count, p["drain"])
    figures = meter.read()
    for client in (*readers, publisher):
        client.transport.disconnect()
    await asyncio.sleep(0.5)
    per_reader = flooded.received / count
    flood = {
        "flood_messages": sent,
        "flood_messages_per_s": per_reader / figures["wall_s"],
        "flood_lost": sent * count - flooded.received,
        "flood_reordered": flooded.reordered,
        "flood_server_cpu_us_per_message": figures["server_cpu_s"] / max(per_reader, 1) * 1e6,
        "flood_others_cpu_share": figures["others_cpu_share"],
    }
    if "redis_cpu_s" in figures:
        flood["flood_redis_cpu_us_per_message"] = figures["redis_cpu_s"] / max(per_reader, 1) * 1e6
    try:
        if flood["flood_lost"]:  # its backlog would reach the stream's subscribers too
            raise RuntimeError(f"the flood was not delivered within {p['drain']} s")
        steady = await stream(spec, tally, meter)
    except RuntimeError as exc:  # a baseline that cannot keep up still has its flood figures
        steady = {"steady_error": str(exc), "lost": None, "closed_by_server": 0}
    return {**steady, **flood}


KINDS = {"burst": burst, "redis": redis, "stream": stream, "idle": idle, "inbound": inbound,
         "poll": http_stream, "sse": http_stream}


async def run(spec: dict) -> dict:
    tally = Tally()
    meter = Meter(spec["pids"])
    return await KINDS[spec["kind"]](spec, tally, meter)


def main(argv: list[str]) -> None:
    spec = json.loads(argv[1])
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    emit("result", uvloop.run(run(spec)))


if __name__ == "__main__":
    main(sys.argv)
