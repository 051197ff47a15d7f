"""When to write to a socket: at once when it was idle, else after the write window.

One ``send`` per message per subscriber is what makes moderate, steady
traffic cost as much as it does; one ``send`` for several messages costs
little more than for one. So a socket written to less than
``WSRELAY_WRITE_DELAY`` ago gathers what arrives until the window ends, and
a socket idle for longer is written at once: a lone message on a quiet
server waits for nothing, and no message waits longer than the window.
Nagle's algorithm and Centrifuge's ``WriteDelay`` are the anchors; unlike
``WriteDelay``, the first message after a pause is never delayed, and unlike
Nagle, the wait is a bound in time rather than an acknowledgement.

The decision is pure (times in, time out): the hub's flusher asks
:func:`write_at` for every connection it holds (WebSockets and SSE streams).
One more rule lives in the flusher, since it is about the server rather than
a socket: while a client's input is still being fanned out
(:func:`wsrelay.fairness.input_pending`), a pass waits for it, at most one
window more, so a burst is written once it is all queued.

An SSE stream lingers (``WSRELAY_SSE_LINGER``, the connection's ``linger``):
once its window has ended, what it holds goes out with the next message to
arrive, or the linger later at the latest, and the flusher is woken by that
message. Its sends then fall when messages arrive, each carrying the ones
held since the last: at 50 messages/s and a 30 ms window a send carries two
events, where writing at the window's end sends one event, then two, for the
same longest hold (20 ms).
"""

from __future__ import annotations

#: Seconds a socket written to recently gathers messages before the next write (the
#: default of ``WSRELAY_WRITE_DELAY``; 0: every message is written as soon as it is queued).
WRITE_DELAY = 0.03


def write_at(last_write: float, now: float, delay: float) -> float:
    """The time to write bytes queued on a socket last written at ``last_write``: ``now``
    when that is at least ``delay`` ago (or ``delay`` is 0), else ``last_write + delay``."""
    due = last_write + delay
    return due if due > now else now


#: Seconds an SSE stream's queued events, once their write window has ended, wait for the next
#: message to join them before they go out alone (the default of ``WSRELAY_SSE_LINGER``; see
#: the module's docstring).
SSE_LINGER = 0.015
