"""How many connections a process can hold: one file descriptor each, under RLIMIT_NOFILE.

A shell's soft limit is often 1024, far below what the hard limit allows;
a worker that hits it fails every accept with EMFILE. A server process raises
its soft limit to the hard one before it listens, and says what it can hold.
"""

from __future__ import annotations

import resource

#: Descriptors kept aside from clients: the listener, logs, Redis, the event loop's own.
RESERVED = 64
#: The listening socket's accept queue: a reconnect storm (every client of a restarted
#: worker at once) waits there, not refused, while the worker takes them in (the kernel
#: caps it at net.core.somaxconn: 4096 on Linux since 5.4).
ACCEPT_BACKLOG = 4096


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # a hard limit the kernel will not grant (nr_open)
            pass
    return soft


def connection_capacity(limit: int) -> int:
    """Clients a process with ``limit`` descriptors can hold (WebSockets, SSE, long-polls)."""
    return max(0, limit - RESERVED)
