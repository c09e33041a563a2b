"""Queries over stored samples for the stats API: history in steps and totals per project or owner."""

from __future__ import annotations

import math
import re
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
# The largest step, 31 days, in seconds.
MAX_STEP = 31 * 86400
# A step's syntax, also its OpenAPI pattern: a whole number of seconds from 1, at most seven digits.
# A step that matches it but exceeds MAX_STEP is a 422.
STEP_PATTERN = r"^([1-9][0-9]{0,6})?$"
_STEP = re.compile(STEP_PATTERN)


async def history(
    store: MetricStore, container_id: str, start: str | None, end: str | None, step: str | None
) -> StatsHistory:
    """Check the range and step, then read the container's history in steps.

    A step below the resolution of the stored rows (the rollup step, for ranges past the raw
    retention) is raised to it, and the point limit applies to the step actually used.
    """
    now = time.time()
    begin = parse_log_time("from", start)
    finish = parse_log_time("to", end)
    finish = now if finish is None else finish
    begin = max(0.0, finish - 3600) if begin is None else begin
    if begin >= finish:
        raise InvalidField("to", "to is not later than from; give a range that moves forward in time")

    span = finish - begin
    resolution = store.resolution_for(int(begin), now)
    if not step:
        seconds = max(1, math.ceil(span / DEFAULT_POINTS))
    else:
        seconds = parse_step(step)
    seconds = max(seconds, resolution)
    if span / seconds > MAX_POINTS:
        smallest = max(math.ceil(span / MAX_POINTS), resolution)
        asked = f"step {step}" if step else "the default step"
        stored = f" (history this old is kept at {resolution} s)" if resolution > 1 and seconds == resolution else ""
        raise InvalidField(
            "step",
            f"{asked} gives more than {MAX_POINTS} points for this range of {span:.0f} s{stored}; "
            f"the smallest step allowed is {smallest}",
        )

    resolution, points = await store.history(container_id, int(begin), math.ceil(finish), seconds, now)
    return StatsHistory(
        container_id=container_id,
        start=datetime.fromtimestamp(begin, timezone.utc),
        end=datetime.fromtimestamp(finish, timezone.utc),
        step=seconds,
        resolution=resolution,
        points=points,
    )


def parse_step(value: str) -> int:
    """Read a step of whole seconds, from 1 second to 31 days."""
    problem = f"step {value!r} is invalid; use a whole number of seconds from 1 to {MAX_STEP}"
    if not _STEP.fullmatch(value):
        raise InvalidField("step", problem, status=400)
    if int(value) > MAX_STEP:
        raise InvalidField("step", problem)
    return int(value)


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
