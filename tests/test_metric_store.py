"""Stored samples on SQLite and PostgreSQL: latest reading, history steps, rollups and retention."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from corebase.metrics.store import MetricStore
from corebase.metrics.tables import RuntimeMetric
from corebase.metrics.types import Sample

# A fixed minute boundary, so steps and rollups fall on known seconds.
T0 = 1_800_000_000 - 1_800_000_000 % 60
STEP = 60


def sample(container_id: str, epoch: float, cpu: float | None, memory: int, rx: int = 0) -> Sample:
    return Sample(
        container_id=container_id,
        owner="alice",
        project_id=None,
        template=None,
        recorded_at=datetime.fromtimestamp(epoch, timezone.utc),
        cpu_percent=cpu,
        memory_bytes=memory,
        memory_limit_bytes=1000,
        network_rx_bytes=rx,
        network_tx_bytes=0,
        block_read_bytes=0,
        block_write_bytes=0,
        pids=1,
    )


@pytest.fixture
def store(database) -> MetricStore:
    return MetricStore(raw_retention=3600, rollup_step=STEP, rollup_retention=7200)


async def test_latest_returns_newest_raw_sample(store):
    await store.insert([sample("ctr_a", T0, 10.0, 100), sample("ctr_a", T0 + 5, 20.0, 200), sample("ctr_b", T0 + 9, 1.0, 1)])
    latest = await store.latest("ctr_a")
    assert latest.cpu_percent == 20.0
    assert latest.memory_bytes == 200
    assert await store.latest("ctr_missing") is None

    recent = await store.latest_many(max_age=6, now=T0 + 10)
    assert set(recent) == {"ctr_a", "ctr_b"}
    assert recent["ctr_a"].memory_bytes == 200


async def test_history_groups_samples_into_steps(store):
    # Four samples 10 s apart: two in the first 20-second step, two in the second.
    await store.insert([sample("ctr_a", T0 + offset, cpu, memory, rx) for offset, cpu, memory, rx in (
        (0, 10.0, 100, 1), (10, 30.0, 300, 2), (20, 50.0, 500, 3), (30, None, 700, 4),
    )])
    resolution, points = await store.history("ctr_a", T0, T0 + 40, 20, now=T0 + 40)
    assert resolution == 0
    assert [point.time.timestamp() for point in points] == [T0, T0 + 20]
    first, second = points
    assert first.samples == 2
    assert first.cpu_percent == pytest.approx(20.0)
    assert first.cpu_percent_max == pytest.approx(30.0)
    assert first.memory_bytes == 200
    assert first.memory_max_bytes == 300
    assert first.network_rx_bytes == 2
    # A sample without a CPU figure does not pull the average down.
    assert second.cpu_percent == pytest.approx(50.0)
    assert second.memory_max_bytes == 700


async def test_rollup_covers_each_finished_step_once(store):
    samples = [sample("ctr_a", T0 + offset, float(offset), 100 + offset, rx=offset) for offset in range(0, 120, 10)]
    samples.append(sample("ctr_b", T0 + 5, 7.0, 50))
    await store.insert(samples)

    # At T0 + 125 two steps have ended; the third is still open.
    assert await store.rollup(now=T0 + 125) == 2
    rollups = await RuntimeMetric.select().where(RuntimeMetric.resolution == STEP).order_by(RuntimeMetric.epoch)
    by_key = {(row["container_id"], row["epoch"]): row for row in rollups}
    assert set(by_key) == {("ctr_a", T0), ("ctr_a", T0 + 60), ("ctr_b", T0)}
    first = by_key[("ctr_a", T0)]
    assert first["samples"] == 6
    assert first["cpu_percent"] == pytest.approx(25.0)
    assert first["cpu_percent_max"] == pytest.approx(50.0)
    assert first["memory_max_bytes"] == 150
    assert first["network_rx_bytes"] == 50

    # A second pass finds nothing new until another step ends.
    assert await store.rollup(now=T0 + 130) == 0
    await store.insert([sample("ctr_a", T0 + 125, 1.0, 1)])
    assert await store.rollup(now=T0 + 185) == 1
    assert await RuntimeMetric.count().where(RuntimeMetric.resolution == STEP) == 4


async def test_rollup_waits_for_late_samples(store):
    await store.insert([sample("ctr_a", T0 + 30, 1.0, 1)])
    # The step [T0, T0 + 60) ended 2 s ago, but samples may still arrive for 5 s.
    assert await store.rollup(now=T0 + 62, settle=5) == 0
    assert await store.rollup(now=T0 + 66, settle=5) == 1


async def test_prune_deletes_data_past_retention(store):
    now = T0 + 10_000
    await store.insert([sample("ctr_a", now - 4000, 1.0, 1), sample("ctr_a", now - 100, 2.0, 2)])
    await store.rollup(now=now - 3000)
    await RuntimeMetric.insert(
        RuntimeMetric(container_id="ctr_a", recorded_at=datetime.fromtimestamp(now - 8000, timezone.utc),
                      epoch=now - 8000, resolution=STEP, samples=1)
    )

    await store.prune(now=now)

    raw = await RuntimeMetric.select(RuntimeMetric.epoch).where(RuntimeMetric.resolution == 0)
    rolled = await RuntimeMetric.select(RuntimeMetric.epoch).where(RuntimeMetric.resolution == STEP)
    assert [row["epoch"] for row in raw] == [now - 100]
    assert len(rolled) == 1
    assert rolled[0]["epoch"] > now - 7200


async def test_history_past_raw_retention_reads_rollups(store):
    now = T0 + 9960
    # now - 5040 starts a minute, so the six samples fall into one rollup step.
    await store.insert([sample("ctr_a", now - 5040 + offset, 40.0, 400) for offset in range(0, 60, 10)])
    await store.rollup(now=now)
    resolution, points = await store.history("ctr_a", now - 6000, now, 1, now=now)
    assert resolution == STEP
    assert len(points) == 1
    assert points[0].samples == 6
    assert points[0].cpu_percent == pytest.approx(40.0)
