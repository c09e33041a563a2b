"""/api/runtime/pools: configure, inspect and delete the pre-warmed pool of a template."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, delete, get, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_204_NO_CONTENT

from corebase.api.schemas import Body, Record
from corebase.auth.caller import Caller
from corebase.pool.service import PoolService, PoolStatus

Count = Annotated[int, msgspec.Meta(ge=0, le=1000)]


class PoolBody(Body):
    min_idle: Count = 1
    max_idle: Count = 4
    max_total: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 8
    # Seconds an idle member may wait before it is replaced.
    idle_ttl: Annotated[float, msgspec.Meta(gt=0, le=30 * 86400)] = 3600.0


class ClaimLatency(Record):
    p50_ms: float | None
    p99_ms: float | None


class PoolRecord(Record):
    template: str
    min_idle: int
    max_idle: int
    max_total: int
    idle_ttl: float
    # Members that exist now: idle ones plus those still starting.
    size: int
    idle: int
    in_flight: int
    # The idle count the autoscaler aims for, between minIdle and maxIdle.
    target: int
    hits: int
    misses: int
    claim_latency: ClaimLatency
    origin: str
    owner: str | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime


def pool_record(status: PoolStatus) -> PoolRecord:
    pool = status.pool
    return PoolRecord(
        template=pool.template,
        min_idle=pool.min_idle,
        max_idle=pool.max_idle,
        max_total=pool.max_total,
        idle_ttl=pool.idle_ttl,
        size=status.idle + status.warming,
        idle=status.idle,
        in_flight=status.warming,
        target=pool.target,
        hits=status.hits,
        misses=status.misses,
        claim_latency=ClaimLatency(p50_ms=status.latency_p50_ms, p99_ms=status.latency_p99_ms),
        origin=pool.origin,
        owner=pool.owner,
        last_error=pool.last_error,
        created_at=pool.created_at,
        updated_at=pool.updated_at,
    )


class PoolController(Controller):
    path = "/api/runtime/pools"
    tags = ["pools"]

    @get("/", summary="List pools with their sizes and claim figures")
    async def list_pools(self, state: State, caller: NamedDependency[Caller]) -> list[PoolRecord]:
        pools: PoolService = state.pools
        return [pool_record(status) for status in await pools.list()]

    @get("/{template:str}", summary="Read one pool's configuration, size and claim figures")
    async def get_pool(self, state: State, caller: NamedDependency[Caller], template: FromPath[str]) -> PoolRecord:
        pools: PoolService = state.pools
        return pool_record(await pools.status(template))

    @put("/{template:str}", summary="Create or change the pool of a template; it fills in the background")
    async def put_pool(
        self, state: State, caller: NamedDependency[Caller], template: FromPath[str], data: JSONBody[PoolBody]
    ) -> PoolRecord:
        pools: PoolService = state.pools
        await pools.configure(caller, template, data.min_idle, data.max_idle, data.max_total, data.idle_ttl)
        return pool_record(await pools.status(template))

    @delete("/{template:str}", status_code=HTTP_204_NO_CONTENT, summary="Delete a pool and its unclaimed members")
    async def delete_pool(self, state: State, caller: NamedDependency[Caller], template: FromPath[str]) -> None:
        pools: PoolService = state.pools
        await pools.delete(caller, template)
