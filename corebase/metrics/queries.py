"""Queries over stored samples for the stats API: history in steps and totals per project or owner."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from datetime import datetime, timezone
from typing import Literal

from corebase.api.logs import parse_log_time
from corebase.api.schemas import StatsHistory, StatsTotal, StatsTotals
from corebase.auth.caller import Caller
from corebase.containers.tables import Container
from corebase.errors import InvalidField
from corebase.metrics.store import MetricStore

# A history response has at most this many points; a step that needs more is rejected.
MAX_POINTS = 10_000
# Points a history aims for when the request names no step.
DEFAULT_POINTS = 300


async def history(
    store: MetricStore, container_id: str, start: str | None, end: str | None, step: int | None
) -> StatsHistory:
    """Check the range and step, then read the container's history in steps."""
    now = time.time()
    begin = parse_log_time("from", start)
    finish = parse_log_time("to", end)
    finish = now if finish is None else finish
    begin = finish - 3600 if begin is None else begin
    if begin >= finish:
        raise InvalidField("to", "to is not later than from; give a range that moves forward in time", status=400)

    span = finish - begin
    if step is None:
        step = max(1, math.ceil(span / DEFAULT_POINTS))
    if span / step > MAX_POINTS:
        smallest = math.ceil(span / MAX_POINTS)
        raise InvalidField("step", f"step {step} gives more than {MAX_POINTS} points for this range; use {smallest} or more", status=400)

    resolution, points = await store.history(container_id, int(begin), math.ceil(finish), step)
    return StatsHistory(
        container_id=container_id,
        start=datetime.fromtimestamp(begin, timezone.utc),
        end=datetime.fromtimestamp(finish, timezone.utc),
        step=max(step, resolution),
        resolution=resolution,
        points=points,
    )


async def totals(store: MetricStore, caller: Caller, group_by: Literal["project", "owner"], fresh_for: float) -> StatsTotals:
    """Add up the newest fresh sample of each running container the caller may see, per project or owner."""
    latest = await store.latest_many(fresh_for)
    condition = (Container.status == "running") & Container.pool_state.is_null()
    if not caller.is_admin:
        condition &= Container.owner == caller.user
    rows = await Container.select(Container.id, Container.owner, Container.project_id).where(condition)

    groups: dict[str | None, StatsTotal] = defaultdict(
        lambda: StatsTotal(key=None, containers=0, cpu_percent=0.0, memory_bytes=0, memory_limit_bytes=0,
                           network_rx_bytes=0, network_tx_bytes=0, pids=0)
    )
    for row in rows:
        sample = latest.get(row["id"])
        if sample is None:
            continue
        key = row["project_id"] if group_by == "project" else row["owner"]
        total = groups[key]
        total.key = key
        total.containers += 1
        total.cpu_percent += sample.cpu_percent or 0.0
        total.memory_bytes += sample.memory_bytes
        total.memory_limit_bytes += sample.memory_limit_bytes
        total.network_rx_bytes += sample.network_rx_bytes
        total.network_tx_bytes += sample.network_tx_bytes
        total.pids += sample.pids
    for total in groups.values():
        total.cpu_percent = round(total.cpu_percent, 3)
    ordered = sorted(groups.values(), key=lambda total: (total.key is None, total.key or ""))
    return StatsTotals(group_by=group_by, fresh_for=fresh_for, groups=ordered)
