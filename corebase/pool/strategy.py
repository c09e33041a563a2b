"""The contract of a pool autoscaling strategy, and the demand figures it receives."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import msgspec


class PoolDemand(msgspec.Struct, frozen=True):
    """Recent demand on one pool, counted over the last `window` seconds across all API processes.

    `claims_per_bucket` splits the window into equal buckets, oldest first, each counting the
    claims served from the pool plus the cold starts it missed. `warm_seconds` is how long a new
    member has recently taken to become ready.
    """

    template: str
    min_idle: int
    max_idle: int
    max_total: int
    window: float
    hits: int
    misses: int
    claims_per_bucket: tuple[int, ...]
    current_target: int
    warm_seconds: float


@runtime_checkable
class PoolStrategy(Protocol):
    """Decides how many idle members a pool keeps ready."""

    name: str

    def target(self, demand: PoolDemand) -> int:
        """Return the idle count to aim for; the pool clamps it to min_idle..max_idle."""
