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

The decision is pure (times in, time out), so the hub's flusher and any
writer of its own (an SSE stream) take it the same way: :func:`write_at`
for many connections at once, :class:`WriteWindow` for one writer's loop.
"""

from __future__ import annotations

import math

#: Seconds a socket written to recently gathers messages before the next write (the
#: default of ``WSRELAY_WRITE_DELAY``; 0: every message is written as soon as it is queued).
WRITE_DELAY = 0.03


def write_at(last_write: float, now: float, delay: float) -> float:
    """The time to write bytes queued on a socket last written at ``last_write``: ``now``
    when that is at least ``delay`` ago (or ``delay`` is 0), else ``last_write + delay``."""
    due = last_write + delay
    return due if due > now else now


class WriteWindow:
    """The window of one writer that runs its own loop (an SSE stream, say).

    Ask :meth:`wait` before writing, sleep that long (gathering what arrives
    meanwhile), write everything, then tell :meth:`wrote`.
    """

    __slots__ = ("delay", "last_write")

    def __init__(self, delay: float = WRITE_DELAY) -> None:
        self.delay = delay
        self.last_write = -math.inf

    def wait(self, now: float) -> float:
        """Seconds to wait before writing what is queued (0: write now)."""
        return write_at(self.last_write, now, self.delay) - now

    def wrote(self, now: float) -> None:
        self.last_write = now
