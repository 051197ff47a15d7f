"""Taking turns: how a greenlet with more work at hand lets every other socket go first."""

from __future__ import annotations

import gevent

#: Greenlets waiting for their turn with input read but not handled yet (a flood's next
#: frames): see :func:`input_pending`.
_pending = 0


def let_others_run(*, more_input: bool = False) -> None:
    """Wait for one turn of the event loop: every socket ready meanwhile is served, every
    timer due fires. ``gevent.sleep(0)`` is not enough: it lets greenlets already runnable
    go first, but may resume this one again and again before the loop polls the sockets
    (gevent's documentation warns of it; under a flood, other sockets waited 4 times longer).

    ``more_input``: the caller holds input it has not handled yet; while it waits,
    :func:`input_pending` says so."""
    global _pending
    hub = gevent.get_hub()
    turn = hub.loop.timer(0)
    if more_input:
        _pending += 1
    try:
        hub.wait(turn)
    finally:
        if more_input:
            _pending -= 1
        turn.close()


def input_pending() -> bool:
    """True while some greenlet waits for its turn with input it has not handled yet: the
    messages it will fan out are already here, so writes done now would go out again soon
    (the hub's flusher holds its pass a little: see :mod:`wsrelay.pacing`)."""
    return _pending > 0
