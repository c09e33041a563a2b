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

from corebase.api.openapi import problem_responses
from corebase.api.schemas import Body, Record
from corebase.auth.caller import Caller
from corebase.errors import Forbidden, PoolNotFound, TemplateNotFound
from corebase.pool.service import PoolService, PoolStatus
from corebase.templates.catalog import TemplateCatalog

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
    """Pools of the caller's own custom templates; an admin manages every pool.

    A pool of a built-in template serves every user's starts, so only an admin changes it, and a
    pool of another user's template is reported missing, exactly like an unknown template.
    """

    path = "/api/runtime/pools"
    tags = ["pools"]

    @get("/", summary="List pools with their sizes and claim figures")
    async def list_pools(self, state: State, caller: NamedDependency[Caller]) -> list[PoolRecord]:
        pools: PoolService = state.pools
        return [pool_record(status) for status in await pools.list() if await _owns_pool(state, caller, status.pool.template)]

    @get("/{template:str}", summary="Read one pool's configuration, size and claim figures", responses=problem_responses(404))
    async def get_pool(self, state: State, caller: NamedDependency[Caller], template: FromPath[str]) -> PoolRecord:
        pools: PoolService = state.pools
        await _require_pool_owner(state, caller, template)
        return pool_record(await pools.status(template))

    @put(
        "/{template:str}",
        summary="Create or change the pool of a template; it fills in the background",
        responses=problem_responses(404, 422),
    )
    async def put_pool(
        self, state: State, caller: NamedDependency[Caller], template: FromPath[str], data: JSONBody[PoolBody]
    ) -> PoolRecord:
        pools: PoolService = state.pools
        catalog: TemplateCatalog = state.templates
        spec = await catalog.get_visible(caller, template)
        if spec.builtin and not caller.is_admin:
            raise Forbidden(
                f"the pool of the built-in template {template!r} serves every user, so only an admin can change it; "
                "create a pool for one of your own templates instead",
                requiredRole="admin",
            )
        await pools.configure(caller, template, data.min_idle, data.max_idle, data.max_total, data.idle_ttl)
        return pool_record(await pools.status(template))

    @delete(
        "/{template:str}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Delete a pool and its unclaimed members",
        responses=problem_responses(404),
    )
    async def delete_pool(self, state: State, caller: NamedDependency[Caller], template: FromPath[str]) -> None:
        pools: PoolService = state.pools
        await _require_pool_owner(state, caller, template)
        await pools.delete(caller, template)


async def _owns_pool(state: State, caller: Caller, template: str) -> bool:
    """Tell whether the caller may see the pool of `template`: an admin always, else the template's owner."""
    if caller.is_admin:
        return True
    catalog: TemplateCatalog = state.templates
    try:
        spec = await catalog.get(template)
    except TemplateNotFound:
        return False
    return not spec.builtin and spec.owner == caller.user


async def _require_pool_owner(state: State, caller: Caller, template: str) -> None:
    if not await _owns_pool(state, caller, template):
        raise PoolNotFound(template)
