"""``python manage.py bench --quick``: every scenario runs on every system, and is reported.

Only that the bench works is checked here — that it completes, loses nothing
at a tiny load, prints its tables and writes JSON and plots. Its figures are
meaningless at this size and no speed is asserted: the figures are in the README.
"""

import json
import subprocess

from tests.support import PYTHON, ROOT
from wsrelay.bench.scenarios import SCENARIOS, TITLES


def test_quick_bench_runs_every_scenario_on_every_system(tmp_path):
    done = subprocess.run(
        [PYTHON, "manage.py", "bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    document = json.loads((tmp_path / "results.json").read_text())
    assert document["quick"] is True
    rows = {(row["scenario"], row["system"]): row for row in document["rows"]}
    assert set(rows) == {(s.name, system) for s in SCENARIOS for system in s.systems}
    for scenario in SCENARIOS:
        params = scenario.params(quick=True)
        for system in scenario.systems:
            row = rows[scenario.name, system]
            if system in scenario.not_supported:
                assert row["status"] == "n/a", row
                continue
            assert row["status"] == "ok", row
            if scenario.kind == "idle":
                assert row["connections"] == params["connections"]
                assert row["kib_per_connection"] > 0
            else:
                assert row["lost"] == 0, row
                assert row["deliveries"] > 0
            assert row["closed_by_server"] == 0

    for scenario in SCENARIOS:
        assert scenario.heading(quick=True) in done.stdout
    for title in TITLES.values():
        assert f"| {title} |" in done.stdout
    assert (tmp_path / "results.md").read_text() in done.stdout
    for plot in ("latency.png", "throughput.png", "cost.png"):
        assert (tmp_path / plot).read_bytes().startswith(b"\x89PNG"), plot
