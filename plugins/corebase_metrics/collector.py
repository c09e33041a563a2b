"""The built-in collector: one stats reading per container per round, all at once, each bounded in time."""

from __future__ import annotations

import asyncio
import logging

from corebase.errors import ApiError
from corebase.metrics.types import Sample, Target
from corebase.runtime.cpu import cpu_percent
from corebase.runtime.protocol import ContainerRuntime
from corebase.runtime.types import StatsSample

logger = logging.getLogger(__name__)


class StatsCollector:
    """Reads the runtime's counters and derives CPU percent and network rates from its own previous reading.

    Up to `max_parallel` readings run at once, and each may take `call_timeout` seconds. A container
    whose reading fails or times out is missing from that round only. Previous readings are kept
    for the containers of the last round alone, so memory stays bounded by the running containers.
    """

    name = "stats"

    def __init__(self, call_timeout: float, max_parallel: int) -> None:
        self.call_timeout = call_timeout
        self.max_parallel = max_parallel
        self._previous: dict[str, StatsSample] = {}

    async def sample(self, runtime: ContainerRuntime, targets: list[Target]) -> list[Sample]:
        limit = asyncio.Semaphore(self.max_parallel)

        async def read(target: Target) -> tuple[Target, StatsSample | None]:
            async with limit:
                try:
                    return target, await asyncio.wait_for(runtime.stats(target.engine_id), self.call_timeout)
                except asyncio.TimeoutError:
                    logger.warning("stats of container %s took over %.1f s; skipped this round", target.container_id, self.call_timeout)
                except ApiError as exc:
                    logger.debug("stats of container %s failed: %s", target.container_id, exc)
                except Exception:
                    logger.exception("stats of container %s failed unexpectedly", target.container_id)
                return target, None

        readings = await asyncio.gather(*(read(target) for target in targets))

        samples = []
        previous, self._previous = self._previous, {}
        for target, current in readings:
            before = previous.get(target.container_id)
            if current is None:
                # Keep the older reading, so the next round still has a CPU delta.
                if before is not None:
                    self._previous[target.container_id] = before
                continue
            samples.append(Sample.from_stats(target, current, before, cpu_percent(before, current)))
            self._previous[target.container_id] = current
        return samples
