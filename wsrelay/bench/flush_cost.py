"""What one write pass costs, in this process: ``python -m wsrelay.bench.flush_cost``.

The bench measures a server from outside, where a starved load generator
changes how many messages each ``send`` carries. This drives the hub itself:
``subscribers`` real loopback TCP connections (WebSocket connections on the
server side), ``messages`` delivered to each, then one flusher pass, which
writes each socket once; repeated ``rounds`` times. ``getrusage`` around the
two steps splits the cost into fan-out (queueing) and writing, and user time
(Python) from system time (the kernel's ``send``). A bare loop of ``send`` on
the same sockets gives the floor any Python server pays. The peers are drained
between rounds, outside what is measured.
"""

from __future__ import annotations

import argparse
import resource
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import gevent.socket

from ..broker import MemoryBroker
from ..hub import Connection, MessageServer, Subscription
from ..ids import MessageId
from ..message import Message
from ..transports.event_stream import EventStream
from ..websocket.connection import WebSocketConnection
from ..websocket.encoders import RAW
from .procstat import machine_busy_seconds

#: Bytes of each message (the *moderate* scenario's).
SIZE = 200


@dataclass
class Cost:
    """Seconds of CPU over one measured stretch."""

    user: float = 0.0
    system: float = 0.0

    @contextmanager
    def adding(self) -> Iterator[None]:
        before = resource.getrusage(resource.RUSAGE_SELF)
        yield
        after = resource.getrusage(resource.RUSAGE_SELF)
        self.user += after.ru_utime - before.ru_utime
        self.system += after.ru_stime - before.ru_stime


class Peers:
    """``count`` loopback TCP connections: the server's sides, and the clients' to drain."""

    def __init__(self, count: int) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(count)
        self.servers: list[socket.socket] = []
        self.clients: list[socket.socket] = []
        for _ in range(count):
            client = socket.create_connection(self.listener.getsockname())
            client.setblocking(False)
            server, _address = self.listener.accept()
            server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.servers.append(server)
            self.clients.append(client)

    def drain(self) -> int:
        """Read everything the clients were sent; return how many bytes."""
        total = 0
        for client in self.clients:
            try:
                while data := client.recv(1 << 20):
                    total += len(data)
            except BlockingIOError:
                pass
        return total

    def close(self) -> None:
        for sock in [*self.servers, *self.clients, self.listener]:
            sock.close()


def _websocket(hub: MessageServer, sock: gevent.socket.socket) -> Connection:
    connection = WebSocketConnection(sock, hub, max_message_size=1 << 20,
                                     buffer_limit=1 << 22, close_timeout=5.0)
    hub.subscribe(Subscription(connection, "c", RAW), None)
    return connection


def _sse(hub: MessageServer, sock: gevent.socket.socket) -> Connection:
    stream = EventStream(hub, "c", sock, as_json=False, chunked=True, buffer_limit=1 << 22)
    hub.subscribe(stream.subscription, None)
    hub.hold(stream)
    stream.open(3600.0, None)
    return stream


#: How each transport's server side is made and subscribed.
TRANSPORTS: dict[str, Callable[[MessageServer, gevent.socket.socket], Connection]] = {
    "websocket": _websocket, "sse": _sse,
}


def measure(subscribers: int, messages: int, rounds: int,
            transport: str = "websocket") -> dict[str, float]:
    """Fan-out and write costs with ``messages`` queued per socket per pass."""
    peers = Peers(subscribers)
    hub = MessageServer(MemoryBroker(history_size=100, history_ttl=60), write_delay=0)
    make = TRANSPORTS[transport]
    connections = [make(hub, gevent.socket.socket(fileno=server.detach()))
                   for server in peers.servers]
    try:
        hub.flush_pending()
        peers.drain()
        fan_out, writing = Cost(), Cost()
        payload = b"x" * SIZE
        writes, delivered = hub.stats.writes, hub.stats.delivered
        busy, wall, own = machine_busy_seconds(), time.monotonic(), time.process_time()
        for number in range(rounds):
            batch = [Message("c", MessageId(1, number * messages + index + 1), payload,
                             time=time.time()) for index in range(messages)]
            with fan_out.adding():
                for message in batch:
                    hub.deliver(message)
            with writing.adding():
                hub.flush_pending()
            peers.drain()
        wall = time.monotonic() - wall
        others = machine_busy_seconds() - busy - (time.process_time() - own)
        sends = hub.stats.writes - writes
        deliveries = hub.stats.delivered - delivered
    finally:
        for connection in connections:
            connection.abort()
        peers.close()
    return {
        "messages_per_send": deliveries / sends, "sends": sends, "deliveries": deliveries,
        "us_per_delivery": (fan_out.user + fan_out.system + writing.user + writing.system)
        / deliveries * 1e6,
        "fan_out_us_per_delivery": (fan_out.user + fan_out.system) / deliveries * 1e6,
        "python_us_per_send": writing.user / sends * 1e6,
        "kernel_us_per_send": writing.system / sends * 1e6,
        "others_cpu_share": max(0.0, others / wall),
    }


def floor(subscribers: int, rounds: int) -> dict[str, float]:
    """A bare Python loop of ``send`` on plain sockets: what any Python server pays."""
    peers = Peers(subscribers)
    data = b"x" * SIZE
    cost = Cost()
    try:
        for server in peers.servers:
            server.setblocking(False)
        for _ in range(rounds):
            with cost.adding():
                for server in peers.servers:
                    server.send(data)
            peers.drain()
    finally:
        peers.close()
    sends = subscribers * rounds
    return {"python_us_per_send": cost.user / sends * 1e6,
            "kernel_us_per_send": cost.system / sends * 1e6}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m wsrelay.bench.flush_cost",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--messages", type=int, nargs="+", default=[1, 3, 10],
                        help="messages queued on each socket per pass (one row each)")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--transport", choices=sorted(TRANSPORTS), default="websocket",
                        help="the server side of each socket: a WebSocket or an SSE stream")
    args = parser.parse_args(argv)
    bare = floor(args.subscribers, args.rounds)
    print(f"{args.subscribers} {args.transport} subscribers, {args.rounds} passes, "
          f"{SIZE} B messages (µs of CPU; others' CPU: what other processes took "
          "meanwhile, 100 % = one core)")
    print("| messages per send | per delivery | fan-out per delivery | Python per send "
          "| kernel per send | others' CPU |")
    print("|---:|---:|---:|---:|---:|---:|")
    for messages in args.messages:
        row = measure(args.subscribers, messages, args.rounds, args.transport)
        print(f"| {row['messages_per_send']:.1f} | {row['us_per_delivery']:.2f} "
              f"| {row['fan_out_us_per_delivery']:.2f} | {row['python_us_per_send']:.2f} "
              f"| {row['kernel_us_per_send']:.2f} | {row['others_cpu_share']:.0%} |")
    print(f"| bare `send` loop | | | {bare['python_us_per_send']:.2f} "
          f"| {bare['kernel_us_per_send']:.2f} | |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
