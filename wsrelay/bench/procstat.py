"""CPU time and memory of another process, read from /proc.

CPU comes from ``/proc/<pid>/task/*/schedstat`` (nanoseconds on CPU, every
thread) because ``utime + stime`` in ``/proc/<pid>/stat`` counts 10 ms clock
ticks: too coarse for a burst that costs the server 50 ms. Both count the
process's own time only, so a busy neighbour on the machine does not change
the figure, only how long it takes to get it.
"""

from __future__ import annotations

import os

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of ``pid`` so far, in seconds."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                total += int(stat.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
            continue
        except (OSError, ValueError, IndexError):  # a kernel without schedstat
            return stat_cpu_seconds(pid)
    return total / 1e9


def stat_cpu_seconds(pid: int) -> float:
    """``utime + stime`` from ``/proc/<pid>/stat``, in seconds (10 ms resolution)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (``VmRSS`` in ``/proc/<pid>/status``), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ProcessLookupError(pid)


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (nginx's workers, under its master)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError):  # a process that just ended
            continue
        if parent == pid:
            found.append(int(entry))
    return found


def machine_busy_seconds() -> float:
    """CPU time every core of the machine has spent busy so far (``/proc/stat``), in seconds.

    Minus what the server and load generator used, it is what *other*
    processes took while the bench measured: the noise its latencies carry.
    """
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICKS
