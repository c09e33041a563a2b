"""CPU percentage from two stats readings."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from corebase.runtime.cpu import cpu_percent
from corebase.runtime.types import StatsSample

START = datetime(2024, 1, 1, tzinfo=timezone.utc)


def sample(cpu_ns: int, system_ns: int | None, online_cpus: int = 2, seconds: float = 0) -> StatsSample:
    return StatsSample(
        read_at=START + timedelta(seconds=seconds),
        cpu_total_ns=cpu_ns,
        system_cpu_ns=system_ns,
        online_cpus=online_cpus,
        memory_used=0,
        memory_limit=0,
    )


def test_no_previous_reading() -> None:
    assert cpu_percent(None, sample(100, 1000)) is None


def test_half_of_one_cpu_on_two() -> None:
    # The host's counter covers both CPUs: 2e9 ns per second; the container used 0.5e9 ns.
    previous = sample(1_000_000_000, 10_000_000_000)
    current = sample(1_500_000_000, 12_000_000_000, seconds=1)

    assert cpu_percent(previous, current) == pytest.approx(50.0)


def test_two_full_cpus() -> None:
    previous = sample(0, 0)
    current = sample(2_000_000_000, 2_000_000_000, seconds=1)

    assert cpu_percent(previous, current) == pytest.approx(200.0)


def test_idle_container() -> None:
    previous = sample(5_000, 1_000_000)
    current = sample(5_000, 3_000_000, seconds=1)

    assert cpu_percent(previous, current) == 0.0


def test_uses_current_online_cpus() -> None:
    previous = sample(0, 0, online_cpus=1)
    current = sample(1_000, 4_000, online_cpus=4, seconds=1)

    assert cpu_percent(previous, current) == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("previous_system", "current_system"),
    [(None, 1000), (1000, None), (None, None)],
)
def test_missing_system_time(previous_system: int | None, current_system: int | None) -> None:
    assert cpu_percent(sample(0, previous_system), sample(10, current_system, seconds=1)) is None


def test_system_time_not_advancing() -> None:
    assert cpu_percent(sample(0, 1000), sample(10, 1000, seconds=1)) is None


def test_system_time_going_back() -> None:
    assert cpu_percent(sample(0, 2000), sample(10, 1000, seconds=1)) is None


def test_counters_reset_by_restart() -> None:
    # After a restart the container's cumulative CPU time starts again from zero.
    previous = sample(9_000_000_000, 10_000_000_000)
    current = sample(100_000_000, 12_000_000_000, seconds=1)

    assert cpu_percent(previous, current) is None
