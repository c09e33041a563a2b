"""The collector's contract and its output: one sample of one container, for storage, alert rules and events."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

import msgspec

from corebase.runtime.protocol import ContainerRuntime
from corebase.runtime.types import StatsSample


class Target(msgspec.Struct, frozen=True):
    """A running container to sample, with what rules and events need to know about it."""

    container_id: str
    engine_id: str
    owner: str
    project_id: str | None = None
    template: str | None = None


class Sample(msgspec.Struct, rename="camel"):
    """One reading. `cpu_percent` (100 = one full CPU) and the network rates (bytes per second)
    come from this reading and the collector's previous one; None for a container's first reading.
    """

    container_id: str
    owner: str
    project_id: str | None
    template: str | None
    recorded_at: datetime
    cpu_percent: float | None
    memory_bytes: int
    memory_limit_bytes: int
    network_rx_bytes: int
    network_tx_bytes: int
    block_read_bytes: int
    block_write_bytes: int
    pids: int
    network_rx_rate: float | None = None
    network_tx_rate: float | None = None

    @property
    def memory_percent(self) -> float | None:
        if not self.memory_limit_bytes:
            return None
        return self.memory_bytes / self.memory_limit_bytes * 100.0

    @classmethod
    def from_stats(
        cls, target: Target, current: StatsSample, previous: StatsSample | None, cpu_percent: float | None
    ) -> Sample:
        rx_rate = tx_rate = None
        if previous is not None:
            seconds = (current.read_at - previous.read_at).total_seconds()
            if seconds > 0:
                rx_rate = max(0.0, (current.network_rx_bytes - previous.network_rx_bytes) / seconds)
                tx_rate = max(0.0, (current.network_tx_bytes - previous.network_tx_bytes) / seconds)
        return cls(
            container_id=target.container_id,
            owner=target.owner,
            project_id=target.project_id,
            template=target.template,
            recorded_at=current.read_at,
            cpu_percent=cpu_percent,
            memory_bytes=current.memory_used,
            memory_limit_bytes=current.memory_limit,
            network_rx_bytes=current.network_rx_bytes,
            network_tx_bytes=current.network_tx_bytes,
            block_read_bytes=current.block_read_bytes,
            block_write_bytes=current.block_write_bytes,
            pids=current.pids,
            network_rx_rate=rx_rate,
            network_tx_rate=tx_rate,
        )


@runtime_checkable
class Collector(Protocol):
    """A source of sample rounds, provided by the `corebase_collector` hook.

    `sample` reads every target concurrently, each reading bounded by the collector's timeout, and
    returns the samples it got. A target whose reading fails or times out is left out of that round.
    """

    name: str

    async def sample(self, runtime: ContainerRuntime, targets: list[Target]) -> list[Sample]: ...
