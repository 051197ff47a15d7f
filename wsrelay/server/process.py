"""Settings of a process that wsrelay owns and that holds thousands of connections
(``manage.py serve``; the gunicorn worker once it has loaded the app).

The cyclic garbage collector: the youngest generation is collected after every 700 net
allocations by default, and a full collection traverses every live object: under 1000
held long-polls the collector took a tenth of the server's time on allocation churn,
not on garbage. A server process moves what start-up built (modules, the app, its
routes) out of the collector's sight with ``gc.freeze()`` and collects the youngest
generation every 20,000 allocations; the cost is the garbage in cycles that waits
longer for its collection (measured in docs/benchmarks.md, "The lean front").

Logging: a log record asks ``threading.current_thread()`` for its thread's
name, and under gevent each greenlet that logs for the first time gets a dummy
thread object made for it (a fifth of the cost of a connection's close line).
wsrelay's log formats name no thread, and under gevent every greenlet is a
"thread" of the one OS thread, so records leave it out.
"""

from __future__ import annotations

import gc
import logging

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


def skip_thread_names() -> None:
    """Log records leave out the thread (``%(threadName)s`` shows None)."""
    logging.logThreads = False


def settle() -> int:
    """Both settings, once the app is built and before the first client; return the
    objects frozen."""
    skip_thread_names()
    return tune_collector()
