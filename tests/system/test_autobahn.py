"""The Autobahn TestSuite against ``/ws/<channel>``, driven by kosoku (no Python 2, no Docker).

kosoku's fuzzing client runs Autobahn's own case files against a real ``manage.py serve``. In
raw mode a lone client is its channel's only subscriber, so the relay echoes its messages back
to it: the echo server Autobahn expects. kosoku opens every connection on the URL it is given,
unchanged, so each case gets a run of its own on a channel of its own (``/ws/autobahn-6.4.3``)
and cases run side by side without seeing each other's messages.

The server runs with six settings changed, each for a reason of the suite, not of wsrelay:

- ``WSRELAY_MAX_MESSAGE_SIZE`` 16 MiB: cases 9.1.6 and 9.2.6 echo a 16 MiB message (the 1 MiB
  default would close them with 1009, which is right for wsrelay but not what 9.x measures);
- ``WSRELAY_SUBSCRIBER_BUFFER`` 32 MiB: the echo must fit the sender's outbox, which must hold
  twice the largest message (the configuration refuses less);
- ``WSRELAY_CONTROL_FRAME_BURST``: cases 9.3.1 and 9.4.1 send 4 MiB in 64-byte fragments,
  65,536 small fragments at once, which the default burst of 500 closes with 1008 (a
  client that fragments that finely is treated as a flood, which 9.x does not measure);
- ``WSRELAY_PING_INTERVAL`` one hour: Autobahn records every frame the server sends, so the
  heartbeat's unsolicited ping (every 20 s by default), landing in a case that is open at that
  moment, is an event no case expects and fails it;
- ``WSRELAY_COMPRESSION_MIN_SIZE`` 0: on a connection that negotiated permessage-deflate,
  kosoku 0.1.0 hands a message that arrives uncompressed (RSV1 clear, which RFC 7692 allows
  for any message, and wsrelay does below 256 bytes) to the case as text decoded from UTF-8,
  binary or not, where Autobahn hands bytes: 12.x.1 then fails on its hash (text) or its
  length (binary). Compressing every message keeps the cases measuring the server; plain
  messages on a compressing connection are checked by tests/transports/test_websocket_deflate.py
  and by Chromium (tests/browser/);
- ``WSRELAY_WRITE_DELAY`` 0: a socket written to less than 30 ms ago gathers what follows
  until those 30 ms are over (one ``send`` for many messages under fan-out load), and the
  compression cases echo 1000 messages in lockstep, each sent when the last came back: 30 ms
  a round trip, 31 s a case whatever its size (12.1.1, 1000 messages of 16 B: 31.1 s with the
  window, 0.42 s without), 108 minutes of waiting for the 216 of them.

All 517 cases run, the compression cases (two at a time, largest first) beside the others
(sixteen at a time). The compression cases echo 10.9 GB through zlib each way, and the
auto-fragmented ones (x.x.11-18) up to 440,000 frames each: one run cost the server 415 s of
CPU and kosoku (with pytest) 255 s, and took 11 min 51 s on two cores other runs shared
(30 Nov). The server, one process, is the floor: about 7 minutes however quiet the machine.

The publish rate (9.7 and 9.8 send 1000 messages back to back, over the default 100/s with
a burst of 200) and the per-IP connection cap need no setting: kosoku connects from
127.0.0.1, which ``WSRELAY_LIMITS_EXEMPT`` exempts from both by default.

kosoku writes no report here. A failing section names its cases with kosoku's verdicts and
reasons, and the full Autobahn reports of those cases (wire logs included) are written to a
temporary directory the message names.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import gevent
import pytest
from kosoku import FailureError, run_fuzzingclient
from kosoku._report import write_reports  # what the kosoku command writes its reports with
from kosoku.cases import CASES  # the runner's index of the cases: id -> Autobahn case class

from tests.support import ServerProcess

pytestmark = [
    pytest.mark.e2e,  # its tests start processes (servers, manage.py) themselves
    pytest.mark.timeout(3600),  # the first test runs every case: 4 min alone, 30 on a busy machine
]

if TYPE_CHECKING:
    from kosoku._kosoku import CaseResult

SECTIONS = sorted({case.split(".")[0] for case in CASES}, key=int)


def bytes_echoed(case: str) -> int:
    """What a compression case (12.x, 13.x) sends: ``COUNT`` messages of ``LEN`` bytes, up
    to 1000 of 128 KiB; 0 for the others."""
    case_class = CASES[case]
    return getattr(case_class, "LEN", 0) * getattr(case_class, "COUNT", 0)


SERVER_ENV = {
    "WSRELAY_MAX_MESSAGE_SIZE": str(16 << 20),
    "WSRELAY_SUBSCRIBER_BUFFER": str(32 << 20),
    "WSRELAY_CONTROL_FRAME_BURST": str(1 << 20),
    "WSRELAY_PING_INTERVAL": "3600",
    "WSRELAY_COMPRESSION_MIN_SIZE": "0",
    "WSRELAY_WRITE_DELAY": "0",
}
#: Cases run at once besides the compression cases: most of them wait on the suite's 1 s
#: timers or on a close, so sections 1-10 take the time of their slowest few.
CONCURRENCY = 16
#: Compression cases run at once: each keeps the server or kosoku busy (zlib on both sides,
#: Python for every frame), so more would only share the machine thinner, and each case
#: must end within its own timer (480 s for the large ones): 12.2.15, 128 KiB of bitmap in
#: 256-byte fragments, 440,000 frames, took 50 s alone on a busy machine and failed that
#: timer four at a time. Largest first: a 128 MiB echo started last would run alone at the
#: end of the run.
COMPRESSION_CONCURRENCY = 2
#: A case without a verdict by then means the server hangs: the slowest (12.2.15, 20 s of
#: the server's CPU) takes under a minute alone, a few on a busy machine, and kosoku's own
#: timer fails it at 480 s.
CASE_TIMEOUT = 600.0


async def run_case(ws_url: str, case: str, slots: asyncio.Semaphore) -> CaseResult:
    """One case on a channel of its own; kosoku raises FailureError when it does not pass."""
    async with slots:
        run = run_fuzzingclient(f"{ws_url}/ws/autobahn-{case}", [case])
        try:
            (result,) = await asyncio.wait_for(run, CASE_TIMEOUT)
        except FailureError as failure:
            (result,) = failure.results
        except TimeoutError:
            raise AssertionError(f"case {case}: no verdict within {CASE_TIMEOUT:.0f} s") from None
        return result


async def run_suite(ws_url: str) -> list[CaseResult]:
    """Every case: the compression cases, largest first, beside all the others."""
    slots = asyncio.Semaphore(CONCURRENCY)
    compression_slots = asyncio.Semaphore(COMPRESSION_CONCURRENCY)
    return list(await asyncio.gather(*(
        run_case(ws_url, case, compression_slots if bytes_echoed(case) else slots)
        for case in sorted(CASES, key=bytes_echoed, reverse=True)
    )))


@pytest.fixture(scope="module")
def autobahn() -> dict[str, list[CaseResult]]:
    """Every case of the suite, once, against one server: the results by section."""
    server = ServerProcess.serve(env=SERVER_ENV)
    try:
        # in a thread of its own: another suite's asyncio loop (Playwright's, for Chromium)
        # may be running in this one, and asyncio.run cannot start inside it
        results = gevent.get_hub().threadpool.apply(asyncio.run, (run_suite(server.ws_url),))
    finally:
        server.stop()
    by_section: dict[str, list[CaseResult]] = {section: [] for section in SECTIONS}
    for result in results:
        by_section[result.case_id.split(".")[0]].append(result)
    print(summary(by_section))
    return by_section


def summary(by_section: dict[str, list[CaseResult]]) -> str:
    """Per section, how many cases got each verdict, and where the time went: the cases'
    durations added up, and the slowest."""
    lines = []
    for section, results in by_section.items():
        counts = Counter(result.behavior.value for result in results)
        slowest = max(results, key=lambda result: result.duration)
        lines.append(f"section {section}: " + ", ".join(
            f"{count} {verdict}" for verdict, count in sorted(counts.items()))
            + f"; {sum(result.duration for result in results) / 1000:.1f} s in all, slowest "
            f"{slowest.case_id} {slowest.duration / 1000:.1f} s")
    return "\n".join(lines)


def explain(results: list[CaseResult], report_dir: Path) -> str:
    """The failing cases with kosoku's reasons, and where their full reports are."""
    write_reports(results, str(report_dir))
    lines = []
    for r in results:
        lines.append(f"{r.case_id}: {r.behavior.value} ({r.result}); "
                     f"close {r.behavior_close.value} ({r.result_close})")
        lines.append(f"    expected: {r.expectation.strip()[:300]}")
        lines.append(f"    received: {str(r.received)[:300]}; the server closed with "
                     f"{r.remote_close_code} {r.remote_close_reason!r}")
    lines.append(f"full Autobahn reports of these cases, wire logs included: {report_dir}")
    return "\n".join(lines)


@pytest.mark.parametrize("section", SECTIONS, ids=[f"section-{s}" for s in SECTIONS])
def test_autobahn_section(autobahn, section, tmp_path):
    """Every case passes (OK, NON-STRICT or INFORMATIONAL, and a closing handshake that is
    OK or INFORMATIONAL); 12 and 13 (permessage-deflate) like the others: UNIMPLEMENTED,
    a declined offer, fails."""
    results = autobahn[section]
    assert results, f"kosoku has no case in section {section}"
    wrong = [r for r in results if not r.passed]
    assert not wrong, (
        f"{len(wrong)} of {len(results)} Autobahn cases of section {section} failed:\n"
        + explain(wrong, tmp_path / "autobahn")
    )
