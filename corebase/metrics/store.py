"""Storage of samples: insert, latest reading, history in steps, rollups and retention.

Raw samples have resolution 0. A rollup row covers `rollup_step` seconds of one container with
the average and maximum of CPU and memory and the last value of each counter. History queries
group rows by `epoch / step`, integer arithmetic that SQLite and PostgreSQL compute alike, so the
numbers in SQL below are integers this module computes, never caller input.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime, timezone

import msgspec

from corebase.metrics.tables import RuntimeMetric
from corebase.metrics.types import Sample

logger = logging.getLogger(__name__)


class HistoryPoint(msgspec.Struct, rename="camel"):
    """One step of history: averages and maxima over the samples in it, counters at its end."""

    time: datetime
    samples: int
    cpu_percent: float | None
    cpu_percent_max: float | None
    memory_bytes: int
    memory_max_bytes: int
    memory_limit_bytes: int
    network_rx_bytes: int
    network_tx_bytes: int
    block_read_bytes: int
    block_write_bytes: int
    pids: int


def _row(sample: Sample) -> RuntimeMetric:
    return RuntimeMetric(
        container_id=sample.container_id,
        recorded_at=sample.recorded_at,
        epoch=int(sample.recorded_at.timestamp()),
        resolution=0,
        samples=1,
        cpu_percent=sample.cpu_percent,
        cpu_percent_max=sample.cpu_percent,
        memory_bytes=sample.memory_bytes,
        memory_max_bytes=sample.memory_bytes,
        memory_limit_bytes=sample.memory_limit_bytes,
        network_rx_bytes=sample.network_rx_bytes,
        network_tx_bytes=sample.network_tx_bytes,
        block_read_bytes=sample.block_read_bytes,
        block_write_bytes=sample.block_write_bytes,
        pids=sample.pids,
    )


class MetricStore:
    def __init__(self, raw_retention: int, rollup_step: int, rollup_retention: int) -> None:
        self.raw_retention = int(raw_retention)
        self.rollup_step = int(rollup_step)
        self.rollup_retention = int(rollup_retention)

    async def insert(self, samples: list[Sample]) -> None:
        if samples:
            await RuntimeMetric.insert(*[_row(sample) for sample in samples])

    async def latest(self, container_id: str) -> RuntimeMetric | None:
        """Read the container's newest raw sample, or None when it has none."""
        return (
            await RuntimeMetric.objects()
            .where((RuntimeMetric.container_id == container_id) & (RuntimeMetric.resolution == 0))
            .order_by(RuntimeMetric.epoch, ascending=False)
            .order_by(RuntimeMetric.id, ascending=False)
            .first()
        )

    async def latest_many(self, max_age: float, now: float | None = None) -> dict[str, RuntimeMetric]:
        """Read the newest raw sample of each container sampled in the last `max_age` seconds."""
        since = int((now or time.time()) - max_age)
        rows = (
            await RuntimeMetric.objects()
            .where((RuntimeMetric.resolution == 0) & (RuntimeMetric.epoch >= since))
            .order_by(RuntimeMetric.epoch)
            .order_by(RuntimeMetric.id)
        )
        return {row.container_id: row for row in rows}

    def resolution_for(self, start: int, now: float | None = None) -> int:
        """Raw samples while the range starts within their retention, rollups beyond it."""
        now = now or time.time()
        return 0 if start >= now - self.raw_retention else self.rollup_step

    async def history(
        self, container_id: str, start: int, end: int, step: int, now: float | None = None
    ) -> tuple[int, list[HistoryPoint]]:
        """Return the resolution used and one point per step in [start, end) that has samples."""
        resolution = self.resolution_for(start, now)
        step = max(int(step), resolution or 1)
        rows = await RuntimeMetric.raw(
            f"""
            SELECT (epoch / {step}) * {step} AS bucket, SUM(samples) AS samples,
                   AVG(cpu_percent) AS cpu_percent, MAX(cpu_percent_max) AS cpu_percent_max,
                   AVG(memory_bytes) AS memory_bytes, MAX(memory_max_bytes) AS memory_max_bytes,
                   MAX(memory_limit_bytes) AS memory_limit_bytes,
                   MAX(network_rx_bytes) AS network_rx_bytes, MAX(network_tx_bytes) AS network_tx_bytes,
                   MAX(block_read_bytes) AS block_read_bytes, MAX(block_write_bytes) AS block_write_bytes,
                   MAX(pids) AS pids
            FROM runtime_metrics
            WHERE container_id = {{}} AND resolution = {resolution} AND epoch >= {int(start)} AND epoch < {int(end)}
            GROUP BY (epoch / {step}) * {step}
            ORDER BY bucket
            """,
            container_id,
        )
        return resolution, [_point(row) for row in rows]

    async def rollup(self, now: float | None = None, settle: float = 0.0) -> int:
        """Roll every complete step of raw samples not yet rolled up; return the steps written.

        A step is complete once `settle` seconds (the sampling interval) have passed after its end,
        so a late sample still lands in it.
        """
        step = self.rollup_step
        end = math.floor(((now or time.time()) - settle) / step) * step
        done = await RuntimeMetric.raw(f"SELECT MAX(epoch) AS last FROM runtime_metrics WHERE resolution = {step}")
        last = done[0]["last"] if done else None
        if last is not None:
            start = int(last) + step
        else:
            first = await RuntimeMetric.raw("SELECT MIN(epoch) AS first FROM runtime_metrics WHERE resolution = 0")
            if not first or first[0]["first"] is None:
                return 0
            start = int(first[0]["first"]) // step * step
        if start >= end:
            return 0

        await RuntimeMetric.raw(
            f"""
            INSERT INTO runtime_metrics (container_id, recorded_at, epoch, resolution, samples, cpu_percent,
                cpu_percent_max, memory_bytes, memory_max_bytes, memory_limit_bytes, network_rx_bytes,
                network_tx_bytes, block_read_bytes, block_write_bytes, pids)
            SELECT container_id, MIN(recorded_at), (epoch / {step}) * {step}, {step}, COUNT(*), AVG(cpu_percent),
                MAX(cpu_percent_max), CAST(AVG(memory_bytes) AS BIGINT), MAX(memory_max_bytes),
                MAX(memory_limit_bytes), MAX(network_rx_bytes), MAX(network_tx_bytes), MAX(block_read_bytes),
                MAX(block_write_bytes), MAX(pids)
            FROM runtime_metrics
            WHERE resolution = 0 AND epoch >= {start} AND epoch < {end}
            GROUP BY container_id, (epoch / {step}) * {step}
            """
        )
        return (end - start) // step

    async def prune(self, now: float | None = None) -> None:
        """Delete raw samples and rollups older than their retention."""
        now = now or time.time()
        await RuntimeMetric.delete().where(
            (RuntimeMetric.resolution == 0) & (RuntimeMetric.epoch < int(now - self.raw_retention))
        )
        await RuntimeMetric.delete().where(
            (RuntimeMetric.resolution > 0) & (RuntimeMetric.epoch < int(now - self.rollup_retention))
        )


def _number(value) -> float | None:
    return None if value is None else float(value)


def _point(row: dict) -> HistoryPoint:
    return HistoryPoint(
        time=datetime.fromtimestamp(int(row["bucket"]), timezone.utc),
        samples=int(row["samples"] or 0),
        cpu_percent=_number(row["cpu_percent"]),
        cpu_percent_max=_number(row["cpu_percent_max"]),
        memory_bytes=int(_number(row["memory_bytes"]) or 0),
        memory_max_bytes=int(row["memory_max_bytes"] or 0),
        memory_limit_bytes=int(row["memory_limit_bytes"] or 0),
        network_rx_bytes=int(row["network_rx_bytes"] or 0),
        network_tx_bytes=int(row["network_tx_bytes"] or 0),
        block_read_bytes=int(row["block_read_bytes"] or 0),
        block_write_bytes=int(row["block_write_bytes"] or 0),
        pids=int(row["pids"] or 0),
    )
