"""A server process freezes what start-up built and collects its youngest generation rarely."""

import gc
import re

from tests.support import ServerProcess
from wsrelay.server.collector import GEN0_THRESHOLD, tune_collector


def test_start_up_objects_are_frozen_and_the_threshold_raised():
    threshold = gc.get_threshold()
    built_at_start = {"routes": ["/poll"]}
    try:
        frozen = tune_collector()
        assert frozen == gc.get_freeze_count() > 1000  # the test session's modules, at least
        assert gc.get_threshold() == (GEN0_THRESHOLD, *threshold[1:])
        built_later = {"a": ["message"]}
        tracked = gc.get_objects()  # what a collection traverses
        assert not any(obj is built_at_start for obj in tracked)
        assert any(obj is built_later for obj in tracked)
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_serve_says_how_its_collector_is_set():
    server = ServerProcess.serve()
    try:
        said = re.search(r"garbage collector: (\d+) start-up objects frozen, the youngest "
                         r"generation collected every (\d+) allocations", server.log())
        assert said, server.log()
        assert int(said.group(1)) > 10_000  # flask, gevent, the app: all frozen
        assert int(said.group(2)) == GEN0_THRESHOLD
    finally:
        server.stop()
