"""The write window's decision, without sockets: write now, or wait until when."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from wsrelay.pacing import write_at

times = st.floats(min_value=0, max_value=1e6)
delays = st.floats(min_value=0, max_value=10)


def test_an_idle_socket_is_written_at_once():
    assert write_at(last_write=0.0, now=100.0, delay=0.03) == 100.0
    assert write_at(last_write=99.97, now=100.0, delay=0.03) == 100.0  # exactly one window ago


def test_a_socket_written_within_the_window_waits_for_its_end():
    assert write_at(last_write=99.99, now=100.0, delay=0.03) == 99.99 + 0.03


def test_no_delay_writes_everything_at_once():
    assert write_at(last_write=100.0, now=100.0, delay=0.0) == 100.0


@given(last_write=times, elapsed=st.floats(min_value=0, max_value=100), delay=delays)
def test_no_write_waits_longer_than_the_window_nor_comes_within_it(last_write, elapsed, delay):
    now = last_write + elapsed
    at = write_at(last_write, now, delay)
    assert now <= at <= now + delay
    assert at >= last_write + delay or at == now  # never two writes within one window, unless
    assert at == now or at == last_write + delay  # the socket was idle for a whole window


def test_a_steady_stream_is_gathered_a_steady_stream_into_one_write_per_window():
    """Messages every 10 ms through a 30 ms window: a write for the first at once, then one
    per window for the messages queued meanwhile, none more than 30 ms late."""
    delay, last_write = 0.03, -math.inf
    queued: list[float] = []
    writes: list[tuple[float, list[float]]] = []  # (when, the queue times it carried)
    due = math.inf
    for tick in range(1, 301):  # a clock of 1 ms steps, for 0.3 s
        now = tick / 1000
        if tick % 10 == 0:
            queued.append(now)
            due = min(due, write_at(last_write, now, delay))
        if queued and now >= due - 1e-9:
            writes.append((now, queued))
            queued, due = [], math.inf
            last_write = now
    assert sum(len(batch) for _, batch in writes) + len(queued) == 30
    assert writes[0] == (0.01, [0.01]), "the first message waits for nothing"
    assert len(writes) <= 12, "about three messages per write, not one"
    assert all(when - queued_at <= 0.03 + 1e-9 for when, batch in writes for queued_at in batch)
