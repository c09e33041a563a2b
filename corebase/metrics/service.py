"""Monitoring: leadership, the engine event watcher and the sampling loop.

One API process at a time leads monitoring, holding the "monitor" lease: it samples every running
container each `monitoring.interval` through the collector plugin, stores the samples, publishes
them as events, evaluates alert rules, and rolls up and prunes stored samples. When the leader
dies its lease runs out and another process takes over. Every process follows the engine's event
stream (see corebase.events.watcher).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from corebase import leases
from corebase.containers.tables import Container
from corebase.events.bus import EventBus
from corebase.events.types import Event
from corebase.events.watcher import EngineWatcher
from corebase.metrics.store import MetricStore
from corebase.metrics.types import Collector, Sample, Target
from corebase.runtime.protocol import ContainerRuntime
from corebase.settings import Settings

if TYPE_CHECKING:
    from corebase.alerts.service import AlertService
    from corebase.containers.service import ContainerService

logger = logging.getLogger(__name__)

LEASE_NAME = "monitor"
# Seconds between two rollup and retention passes.
HOUSEKEEPING_INTERVAL = 30.0


class MonitorService:
    def __init__(
        self,
        settings: Settings,
        runtime: ContainerRuntime,
        collector: Collector,
        bus: EventBus,
        containers: ContainerService,
        alerts: AlertService | None = None,
    ) -> None:
        self.settings = settings.monitoring
        self.runtime = runtime
        self.collector = collector
        self.bus = bus
        self.containers = containers
        self.alerts = alerts
        monitoring = settings.monitoring
        self.store = MetricStore(monitoring.raw_retention, monitoring.rollup_step, monitoring.rollup_retention)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.leader = False
        self.rounds = 0
        self.last_round_seconds = 0.0
        self.watcher = EngineWatcher(
            runtime, bus, is_leader=lambda: self.leader, reconnect_delay=settings.events.reconnect_delay
        )
        self.watcher.listeners.append(self._on_engine_event)
        self._tasks: list[asyncio.Task] = []
        self._wake = asyncio.Event()

    @property
    def fresh_for(self) -> float:
        """Maximum age, in seconds, of a stored sample that GET /stats returns as the current reading."""
        return self.settings.fresh_for or self.settings.interval * 2

    @property
    def lease_seconds(self) -> float:
        return max(3.0, self.settings.interval * 3)

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self.watcher.run(), name="corebase-engine-events"))
        if self.settings.enabled:
            self._tasks.append(asyncio.create_task(self._lead(), name="corebase-monitor"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.leader:
            self.leader = False
            with contextlib.suppress(Exception):
                await leases.release(LEASE_NAME, self.holder)

    # --- leadership ------------------------------------------------------------------------

    async def _lead(self) -> None:
        """Renew or take the lease a few times per lease period; sample while holding it."""
        sampler: asyncio.Task | None = None
        try:
            while True:
                try:
                    held = await leases.acquire(LEASE_NAME, self.holder, self.lease_seconds)
                except Exception:
                    logger.exception("could not renew the monitor lease")
                    held = False
                if held != self.leader:
                    logger.info("%s monitoring (process %s)", "leading" if held else "no longer leading", self.holder)
                self.leader = held
                if held and sampler is None:
                    sampler = asyncio.create_task(self._sample_loop(), name="corebase-sampler")
                elif not held and sampler is not None:
                    sampler.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sampler
                    sampler = None
                await asyncio.sleep(self.lease_seconds / 3)
        finally:
            if sampler is not None:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler

    # --- sampling --------------------------------------------------------------------------

    async def _sample_loop(self) -> None:
        interval = self.settings.interval
        next_round = time.monotonic()
        next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL
        while True:
            try:
                await self.sample_round()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("a sampling round failed")
            if time.monotonic() >= next_housekeeping:
                next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL
                try:
                    await self.store.rollup(settle=interval)
                    await self.store.prune()
                except Exception:
                    logger.exception("rolling up or pruning samples failed")
            # Rounds keep their rhythm; a round that overran starts the next one at once.
            next_round = max(next_round + interval, time.monotonic())
            await asyncio.sleep(next_round - time.monotonic())

    async def sample_round(self) -> list[Sample]:
        """Sample every running container once: store, publish, evaluate alert rules."""
        started = time.perf_counter()
        targets = await running_targets()
        samples = await self.collector.sample(self.runtime, targets) if targets else []
        await self.store.insert(samples)
        for sample in samples:
            self.bus.publish(
                Event(
                    type="metric.sample",
                    container_id=sample.container_id,
                    owner=sample.owner,
                    project_id=sample.project_id,
                    template=sample.template,
                    data=sample_data(sample),
                    time=sample.recorded_at,
                )
            )
        if self.alerts is not None:
            await self.alerts.evaluate(samples, datetime.now(timezone.utc))
        self.rounds += 1
        self.last_round_seconds = time.perf_counter() - started
        return samples

    async def _on_engine_event(self, event: Event) -> None:
        if event.container_id and event.type in ("container.died", "container.started", "container.oom"):
            await self.containers.sync(event.container_id)
        if self.alerts is not None:
            await self.alerts.on_event(event)


async def running_targets() -> list[Target]:
    """Containers that callers own and the database records as running."""
    rows = await Container.select(
        Container.id, Container.docker_id, Container.owner, Container.project_id, Container.template
    ).where((Container.status == "running") & Container.pool_state.is_null() & Container.docker_id.is_not_null())
    return [
        Target(
            container_id=row["id"],
            engine_id=row["docker_id"],
            owner=row["owner"],
            project_id=row["project_id"],
            template=row["template"],
        )
        for row in rows
    ]


def sample_data(sample: Sample) -> dict:
    """Build the `data` of a metric.sample event; owner and project travel in the event itself."""
    return {
        "cpuPercent": sample.cpu_percent,
        "memoryBytes": sample.memory_bytes,
        "memoryLimitBytes": sample.memory_limit_bytes,
        "memoryPercent": sample.memory_percent,
        "networkRxBytes": sample.network_rx_bytes,
        "networkTxBytes": sample.network_tx_bytes,
        "networkRxRate": sample.network_rx_rate,
        "networkTxRate": sample.network_tx_rate,
        "blockReadBytes": sample.block_read_bytes,
        "blockWriteBytes": sample.block_write_bytes,
        "pids": sample.pids,
    }
