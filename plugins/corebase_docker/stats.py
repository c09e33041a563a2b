"""Conversion of the engine's stats JSON (`GET /containers/{id}/stats`) into StatsSample."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from corebase.runtime.types import StatsSample
from corebase_docker.state import parse_timestamp


def is_running_sample(raw: Mapping[str, Any]) -> bool:
    """Tell whether a reading comes from a running container.

    For a container that is not running the engine still returns 200, with a zero "read" time
    ("0001-01-01T00:00:00Z") and empty counters.
    """
    return parse_timestamp(raw.get("read")) is not None


def memory_used(memory_stats: Mapping[str, Any]) -> int:
    """Return memory usage minus inactive page cache, as the docker CLI computes it.

    cgroup v1 reports `total_inactive_file`, cgroup v2 `inactive_file`; either is subtracted only
    when it is smaller than the usage. Without either, the raw usage is returned.
    """
    usage = int(memory_stats.get("usage") or 0)
    details = memory_stats.get("stats") or {}

    if "total_inactive_file" in details:
        inactive = int(details["total_inactive_file"])
    elif "inactive_file" in details:
        inactive = int(details["inactive_file"])
    else:
        return usage

    return usage - inactive if inactive < usage else usage


def online_cpus(cpu_stats: Mapping[str, Any]) -> int:
    """Return the CPUs the container may use: `online_cpus`, else the per-CPU counters, at least 1."""
    count = cpu_stats.get("online_cpus") or 0
    if not count:
        per_cpu = (cpu_stats.get("cpu_usage") or {}).get("percpu_usage") or []
        count = len(per_cpu)
    return max(int(count), 1)


def network_bytes(networks: Mapping[str, Any] | None) -> tuple[int, int]:
    """Return received and sent bytes summed over every interface; (0, 0) without a network."""
    received = sent = 0
    for interface in (networks or {}).values():
        received += int(interface.get("rx_bytes") or 0)
        sent += int(interface.get("tx_bytes") or 0)
    return received, sent


def block_io_bytes(blkio_stats: Mapping[str, Any] | None) -> tuple[int, int]:
    """Return bytes read and written, summed over every device from `io_service_bytes_recursive`."""
    read = written = 0
    for entry in (blkio_stats or {}).get("io_service_bytes_recursive") or []:
        operation = str(entry.get("op", "")).lower()
        if operation == "read":
            read += int(entry.get("value") or 0)
        elif operation == "write":
            written += int(entry.get("value") or 0)
    return read, written


def parse_stats(raw: Mapping[str, Any]) -> StatsSample:
    """Build a StatsSample from one stats reading of a running container.

    Raises ValueError when the reading has no "read" time, as for a container that is not running.
    """
    read_at = parse_timestamp(raw.get("read"))
    if read_at is None:
        raise ValueError("the stats reading has no read time; the container is not running")

    cpu_stats = raw.get("cpu_stats") or {}
    memory_stats = raw.get("memory_stats") or {}
    system_cpu = cpu_stats.get("system_cpu_usage")
    received, sent = network_bytes(raw.get("networks"))
    read, written = block_io_bytes(raw.get("blkio_stats"))

    return StatsSample(
        read_at=read_at,
        cpu_total_ns=int((cpu_stats.get("cpu_usage") or {}).get("total_usage") or 0),
        system_cpu_ns=int(system_cpu) if system_cpu is not None else None,
        online_cpus=online_cpus(cpu_stats),
        memory_used=memory_used(memory_stats),
        memory_limit=int(memory_stats.get("limit") or 0),
        network_rx_bytes=received,
        network_tx_bytes=sent,
        block_read_bytes=read,
        block_write_bytes=written,
        pids=int((raw.get("pids_stats") or {}).get("current") or 0),
    )
