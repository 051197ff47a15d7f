"""A server process freezes what start-up built, collects its youngest generation rarely,
and logs without asking each greenlet for its thread."""

import gc
import logging
import re
import threading

import gevent

from tests.support import ServerProcess
from wsrelay.server.process import GEN0_THRESHOLD, skip_thread_names, tune_collector


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


def test_a_greenlet_that_logs_gets_no_thread_object(caplog):
    threads = len(threading.enumerate())
    caplog.set_level(logging.INFO, logger="wsrelay.test")
    try:
        skip_thread_names()
        made = []
        greenlet = gevent.spawn(lambda: (logging.getLogger("wsrelay.test").info("closed"),
                                         made.append(len(threading.enumerate()))))
        greenlet.join()
    finally:
        logging.logThreads = True
    assert made == [threads]  # no dummy thread was made for the greenlet
    [record] = caplog.records
    assert record.getMessage() == "closed" and record.threadName is None
