"""Pre-warmed pools: claiming members on start, and the manager loop that keeps pools filled.

A member is a container row with `pool` set and a `pool_state`:

    warming  -> idle       the member runs and passed its health check
    idle     -> (claimed)  a caller took it; pool_state becomes null and source "pool"
    idle     -> retiring   expired, broken, above target, or its pool was deleted
    warming  -> retiring   its pool was deleted or it did not become ready in time

Every transition is one conditional UPDATE on the current state, so two API processes sharing a
database never hand one member to two callers, and a process never retires a member that another
is handing out. One process at a time (the holder of the "pool-manager" lease) starts and retires
members; any process claims.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import secrets
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

import msgspec
from piccolo.engine.postgres import PostgresEngine

from corebase import db, leases
from corebase.api.schemas import StartRequest
from corebase.auth.caller import Caller
from corebase.containers.networks import POOL_OWNER
from corebase.containers.service import ContainerService, Started, generate_credentials, new_container_id, utcnow
from corebase.containers.spec import LABEL_MANAGED, build_spec, check_name
from corebase.containers.tables import ACTIVE_STATUSES, Container
from corebase.errors import (
    ApiError,
    ContainerNotFound,
    EngineTimeout,
    EngineUnavailable,
    InvalidField,
    NameInUse,
    PoolNotFound,
)
from corebase.pool.strategy import PoolDemand, PoolStrategy
from corebase.pool.tables import Pool
from corebase.settings import PoolSpec, Settings, pool_limits_problem
from corebase.templates import TemplateSpec

logger = logging.getLogger(__name__)

LEASE_NAME = "pool-manager"
LABEL_POOL = "corebase.pool"
# Buckets the demand window is split into for the autoscaler.
DEMAND_BUCKETS = 6
# Claims looked at for the latency percentiles.
LATENCY_SAMPLE = 1000
# Seconds between two readiness checks of a warming member.
READY_POLL_INTERVAL = 0.1
# Columns that raw SQL returns as JSON text.
JSON_COLUMNS = ("command", "labels", "ports", "pending_credentials")
# Seconds the manager waits after the last claim before it starts replacements. Starting a
# container keeps the engine busy, which slows claims that arrive in the same moment.
REFILL_DELAY = 0.3
# Idle members the claim tries before it gives up and falls back to a cold start.
CLAIM_ATTEMPTS = 3


@dataclass
class PoolStatus:
    pool: Pool
    idle: int
    warming: int
    hits: int
    misses: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None


@dataclass
class _Warming:
    tasks: set[asyncio.Task] = field(default_factory=set)
    durations: list[float] = field(default_factory=list)


class PoolService:
    def __init__(self, settings: Settings, containers: ContainerService, strategy: PoolStrategy) -> None:
        self.settings = settings
        self.containers = containers
        self.runtime = containers.runtime
        self.strategy = strategy
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._wake = asyncio.Event()
        self._refill_handle: asyncio.TimerHandle | None = None
        # Ids of members this process is starting, by pool, counted before their rows exist.
        self._starting: dict[str, set[str]] = {}
        self._loop_task: asyncio.Task | None = None
        self._warming: dict[str, _Warming] = {}
        self._backoff_until: dict[str, float] = {}
        self._failures: dict[str, int] = {}

    # --- lifecycle of the manager ----------------------------------------------------------

    async def start(self) -> None:
        """Create the pools declared in settings, then run the manager loop in the background."""
        for template, spec in self.settings.pool.pools.items():
            await self._declare(template, spec)
        self._loop_task = asyncio.create_task(self._run(), name="corebase-pool-manager")

    async def stop(self) -> None:
        """Stop the manager loop and any member still warming; idle members stay for the next start."""
        if self._refill_handle is not None:
            self._refill_handle.cancel()
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        tasks = [task for warming in self._warming.values() for task in warming.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await leases.release(LEASE_NAME, self.holder)
        except Exception:
            logger.exception("could not release the pool-manager lease")

    def wake(self) -> None:
        """Run a manager pass now instead of at the next interval."""
        self._wake.set()

    async def _declare(self, template: str, spec: PoolSpec) -> None:
        await self.containers.templates.get(template)
        existing = await Pool.objects().where(Pool.template == template).first()
        now = utcnow()
        if existing is None:
            await Pool(
                template=template,
                min_idle=spec.min_idle,
                max_idle=spec.max_idle,
                max_total=spec.max_total,
                idle_ttl=spec.idle_ttl,
                target=spec.min_idle,
                origin="config",
                created_at=now,
                updated_at=now,
            ).save()
        else:
            await Pool.update(
                {
                    Pool.min_idle: spec.min_idle,
                    Pool.max_idle: spec.max_idle,
                    Pool.max_total: spec.max_total,
                    Pool.idle_ttl: spec.idle_ttl,
                    Pool.updated_at: now,
                }
            ).where(Pool.template == template)
        logger.info("pool for template %s declared in settings", template)

    # --- API operations ----------------------------------------------------------------------

    async def configure(
        self, caller: Caller, template: str, min_idle: int, max_idle: int, max_total: int, idle_ttl: float
    ) -> Pool:
        """Create or change the pool of `template`; the manager fills it in the background."""
        await self.containers.templates.get(template)
        problem = pool_limits_problem(min_idle, max_idle, max_total, names=("minIdle", "maxIdle", "maxTotal"))
        if problem:
            raise InvalidField(*problem)

        now = utcnow()
        current = await Pool.select(Pool.target).where(Pool.template == template).first()
        values = {
            Pool.target: max(min_idle, min(max_idle, current["target"] if current else min_idle)),
            Pool.min_idle: min_idle,
            Pool.max_idle: max_idle,
            Pool.max_total: max_total,
            Pool.idle_ttl: idle_ttl,
            Pool.updated_at: now,
        }
        updated = await Pool.update(values).where(Pool.template == template).returning(Pool.template)
        if not updated:
            try:
                await Pool(
                    template=template,
                    min_idle=min_idle,
                    max_idle=max_idle,
                    max_total=max_total,
                    idle_ttl=idle_ttl,
                    target=min_idle,
                    owner=caller.user,
                    origin="api",
                    created_at=now,
                    updated_at=now,
                ).save()
            except Exception as exc:
                if "unique" not in str(exc).lower():
                    raise
                await Pool.update(values).where(Pool.template == template)
        logger.info(
            "pool %s set to min_idle=%s max_idle=%s max_total=%s idle_ttl=%s by %s",
            template, min_idle, max_idle, max_total, idle_ttl, caller.user,
        )
        self.wake()
        return await self._pool(template)

    async def delete(self, caller: Caller, template: str) -> None:
        """Delete a pool and remove its unclaimed members."""
        deleted = await Pool.delete().where(Pool.template == template).returning(Pool.template)
        if not deleted:
            raise PoolNotFound(template)
        retired = await Container.update({Container.pool_state: "retiring"}).where(
            (Container.pool == template) & Container.pool_state.is_in(["idle", "warming"])
        ).returning(Container.id, Container.docker_id)
        await asyncio.gather(*(self._discard(row["id"], row["docker_id"]) for row in retired))
        logger.info("pool %s deleted by %s; %s member(s) removed", template, caller.user, len(retired))

    async def delete_if_present(self, caller: Caller, template: str) -> None:
        try:
            await self.delete(caller, template)
        except PoolNotFound:
            pass

    async def status(self, template: str) -> PoolStatus:
        pool = await self._pool(template)
        states = [row["pool_state"] for row in await Container.select(Container.pool_state).where(Container.pool == template)]
        counts = Counter(states)
        hits = await Container.count().where(
            (Container.template == template) & (Container.source == "pool") & (Container.claimed_at >= pool.created_at)
        )
        misses = await Container.count().where(
            (Container.pool == template) & (Container.source == "cold") & (Container.created_at >= pool.created_at)
        )
        latencies = sorted(
            row["claim_ms"]
            for row in await Container.select(Container.claim_ms)
            .where((Container.template == template) & (Container.source == "pool") & (Container.claimed_at >= pool.created_at))
            .order_by(Container.claimed_at, ascending=False)
            .limit(LATENCY_SAMPLE)
            if row["claim_ms"] is not None
        )
        return PoolStatus(
            pool=pool,
            idle=counts.get("idle", 0),
            warming=counts.get("warming", 0),
            hits=hits,
            misses=misses,
            latency_p50_ms=_percentile(latencies, 50),
            latency_p99_ms=_percentile(latencies, 99),
        )

    async def list(self) -> list[PoolStatus]:
        templates = [row["template"] for row in await Pool.select(Pool.template).order_by(Pool.template)]
        return [await self.status(template) for template in templates]

    async def _pool(self, template: str) -> Pool:
        pool = await Pool.objects().where(Pool.template == template).first()
        if pool is None:
            raise PoolNotFound(template)
        return pool

    # --- claims ------------------------------------------------------------------------------

    async def claim(
        self, caller: Caller, request: StartRequest, template: TemplateSpec, *, idempotency_key: str | None = None
    ) -> Started | None:
        """Hand an idle member of the template's pool to the caller, or return None for a cold start.

        Only a request with nothing but a name, labels and a project can be served from a pool,
        because a running container cannot take another command, environment or limits.
        The member is checked in the engine before it is handed out. A claim with an
        `idempotency_key` writes it to the row and keeps the credentials there, as a cold start does.
        """
        began = time.perf_counter()
        if not self.can_serve(request):
            return None
        if request.name is not None:
            await self._check_name_free(request.name)

        for _ in range(CLAIM_ATTEMPTS):
            row = await self._take_idle_within_quota(template, caller)
            if row is None:
                self.refill_soon()
                return None
            try:
                usable = await self._still_running(row)
            except ApiError:
                # The engine cannot be reached, so the member goes back to the pool unchecked. Left
                # claimed, it would count against the caller's quota until the manager collects it.
                await self._release(row.id)
                raise
            if not usable:
                continue
            try:
                if request.name is not None and request.name != row.name:
                    await self.runtime.rename(row.docker_id, request.name)
            except ApiError:
                await self._release(row.id)
                raise
            try:
                await self.containers.join_owner_network(row, caller.user)
            except ApiError:
                # The member may be on the caller's network already, so it cannot go back to the pool.
                await self._discard(row.id, row.docker_id)
                raise

            credentials = dict(row.pending_credentials or {})
            row.owner = caller.user
            row.name = request.name or row.name
            row.labels = dict(request.labels)
            row.project_id = request.project_id
            row.pool_state = None
            row.pending_credentials = credentials if idempotency_key else None
            row.idempotency_key = idempotency_key
            row.source = "pool"
            row.updated_at = utcnow()
            row.claim_ms = (time.perf_counter() - began) * 1000
            if not await self._finish_claim(row):
                # The claim took longer than reconcile.creating_grace, so the manager took it as
                # abandoned and removes the member. Another member, or a cold start, serves the request.
                logger.warning("claim of pool member %s by %s lost the member to the manager; trying again", row.id, caller.user)
                continue
            self.refill_soon()
            logger.info("claimed container %s from pool %s for %s in %.1f ms", row.id, template.name, caller.user, row.claim_ms)
            return Started(row, credentials)
        return None

    @staticmethod
    def can_serve(request: StartRequest) -> bool:
        """Tell whether a request needs nothing that a running pool member cannot give."""
        return _poolable(request)

    async def _finish_claim(self, row: Container) -> bool:
        """Hand the taken member to its caller, writing only the columns a claim changes; return whether it was still taken."""
        finished = await Container.update(
            {
                Container.owner: row.owner,
                Container.name: row.name,
                Container.labels: row.labels,
                Container.project_id: row.project_id,
                Container.pool_state: None,
                Container.pending_credentials: row.pending_credentials,
                Container.idempotency_key: row.idempotency_key,
                Container.source: "pool",
                Container.updated_at: row.updated_at,
                Container.claim_ms: row.claim_ms,
                Container.network: row.network,
            }
        ).where((Container.id == row.id) & (Container.pool_state == "claimed")).returning(Container.id)
        return bool(finished)

    async def _check_name_free(self, name: str) -> None:
        check_name(name)
        if await Container.exists().where((Container.name == name) & Container.status.is_in(list(ACTIVE_STATUSES))):
            raise NameInUse(name)

    async def _take_idle(self, template: TemplateSpec, user: str) -> Container | None:
        """Atomically move the oldest idle member on the template's current version to "claimed".

        Returns the member's row, or None when the pool has no such member. A member of an older
        template version is left for the manager to replace.
        """
        engine = Container._meta.db
        lock = " FOR UPDATE SKIP LOCKED" if isinstance(engine, PostgresEngine) else ""
        rows = await Container.raw(
            "UPDATE containers SET pool_state = 'claimed', owner = {}, claimed_at = {} "
            "WHERE id = (SELECT id FROM containers WHERE pool = {} AND pool_state = 'idle' AND template_version = {} "
            f"ORDER BY created_at LIMIT 1{lock}) AND pool_state = 'idle' RETURNING *",
            user,
            utcnow(),
            template.name,
            template.version,
        )
        if not rows:
            return None
        values = dict(rows[0])
        for column in JSON_COLUMNS:
            if isinstance(values.get(column), str):
                values[column] = json.loads(values[column])
        return Container.from_dict(values)

    async def _take_idle_within_quota(self, template: TemplateSpec, caller: Caller) -> Container | None:
        """Take an idle member and charge it to the caller's quota in one transaction.

        A member that would take the caller past a quota goes back to idle when the transaction
        rolls back, and QuotaExceeded reaches the caller. Admins have no quota, so their claims
        skip the transaction.
        """
        if caller.is_admin:
            return await self._take_idle(template, caller.user)
        async with db.write_transaction():
            row = await self._take_idle(template, caller.user)
            if row is not None:
                await self.containers.quotas.reserve(caller, row.memory, row.nano_cpus, exclude_id=row.id)
            return row

    def refill_soon(self) -> None:
        """Wake the manager once claims pause, so member starts do not compete with a burst of claims."""
        if self._refill_handle is not None:
            self._refill_handle.cancel()
        self._refill_handle = asyncio.get_running_loop().call_later(REFILL_DELAY, self.wake)

    async def _still_running(self, row: Container) -> bool:
        """Check a taken member in the engine; discard it when it is gone or stopped."""
        try:
            state = await self.runtime.inspect(row.docker_id)
        except ContainerNotFound:
            state = None
        if state is not None and state.status == "running" and state.health in (None, "healthy"):
            return True
        logger.warning("pool member %s of %s is no longer usable; discarding it", row.id, row.pool)
        await Container.update({Container.pool_state: "retiring"}).where(Container.id == row.id)
        await self._discard(row.id, row.docker_id)
        return False

    async def _release(self, member_id: str) -> None:
        await Container.update({Container.pool_state: "idle", Container.owner: POOL_OWNER}).where(
            (Container.id == member_id) & (Container.pool_state == "claimed")
        )

    # --- the manager -------------------------------------------------------------------------

    async def _run(self) -> None:
        interval = self.settings.pool.interval
        lease_seconds = max(5.0, interval * 5)
        while True:
            # Cleared before the pass, so a wake-up that arrives during the pass runs another one.
            self._wake.clear()
            try:
                if await leases.acquire(LEASE_NAME, self.holder, lease_seconds):
                    await self._pass(lease_seconds)
            except asyncio.CancelledError:
                raise
            except (EngineUnavailable, EngineTimeout) as exc:
                logger.warning("pool manager pass skipped, because the engine cannot be reached: %s", exc)
            except Exception:
                logger.exception("pool manager pass failed; retrying in %s s", interval)
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
            except TimeoutError:
                pass

    async def _pass(self, lease_seconds: float) -> None:
        pools = await Pool.objects()
        engine_states = {}
        if pools:
            managed = await self.runtime.list({LABEL_MANAGED: "true"})
            engine_states = {state.engine_id: state for state in managed if LABEL_POOL in state.labels}
        for pool in pools:
            # A slow engine can stretch a pass past the lease, so the lease is renewed per pool. That
            # keeps a second process from managing the same pools, and a lost lease ends the pass.
            if not await leases.acquire(LEASE_NAME, self.holder, lease_seconds):
                logger.warning("lost the pool-manager lease during a pass; another process manages pools now")
                return
            await self._maintain(pool, engine_states)
        await self._collect_orphans({pool.template for pool in pools})

    async def _maintain(self, pool: Pool, engine_states: dict) -> None:
        template = await self._current_template(pool)
        if template is None:
            return
        now = utcnow()
        members = await Container.select(
            Container.id, Container.docker_id, Container.pool_state, Container.created_at, Container.started_at,
            Container.template_version,
        ).where((Container.pool == pool.template) & Container.pool_state.is_in(["idle", "warming"]))

        idle = []
        # Members this process is starting count before their rows exist, so maxTotal holds.
        starting = self._starting.setdefault(pool.template, set())
        warming_ids = set(starting)
        for member in members:
            if member["pool_state"] == "warming":
                # NOTE: a member started by a process that died stays counted until this limit
                # passes, which delays refills. Rows do not record which process starts them.
                if member["created_at"] < now - timedelta(seconds=self.settings.pool.warm_timeout * 2):
                    await self._retire(member, "it did not become ready in time")
                else:
                    warming_ids.add(member["id"])
                continue
            state = engine_states.get(member["docker_id"])
            ready_at = member["started_at"] or member["created_at"]
            if state is None or state.status != "running" or state.health == "unhealthy":
                await self._retire(member, "it stopped or was removed outside CoreBase")
            elif ready_at < now - timedelta(seconds=pool.idle_ttl):
                await self._retire(member, f"it was idle longer than {pool.idle_ttl:g} s")
            elif member["template_version"] != template.version:
                await self._retire(member, f"template {pool.template} changed to version {template.version}")
            else:
                idle.append(member)

        target = await self._target(pool)
        for member in sorted(idle, key=lambda item: item["created_at"])[: max(0, len(idle) - target)]:
            await self._retire(member, f"the pool needs only {target} idle member(s)")
        idle_count = min(len(idle), target)

        warming = len(warming_ids)
        missing = min(
            target - idle_count - warming,
            pool.max_total - idle_count - warming,
            self.settings.pool.max_parallel_starts - len(starting),
        )
        if missing > 0 and time.monotonic() >= self._backoff_until.get(pool.template, 0.0):
            state = self._warming.setdefault(pool.template, _Warming())
            for _ in range(missing):
                container_id = new_container_id()
                starting.add(container_id)
                task = asyncio.create_task(
                    self._warm(pool.template, template, container_id), name=f"corebase-pool-warm-{pool.template}"
                )
                state.tasks.add(task)
                task.add_done_callback(state.tasks.discard)
                task.add_done_callback(lambda _, member=container_id: starting.discard(member))

    async def _current_template(self, pool: Pool) -> TemplateSpec | None:
        try:
            return await self.containers.templates.get(pool.template)
        except ApiError as exc:
            await self._record_error(pool.template, f"template unavailable: {exc}")
            return None

    async def _target(self, pool: Pool) -> int:
        window = self.settings.pool.demand_window
        now = utcnow()
        since = now - timedelta(seconds=window)
        counted_from = max(since, pool.created_at)
        # Only claims and misses since the pool exists count; a miss is a cold start the pool could
        # have served, which records the pool's name.
        claimed = await Container.select(Container.claimed_at).where(
            (Container.template == pool.template) & (Container.source == "pool") & (Container.claimed_at >= counted_from)
        )
        missed = await Container.select(Container.created_at).where(
            (Container.pool == pool.template) & (Container.source == "cold") & (Container.created_at >= counted_from)
        )
        moments = [row["claimed_at"] for row in claimed] + [row["created_at"] for row in missed]
        buckets = [0] * DEMAND_BUCKETS
        width = window / DEMAND_BUCKETS
        for moment in moments:
            index = min(DEMAND_BUCKETS - 1, int((moment - since).total_seconds() // width))
            buckets[max(0, index)] += 1

        durations = self._warming.get(pool.template, _Warming()).durations
        demand = PoolDemand(
            template=pool.template,
            min_idle=pool.min_idle,
            max_idle=pool.max_idle,
            max_total=pool.max_total,
            window=window,
            hits=len(claimed),
            misses=len(missed),
            claims_per_bucket=tuple(buckets),
            current_target=pool.target,
            warm_seconds=sum(durations) / len(durations) if durations else 0.0,
        )
        target = max(pool.min_idle, min(pool.max_idle, int(self.strategy.target(demand))))
        if target != pool.target:
            await Pool.update({Pool.target: target}).where(Pool.template == pool.template)
            logger.info("pool %s target %s -> %s (hits=%s misses=%s)", pool.template, pool.target, target, len(claimed), len(missed))
        return target

    async def _warm(self, pool_name: str, template: TemplateSpec, container_id: str) -> None:
        """Start one member and mark it idle once it runs and, with a health check, is healthy."""
        began = time.monotonic()
        credentials = generate_credentials(template)
        request = StartRequest(template=template.name)
        spec = build_spec(
            request,
            self.settings,
            container_id=container_id,
            owner=POOL_OWNER,
            engine_cpus=self.containers.engine_cpus,
            template=template,
            credentials=credentials,
            installation=self.containers.installation_id,
        )
        spec.labels[LABEL_POOL] = pool_name
        system = Caller(key_id="", user=POOL_OWNER, role="admin")
        row = await self.containers.insert_creating(
            container_id, spec, system, template=template, pool=pool_name, credentials=credentials
        )
        try:
            await self.containers.launch(row, spec)
            await self._wait_until_ready(row)
        except asyncio.CancelledError:
            await asyncio.shield(self._discard(row.id, row.docker_id))
            raise
        except EngineUnavailable as exc:
            # An outage is no fault of the template, so it does not delay refills once the engine is back.
            await self._discard(row.id, row.docker_id)
            logger.warning("pool %s: starting member %s failed, because the engine is down: %s", pool_name, row.id, exc)
            return
        except Exception as exc:
            await self._discard(row.id, row.docker_id)
            await self._record_error(pool_name, f"starting a member failed: {exc}")
            return

        # A manager pass that read the pool before it was deleted may start members after the
        # delete retired the old ones. Such a member must not become idle, because claims would
        # take it from a pool that no longer exists. The delete removes the pool row before it
        # retires members, so that retirement also catches a member promoted here.
        pool_exists = Container.pool.is_in(Pool.select(Pool.template).where(Pool.template == pool_name))
        promoted = await Container.update({Container.pool_state: "idle", Container.updated_at: utcnow()}).where(
            (Container.id == row.id) & (Container.pool_state == "warming") & pool_exists
        ).returning(Container.id)
        if not promoted:
            logger.info("removing new member %s: it was retired or its pool %s was deleted while it started", row.id, pool_name)
            await self._discard(row.id, row.docker_id)
            return
        durations = self._warming.setdefault(pool_name, _Warming()).durations
        durations.append(time.monotonic() - began)
        del durations[:-20]
        self._failures.pop(pool_name, None)
        await Pool.update({Pool.last_error: None}).where(Pool.template == pool_name)

    async def _wait_until_ready(self, row: Container) -> None:
        deadline = time.monotonic() + self.settings.pool.warm_timeout
        while True:
            state = await self.runtime.inspect(row.docker_id)
            if state.status != "running":
                raise RuntimeError(f"member {row.id} stopped before it was ready (status {state.status}, exit code {state.exit_code})")
            if state.health in (None, "healthy"):
                return
            if state.health == "unhealthy":
                raise RuntimeError(f"member {row.id} failed its health check")
            if time.monotonic() > deadline:
                raise TimeoutError(f"member {row.id} was not healthy within {self.settings.pool.warm_timeout:g} s")
            await asyncio.sleep(READY_POLL_INTERVAL)

    async def _retire(self, member: dict, reason: str) -> None:
        taken = await Container.update({Container.pool_state: "retiring"}).where(
            (Container.id == member["id"]) & Container.pool_state.is_in(["idle", "warming"])
        ).returning(Container.id)
        if taken:
            logger.info("retiring pool member %s: %s", member["id"], reason)
            await self._discard(member["id"], member["docker_id"])

    async def _discard(self, member_id: str, docker_id: str | None) -> None:
        """Remove a member's engine container and its row.

        When the engine cannot be reached, the row stays as `retiring`, which no pool counts, and a
        later manager pass tries again.
        """
        if docker_id is not None:
            try:
                await self.runtime.remove(docker_id, force=True)
            except ContainerNotFound:
                pass
            except (EngineUnavailable, EngineTimeout) as exc:
                logger.warning("could not remove pool member %s (engine %s) yet: %s", member_id, docker_id, exc)
                await Container.update({Container.pool_state: "retiring"}).where(
                    (Container.id == member_id) & Container.pool_state.is_in(["warming", "retiring"])
                )
                return
            except Exception:
                logger.exception("could not remove pool member %s (engine %s)", member_id, docker_id)
                return
        await Container.delete().where(Container.id == member_id)

    async def _collect_orphans(self, pooled: set[str]) -> None:
        """Remove members left behind by a process that stopped mid-way, or by a failed removal.

        Those are members of pools that no longer exist, members still `retiring` because the
        engine could not be reached to remove them, and members taken by a claim that never
        finished: a finished claim clears `pool_state` before it responds to the caller.
        """
        abandoned = utcnow() - timedelta(seconds=self.settings.pool.warm_timeout * 2)
        rows = await Container.select(
            Container.id, Container.docker_id, Container.pool, Container.pool_state, Container.created_at
        ).where(Container.pool_state.is_in(["idle", "retiring", "warming"]))
        for row in rows:
            stale_warming = row["pool_state"] == "warming" and row["created_at"] < abandoned
            # A retiring member is still here when removing it failed, for example during an engine outage.
            if row["pool_state"] == "retiring" or (
                row["pool"] not in pooled and (row["pool_state"] != "warming" or stale_warming)
            ):
                await self._retire_any(row)
        stalled = await Container.select(Container.id, Container.docker_id, Container.pool, Container.pool_state).where(
            (Container.pool_state == "claimed")
            & (Container.claimed_at < utcnow() - timedelta(seconds=self.settings.reconcile.creating_grace))
        )
        for row in stalled:
            logger.warning("pool member %s of %s was taken by a claim that never finished; removing it", row["id"], row["pool"])
            await self._retire_any(row)

    async def _retire_any(self, row: dict) -> None:
        """Retire a member that is still in the `pool_state` it was selected in, and remove it.

        The condition matters because rows are removed one after another, so an idle member
        selected here may be claimed while earlier ones are removed. Such a member must stay.
        """
        taken = await Container.update({Container.pool_state: "retiring"}).where(
            (Container.id == row["id"]) & (Container.pool_state == row["pool_state"])
        ).returning(Container.id)
        if taken:
            await self._discard(row["id"], row["docker_id"])

    async def _record_error(self, pool_name: str, message: str) -> None:
        failures = self._failures.get(pool_name, 0) + 1
        self._failures[pool_name] = failures
        delay = min(60.0, 2.0 ** min(failures, 6))
        self._backoff_until[pool_name] = time.monotonic() + delay
        logger.warning("pool %s: %s; next attempt in %.0f s", pool_name, message, delay)
        await Pool.update({Pool.last_error: message}).where(Pool.template == pool_name)


def _poolable(request: StartRequest) -> bool:
    """Tell whether a request needs nothing that a running pool member cannot give.

    Timers (ttl, idleTimeout, autoRemove) live in the row, not in the engine, so a claim can give them too.
    """
    plain = msgspec.structs.replace(request, name=None, project_id=None, labels={}, ttl=None, idle_timeout=None, auto_remove=None)
    return plain == StartRequest(template=request.template)


def _percentile(values: list[float], percent: float) -> float | None:
    if not values:
        return None
    rank = max(0, math.ceil(percent / 100 * len(values)) - 1)
    return round(values[rank], 3)


__all__ = ["PoolService", "PoolStatus"]
