"""The cyclic garbage collector of a process that holds thousands of connections.

Every collection of the youngest generation runs after 700 net allocations by default,
and a full one traverses every live object: under 1000 held long-polls the collector
took a tenth of the server's time on allocation churn, not on garbage. A server process
moves what start-up built (modules, the app, its routes) out of the collector's sight
with ``gc.freeze()`` and collects the youngest generation every 20,000 allocations; the
cost is the garbage in cycles that waits longer for its collection (measured in
docs/benchmarks.md, "The lean front").
"""

from __future__ import annotations

import gc

#: Net allocations between two collections of the youngest generation (CPython's default: 700).
GEN0_THRESHOLD = 20_000


def tune_collector() -> int:
    """Collect, freeze what is left and raise the gen-0 threshold; return the objects frozen.

    Called once the app is built and before the first client, where a process is the
    relay's own (``manage.py serve``; the gunicorn worker after it loads the app).
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
    return gc.get_freeze_count()
