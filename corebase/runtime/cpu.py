"""CPU usage from two stats readings, computed the way `docker stats` does."""

from __future__ import annotations

from corebase.runtime.types import StatsSample


def cpu_percent(previous: StatsSample | None, current: StatsSample) -> float | None:
    """Return the container's CPU use between two readings, where 100 is one full CPU.

    The container's CPU time delta is divided by the host's CPU time delta and scaled by the
    container's online CPUs. Returns None when there is no previous reading, when either reading
    lacks the host's CPU time, or when a delta is not positive, as after a restart resets the
    container's counters. The result is never negative.
    """
    if previous is None or previous.system_cpu_ns is None or current.system_cpu_ns is None:
        return None

    cpu_delta = current.cpu_total_ns - previous.cpu_total_ns
    system_delta = current.system_cpu_ns - previous.system_cpu_ns
    if cpu_delta < 0 or system_delta <= 0:
        return None
    return cpu_delta / system_delta * current.online_cpus * 100.0
