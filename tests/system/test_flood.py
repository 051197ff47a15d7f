"""One client floods one WebSocket at full speed; everyone else is still served on time.

Each flood runs as its own process (tests/system/flood.py) against a real server,
while a bystander on another channel gets 20 messages a second published
over HTTP and measures how late each arrives. Before fair reading, one
connection never yielded while its socket had data: the bystander got
nothing for seconds, and pongs nobody read piled up in the server's memory.
"""

from __future__ import annotations

import gevent
import pytest
import requests

from tests.support import Bystander, ServerProcess, poll_json, publish, wait_until
from tests.system import flood

pytestmark = pytest.mark.e2e  # its tests start processes (servers, manage.py) themselves

#: How long each flood lasts, and the bystander's p99 latency it must keep: wide, since the
#: machine is shared (unfair reading made it several seconds, with publishes timing out).
SECONDS = 4
P99 = 1.0
#: Control frames without a limit: the flood goes on for its whole length.
UNLIMITED = {"WSRELAY_CONTROL_FRAME_RATE": "1e9", "WSRELAY_CONTROL_FRAME_BURST": "1000000000",
             "WSRELAY_HISTORY_SIZE": "10"}  # 1 MiB messages: keep little of the big flood


@pytest.fixture(scope="module")
def unlimited_server():
    proc = ServerProcess.serve(env=UNLIMITED)
    yield proc
    proc.stop()


@pytest.mark.parametrize("kind", ["pong", "continuation", "ping", "text", "big"])
def test_a_flood_of_any_frame_type_does_not_hold_up_the_others(unlimited_server, channel, kind):
    """The flooder is on this host, exempt from the publish rate, and its control frames
    are not limited here: only fair reading keeps the bystander served."""
    with Bystander(unlimited_server, channel) as bystander:
        gevent.sleep(0.3)
        report = flood.result(flood.start(
            unlimited_server.port, f"/ws/{channel}-flood?echo=0", kind, SECONDS
        ))
    assert report.close_code is None and report.seconds >= SECONDS, report
    assert report.sent > 1 << 20, report
    bystander.assert_served(P99)
    print(bystander.summary())


def closes_logged(server: ServerProcess, code: int, reason: str) -> int:
    """How many WebSockets the server's log says it closed with ``code`` and ``reason`` (a
    flooder that never reads may not get the close frame: the reset that ends its
    connection can overtake it)."""
    return server.log().count(f" closed {code} {reason!r} ")


@pytest.mark.parametrize("kind", ["pong", "continuation", "ping"])
def test_a_control_frame_flood_is_closed_with_1008(server, channel, kind):
    reason = "too many control frames or small fragments"
    before = closes_logged(server, 1008, reason)
    with Bystander(server, channel) as bystander:
        gevent.sleep(0.3)
        report = flood.result(flood.start(server.port, f"/ws/{channel}-flood", kind, SECONDS))
    assert report.seconds < SECONDS, f"closed at once, not at the end of the flood: {report}"
    assert report.close_code in (1008, None), report
    wait_until(lambda: closes_logged(server, 1008, reason) == before + 1)
    bystander.assert_served(P99)
    print(bystander.summary())


def test_a_text_flood_from_an_address_that_is_not_exempt_is_closed_with_1008(
    make_server, channel
):
    """The flooder's address has a publish rate (the bystander's, this host's, is exempt:
    per-IP buckets are shared by every connection of an address)."""
    server = make_server()
    with Bystander(server, channel) as bystander:
        gevent.sleep(0.3)
        flood.result(flood.start(server.port, f"/ws/{channel}-flood", "text", SECONDS,
                                 source="127.0.0.2"))
    wait_until(lambda: closes_logged(server, 1008, "rate limit exceeded") == 1)
    bystander.assert_served(P99)
    print(bystander.summary())


def test_pings_never_read_cost_the_server_no_memory(unlimited_server, channel):
    """Pongs the client does not read are replaced by newer ones: however much it pings,
    the server holds one batch, where it used to queue a pong per ping."""
    size = 16 << 20  # in pongs as large, well beyond what the kernel's buffers hold (~4 MiB)
    before = unlimited_server.rss()
    peak = before
    with Bystander(unlimited_server, channel) as bystander:
        proc = flood.start(unlimited_server.port, f"/ws/{channel}-flood", "ping", 60, size)
        while proc.poll() is None:
            peak = max(peak, unlimited_server.rss())
            gevent.sleep(0.05)
        report = flood.result(proc)
    assert report.sent >= size and report.close_code is None, report
    assert peak - before < 8 << 20, f"RSS grew by {(peak - before) >> 20} MiB"
    bystander.assert_served(P99)
    print(bystander.summary())


def test_big_messages_to_many_channels_keep_the_history_within_its_bound(make_server, channel):
    """1 MiB messages published to many channels would each be kept (1000 per channel): the
    in-memory broker keeps WSRELAY_HISTORY_MEMORY bytes in all, dropping the oldest, while
    everyone else is served."""
    bound = 32 << 20
    server = make_server(env={"WSRELAY_HISTORY_MEMORY": str(bound)}, options=("--no-ticker",))
    payload = b"x" * (1 << 20)
    before = server.rss()
    first = publish(server, f"{channel}-big-0", "the first")
    with Bystander(server, channel) as bystander, requests.Session() as session:
        for n in range(160):  # 160 MiB over 40 channels: 5 times the bound
            response = session.post(f"{server.url}/publish/{channel}-big-{n % 40}",
                                    data=payload,
                                    headers={"Content-Type": "application/octet-stream"})
            assert response.status_code == 200, response.text
    grown = server.rss() - before
    print(f"\nRSS grew by {grown >> 20} MiB for 160 MiB published; {bystander.summary()}")
    assert grown < bound + (48 << 20)
    oldest = poll_json(server, f"{channel}-big-0", since=first, timeout=0)
    assert oldest["reset"] is True and len(oldest["messages"]) < 4  # its first ones went
    bystander.assert_served(P99)
