"""What the bench runs: every scenario, its sizes (full and ``--quick``), which systems run it.

The load generator and the report both read this table; a scenario's
``kind`` names the load generator's routine that drives it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: The systems compared in most scenarios, in table order.
SYSTEMS = ("wsrelay", "seed-loop", "flask-socketio", "nchan")

TITLES = {
    "wsrelay": "wsrelay",
    "wsrelay-nodelay": "wsrelay, WSRELAY_WRITE_DELAY=0",
    "wsrelay-redis": "wsrelay on Redis (gunicorn -w 2)",
    "flask-socketio-redis": "Flask-SocketIO 5 on Redis (gunicorn -w 2)",
    "seed-loop": "seed 002 observer loop",
    "flask-socketio": "Flask-SocketIO 5 (gevent)",
    "nchan": "Nchan (nginx, C)",
    "gevent-floor": "bare gevent, a greenlet per connection (no relay)",
    "gevent-floor-callbacks": "bare gevent loop, no greenlets (no relay)",
}

#: What gevent alone costs, serving a connect or a poll with no relay work: the floors under
#: wsrelay's figures in the scenarios that measure those (bench/baselines/gevent_floor.py).
FLOORS = ("gevent-floor", "gevent-floor-callbacks")


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str
    title: str
    full: dict[str, Any]
    quick: dict[str, Any]
    systems: tuple[str, ...] = SYSTEMS
    #: system -> why it has no row of figures in this scenario
    not_supported: dict[str, str] = field(default_factory=dict)

    def params(self, quick: bool) -> dict[str, Any]:
        return dict(self.quick if quick else self.full)

    def heading(self, quick: bool) -> str:
        """The title with this run's sizes filled in."""
        return self.title.format(**self.params(quick))


#: The moderate scenarios compare wsrelay's write window (its default) with none.
MODERATE_SYSTEMS = ("wsrelay", "wsrelay-nodelay", *SYSTEMS[1:])

NO_HTTP = {
    "seed-loop": "no HTTP transport",
    "flask-socketio": "no SSE; Engine.IO long-polling is a different protocol, not driven here",
}

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "burst", "burst",
        "burst: {subscribers} subscribers, {messages} messages of {size} B at once, {rounds} times",
        full={"subscribers": 1000, "messages": 200, "rounds": 5, "size": 64},
        quick={"subscribers": 20, "messages": 20, "rounds": 1, "size": 64},
    ),
    Scenario(
        "json", "burst",
        "JSON, uncompressed: {subscribers} subscribers, {messages} chat-like JSON messages of "
        "{size} B at once, {rounds} times",
        full={"subscribers": 1000, "messages": 200, "rounds": 5, "size": 1024, "wire": "plain"},
        quick={"subscribers": 20, "messages": 20, "rounds": 1, "size": 1024, "wire": "plain"},
        systems=("wsrelay",),
    ),
    Scenario(
        "deflate", "burst",
        "JSON, permessage-deflate: {subscribers} subscribers offering compression, {messages} "
        "chat-like JSON messages of {size} B at once, {rounds} times",
        full={"subscribers": 1000, "messages": 200, "rounds": 5, "size": 1024,
              "wire": "deflate"},
        quick={"subscribers": 20, "messages": 20, "rounds": 1, "size": 1024, "wire": "deflate"},
        systems=("wsrelay",),
    ),
    Scenario(
        "steady", "stream",
        "steady: {subscribers} subscribers, {rate} messages/s of {size} B for {duration} s",
        full={"subscribers": 1000, "rate": 400, "duration": 10, "senders": 1, "size": 64,
              "drain": 10},
        quick={"subscribers": 20, "rate": 20, "duration": 0.5, "senders": 1, "size": 64,
               "drain": 5},
    ),
    Scenario(
        "chat", "stream",
        "chat: {subscribers} clients in one room, {senders} of them publishing, {rate} messages/s "
        "in all, for {duration} s",
        full={"subscribers": 1000, "rate": 1000, "duration": 10, "senders": 1000, "size": 64,
              "drain": 5},
        quick={"subscribers": 20, "rate": 20, "duration": 0.5, "senders": 20, "size": 64,
               "drain": 5},
    ),
    Scenario(
        "moderate", "stream",
        "moderate: {subscribers} subscribers, {rate} messages/s of {size} B for {duration} s",
        full={"subscribers": 1000, "rate": 100, "duration": 30, "senders": 1, "size": 200,
              "drain": 10},
        quick={"subscribers": 20, "rate": 20, "duration": 0.5, "senders": 1, "size": 200,
               "drain": 5},
        systems=MODERATE_SYSTEMS,
    ),
    Scenario(
        "moderate-light", "stream",
        "moderate, light load (a latency check): {subscribers} subscribers, {rate} messages/s "
        "of {size} B for {duration} s",
        full={"subscribers": 100, "rate": 10, "duration": 30, "senders": 1, "size": 200,
              "drain": 10},
        quick={"subscribers": 10, "rate": 10, "duration": 0.5, "senders": 1, "size": 200,
               "drain": 5},
        systems=MODERATE_SYSTEMS,
    ),
    Scenario(
        "idle", "idle",
        "idle: {connections} idle WebSocket connections on one worker",
        full={"connections": 15_000, "concurrency": 100, "settle": 2},
        quick={"connections": 50, "concurrency": 10, "settle": 0.2},
        systems=(*SYSTEMS, *FLOORS),
    ),
    Scenario(
        "inbound", "inbound",
        "inbound: {messages} text messages of {size} B from one client, echoed to it "
        "(its channel's only member)",
        full={"messages": 20, "size": 1 << 20},
        quick={"messages": 2, "size": 1 << 20},
    ),
    Scenario(
        "poll", "poll",
        "long-poll: {subscribers} clients on one channel, {rate} messages/s for {duration} s",
        full={"subscribers": 1000, "rate": 10, "duration": 10, "size": 64, "drain": 10},
        quick={"subscribers": 20, "rate": 10, "duration": 0.5, "size": 64, "drain": 5},
        systems=(*SYSTEMS, *FLOORS),
        not_supported=NO_HTTP,
    ),
    Scenario(
        "sse", "sse",
        "SSE: {subscribers} clients on one channel, {rate} messages/s for {duration} s",
        full={"subscribers": 1000, "rate": 50, "duration": 10, "size": 64, "drain": 10},
        quick={"subscribers": 20, "rate": 10, "duration": 0.5, "size": 64, "drain": 5},
        not_supported=NO_HTTP,
    ),
    Scenario(
        "redis", "redis",
        "Redis: {subscribers} subscribers, {rate} messages/s of {size} B for {duration} s; "
        "then one client floods {flood} messages or for {flood_s} s to {flood_subscribers} "
        "readers ({window} undelivered at most); the memory broker (one process) as the ceiling",
        full={"subscribers": 100, "rate": 1000, "duration": 10, "senders": 1, "size": 64,
              "drain": 10, "flood": 100_000, "flood_s": 10, "window": 2000,
              "flood_subscribers": 2},
        quick={"subscribers": 10, "rate": 50, "duration": 0.5, "senders": 1, "size": 64,
               "drain": 5, "flood": 500, "flood_s": 2, "window": 100, "flood_subscribers": 2},
        systems=("wsrelay", "wsrelay-redis", "flask-socketio-redis"),
    ),
)

BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}
