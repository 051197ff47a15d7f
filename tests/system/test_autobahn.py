"""The Autobahn TestSuite against ``/ws/<channel>``, driven by kosoku (no Python 2, no Docker).

kosoku's fuzzing client runs Autobahn's own case files against a real ``manage.py serve``. In
raw mode a lone client is its channel's only subscriber, so the relay echoes its messages back
to it: the echo server Autobahn expects. kosoku opens every connection on the URL it is given,
unchanged, so each case gets a run of its own on a channel of its own (``/ws/autobahn-6.4.3``)
and cases run side by side without seeing each other's messages.

The server runs with five settings opened, each for a reason of the suite, not of wsrelay:

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
  and by Chromium (tests/browser/).

The publish rate (9.7 and 9.8 send 1000 messages back to back, over the default 100/s with
a burst of 200) and the per-IP connection cap need no setting: kosoku connects from
127.0.0.1, which ``WSRELAY_LIMITS_EXEMPT`` exempts from both by default.

kosoku writes no report here. A failing section names its cases with kosoku's verdicts and
reasons, and the full Autobahn reports of those cases (wire logs included) are written to a
temporary directory the message names.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import gevent
import pytest
from kosoku import FailureError, run_fuzzingclient
from kosoku._report import write_reports  # what the kosoku command writes its reports with
from kosoku.cases import CASES  # the runner's index of the cases: id -> Autobahn case class

from tests.support import ServerProcess

pytestmark = pytest.mark.e2e  # its tests start processes (servers, manage.py) themselves

if TYPE_CHECKING:
    from kosoku._kosoku import CaseResult

SECTIONS = sorted({case.split(".")[0] for case in CASES}, key=int)
#: Autobahn's compression cases (sections 12 and 13) each echo 1000 messages of 16 B to
#: 128 KiB, in 18 sizes for each of 12 subcategories: 10.9 GB through zlib in each direction
#: in all, minutes of CPU on both sides, far past the suite's budget. The suite runs 13 of
#: them: every data set (12.1-12.5) and every negotiation (13.1-13.7) with 4 KiB messages
#: (x.5), and JSON text of 8 KiB sent in 256-byte fragments (12.1.11), the costliest size for
#: its bytes (32 frames a message parsed in Python). ``AUTOBAHN_ALL=1`` runs every case
#: (see docs/development.md).
COMPRESSION_SECTIONS = frozenset({"12", "13"})
COMPRESSION_SAMPLE = frozenset(
    {f"{case.rsplit('.', 1)[0]}.5" for case in CASES if case.split(".")[0] in COMPRESSION_SECTIONS}
    | {"12.1.11"}
)


ALL = os.environ.get("AUTOBAHN_ALL") == "1"


def selected_cases() -> list[str]:
    """Every case, but in sections 12 and 13 only COMPRESSION_SAMPLE's unless
    ``AUTOBAHN_ALL=1``."""
    if ALL:
        return list(CASES)
    return [case for case in CASES
            if case.split(".")[0] not in COMPRESSION_SECTIONS or case in COMPRESSION_SAMPLE]

SERVER_ENV = {
    "WSRELAY_MAX_MESSAGE_SIZE": str(16 << 20),
    "WSRELAY_SUBSCRIBER_BUFFER": str(32 << 20),
    "WSRELAY_CONTROL_FRAME_BURST": str(1 << 20),
    "WSRELAY_PING_INTERVAL": "3600",
    "WSRELAY_COMPRESSION_MIN_SIZE": "0",
}
#: Cases run at once: most wait on the suite's 1 s timers, so the run takes the time of its
#: slowest cases (9.x, CPU-bound on both sides) rather than of the sum.
CONCURRENCY = 16
#: A case without a verdict by then means the server hangs: the slowest case of the suite's
#: selection takes a few seconds; of all of them (12.x.18: 128 MiB echoed), minutes when 16
#: run at once on two cores.
CASE_TIMEOUT = 900.0 if ALL else 60.0


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
    slots = asyncio.Semaphore(CONCURRENCY)
    return list(await asyncio.gather(
        *(run_case(ws_url, case, slots) for case in selected_cases())
    ))


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
    """Per section, how many cases got each verdict."""
    lines = []
    for section, results in by_section.items():
        counts = Counter(result.behavior.value for result in results)
        lines.append(f"section {section}: " + ", ".join(
            f"{count} {verdict}" for verdict, count in sorted(counts.items())))
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
