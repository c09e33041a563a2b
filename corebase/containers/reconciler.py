"""The reconciler: brings container rows back in line with the engine's containers.

The database records what CoreBase intends and the engine reports what exists. A pass lists every
container labelled `corebase.managed=true` and matches each to its row by the `corebase.id` label.
The stored Docker id is not enough, because a process that stops between the engine's create and
the row's update leaves a row without one. Then the pass repairs each difference, of these kinds:

    gone            an active row whose container no longer exists becomes `removed`
    drifted         a row whose state differs from the engine's takes the engine's state
    interrupted     a `creating` row without progress for `reconcile.creating_grace` seconds
                    belongs to a start whose process stopped: its container is removed and the
                    row becomes `failed`, with the reason in `error`
    orphan_removed  a container of this installation without an active row is removed, or
    orphan_adopted  with `reconcile.orphans = "adopt"`, gets a row owned by its corebase.owner label

An interrupted start's row is marked `failed` rather than deleted. Quota usage counts active rows
only, so both free the owner's quota exactly, and the failed row keeps the reason for operators.

Unclaimed pool members belong to the pool manager (corebase.pool.service), which retires stale
ones itself, so a pass leaves their rows and containers alone. A member's container without any
row belongs to no one, and is removed.

Only this installation's containers are removed or adopted: those labelled with its id
(`corebase.installation`) and those named by a row of its database. Containers without CoreBase's
labels are never listed, so never touched. Every write is conditional on the state the pass read,
so a request that changes a row in the meantime wins. One process at a time runs passes, holding
the `reconciler` lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from corebase import leases
from corebase.containers.service import _apply_state, utcnow
from corebase.containers.spec import (
    CONTAINER_ID_PATTERN,
    LABEL_ID,
    LABEL_INSTALLATION,
    LABEL_MANAGED,
    LABEL_OWNER,
    LABEL_PROJECT,
    LABEL_TEMPLATE,
    LABEL_TEMPLATE_VERSION,
    RESERVED_LABEL_PREFIX,
)
from corebase.containers.tables import ACTIVE_STATUSES, Container, row_values
from corebase.errors import ContainerNotFound, EngineError, EngineTimeout, EngineUnavailable, ReconcilerBusy
from corebase.events.bus import EventBus
from corebase.events.types import Event
from corebase.runtime.types import ContainerState
from corebase.settings import Settings

if TYPE_CHECKING:
    from corebase.containers.service import ContainerService
    from corebase.metrics.prometheus import PrometheusMetrics

logger = logging.getLogger(__name__)

LEASE_NAME = "reconciler"
REPAIR_KINDS = ("gone", "drifted", "interrupted", "orphan_removed", "orphan_adopted")
# Row ids per query when rows are looked up by the ids found in the engine, below SQLite's
# limit of 999 parameters in builds older than 3.32.
ID_BATCH = 500
# The engine's status for a container it is removing. The next pass finds the container gone.
REMOVING = "removing"
# Columns that a repair from the engine's state writes. Other columns belong to the API's requests.
STATE_COLUMNS = (
    Container.status,
    Container.exit_code,
    Container.oom_killed,
    Container.started_at,
    Container.finished_at,
    Container.ports,
    Container.error,
    Container.docker_id,
    Container.updated_at,
)


@dataclass
class Repair:
    kind: str
    container_id: str
    engine_id: str | None
    owner: str | None
    project_id: str | None
    template: str | None
    # Status of the row before and after the repair, or None where there is no row.
    previous_status: str | None
    status: str | None
    detail: str


@dataclass
class ReconcileReport:
    process: str
    started_at: datetime
    finished_at: datetime | None = None
    repairs: list[Repair] = field(default_factory=list)
    # Seconds until the newest `creating` row this pass left alone may count as interrupted.
    recheck_in: float | None = None
    # The reason the pass stopped early, such as an unreachable engine, or None for a complete pass.
    error: str | None = None


class _LeaseLost(Exception):
    """Another process took the reconciler lease during a pass."""


class Reconciler:
    """Runs passes at start-up, when woken, and every `reconcile.interval` seconds while it leads."""

    def __init__(
        self, settings: Settings, containers: ContainerService, bus: EventBus, metrics: PrometheusMetrics | None = None
    ) -> None:
        self.settings = settings.reconcile
        self.containers = containers
        self.bus = bus
        self.metrics = metrics
        # The lease lasts three intervals, 15 seconds at most, so that after a crash the next process takes over soon.
        self.leadership = leases.Leadership(LEASE_NAME, "reconciliation", max(3.0, min(15.0, self.settings.interval * 3)))
        self.last: ReconcileReport | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def holder(self) -> str:
        return self.leadership.holder

    @property
    def leader(self) -> bool:
        return self.leadership.leader

    @property
    def lease_seconds(self) -> float:
        return self.leadership.duration

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="corebase-reconciler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.leadership.release()

    def wake(self) -> None:
        """Run a pass soon instead of at the next interval, such as after the engine event stream reconnects."""
        self._wake.set()

    async def run_now(self) -> ReconcileReport:
        """Run one pass now and return its report; raise ReconcilerBusy while another process holds the lease."""
        async with self._lock:
            if not await self._take_lease():
                holder = await leases.current_holder(LEASE_NAME)
                raise ReconcilerBusy(holder or "another process", self.settings.interval, self.lease_seconds)
            renewal = asyncio.create_task(self._renew_during_pass(), name="corebase-reconciler-lease")
            try:
                report = await _Pass(self).run()
            finally:
                renewal.cancel()
            self.last = report
            return report

    async def _run(self) -> None:
        due = time.monotonic()
        while True:
            woken = self._wake.is_set()
            # Cleared before the pass, so a wake-up that arrives during the pass runs another one.
            self._wake.clear()
            try:
                if woken or time.monotonic() >= due:
                    report = await self.run_now()
                    wait = self.settings.interval
                    if report.recheck_in is not None:
                        wait = min(wait, report.recheck_in)
                    due = time.monotonic() + wait
                else:
                    await self._take_lease()
            except ReconcilerBusy:
                # Another process leads. `due` stays in the past, so this process runs a pass as
                # soon as it takes the lease over from a leader that stopped.
                pass
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("reconciliation failed; retrying in %s s", self.settings.interval)
                due = time.monotonic() + self.settings.interval
            timeout = max(0.0, min(self.lease_seconds / 3, due - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _take_lease(self) -> bool:
        return await self.leadership.take()

    async def _renew_during_pass(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self._take_lease()
            except Exception:
                logger.exception("could not renew the reconciler lease during a pass")

    def record(self, repair: Repair) -> None:
        """Log, count and publish one repair."""
        logger.warning(
            "reconciler: %s container %s (engine %s, owner %s): %s",
            repair.kind, repair.container_id, repair.engine_id or "none", repair.owner, repair.detail,
        )
        if self.metrics is not None:
            self.metrics.reconcile_repairs.labels(repair.kind).inc()
        self.bus.publish(
            Event(
                type="container.reconciled",
                container_id=repair.container_id,
                owner=repair.owner,
                project_id=repair.project_id,
                template=repair.template,
                data={
                    "repair": repair.kind,
                    "engineId": repair.engine_id,
                    "previousStatus": repair.previous_status,
                    "status": repair.status,
                    "detail": repair.detail,
                },
            )
        )


class _Pass:
    """One comparison of the database with the engine; `report` collects its repairs."""

    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        self.settings = reconciler.settings
        self.runtime = reconciler.containers.runtime
        self.installation = reconciler.containers.installation_id
        self.report = ReconcileReport(process=reconciler.holder, started_at=utcnow())

    async def run(self) -> ReconcileReport:
        try:
            await self._compare()
        except (EngineUnavailable, EngineTimeout, EngineError) as exc:
            self.report.error = f"the engine failed during the pass: {exc}"
            logger.warning("reconciliation pass stopped early: %s", self.report.error)
        except _LeaseLost:
            self.report.error = "another process took the reconciler lease during the pass and carries on"
            logger.warning("reconciliation pass stopped early: %s", self.report.error)
        self.report.finished_at = utcnow()
        return self.report

    async def _compare(self) -> None:
        # The engine is listed before the rows are read. A start writes its row before it creates
        # its container, so every container listed here has its row by the time rows are read.
        engine: dict[str, list[ContainerState]] = {}
        for state in await self.runtime.list({LABEL_MANAGED: "true"}):
            container_id = state.labels.get(LABEL_ID)
            if container_id:
                engine.setdefault(container_id, []).append(state)

        rows = await (
            Container.objects()
            .output(load_json=True)
            .where(Container.status.is_in(list(ACTIVE_STATUSES)) & Container.pool_state.is_null())
        )
        for row in rows:
            await self._check_row(row, engine.pop(row.id, []))

        others = await _rows_by_id(list(engine))
        for container_id, states in engine.items():
            await self._check_unmatched(container_id, states, others.get(container_id))

    # --- rows --------------------------------------------------------------------------------

    async def _check_row(self, row: Container, states: list[ContainerState]) -> None:
        if row.status == "creating":
            await self._check_creating(row, states)
            return

        state = next((state for state in states if state.engine_id == row.docker_id), states[0] if states else None)
        for extra in states:
            if extra is not state:
                await self._remove_orphan(row.id, extra, row.status, f"another container already stands for row {row.id}")
        if state is None:
            # Missing from the list, the container may still exist: a start that finished after
            # the list was taken has a row but was not listed.
            state = await self._inspect(row.docker_id)
            if state is None:
                await self._mark_gone(row)
                return
        if state.status == REMOVING or (state.engine_id == row.docker_id and state.status == row.status):
            return

        full = await self._inspect(state.engine_id)
        if full is None:
            await self._mark_gone(row)
            return
        await self._correct_drift(row, full)

    async def _check_creating(self, row: Container, states: list[ContainerState]) -> None:
        grace = self.settings.creating_grace
        now = utcnow()
        quiet = (now - row.updated_at).total_seconds()
        if quiet < grace:
            # A start in progress, here or in another process, renews `updated_at` within the grace.
            self._recheck_in(grace - quiet)
            return

        self._check_lease()
        reason = (
            f"the start was interrupted: it made no progress for {grace:g} s (reconcile.creating_grace), "
            "because the process running it stopped"
        )
        taken = await Container.update(
            {Container.status: "failed", Container.error: reason, Container.updated_at: now}
        ).where(
            (Container.id == row.id)
            & (Container.status == "creating")
            & (Container.updated_at < now - timedelta(seconds=grace))
        ).returning(Container.id)
        if not taken:
            return

        engine_ids = {state.engine_id for state in states}
        if row.docker_id is not None:
            engine_ids.add(row.docker_id)
        for engine_id in sorted(engine_ids):
            # When a removal fails, the pass stops with the error, and the next pass removes the
            # container as the orphan of a failed row.
            with contextlib.suppress(ContainerNotFound):
                await self.runtime.remove(engine_id, force=True)
        removed = f"; removed its container {', '.join(sorted(engine_ids))}" if engine_ids else ""
        # A start that died before the engine returned the container's id left none in the row, so
        # the repair names the labelled container found in the engine.
        engine_id = row.docker_id or min(engine_ids, default=None)
        self._record(_row_repair("interrupted", row, engine_id, "failed", f"{reason}{removed}"))

    async def _mark_gone(self, row: Container) -> None:
        self._check_lease()
        now = utcnow()
        detail = "the container no longer exists in the engine"
        updated = await Container.update(
            {Container.status: "removed", Container.error: detail, Container.removed_at: now, Container.updated_at: now}
        ).where(_unchanged(row.id, row.status, row.updated_at)).returning(Container.id)
        if updated:
            self._record(_row_repair("gone", row, row.docker_id, "removed", detail))

    async def _correct_drift(self, row: Container, state: ContainerState) -> None:
        if row.status != state.status:
            detail = f"the row said {row.status} and the engine {state.status}"
        else:
            detail = f"the row named engine container {row.docker_id} and the engine has {state.engine_id}"
        repair = _row_repair("drifted", row, state.engine_id, state.status, detail)
        read_at = row.updated_at
        moved = row.docker_id != state.engine_id
        row.docker_id = state.engine_id
        if not _apply_state(row, state) and not moved:
            return
        self._check_lease()
        row.updated_at = utcnow()
        values = {column: getattr(row, column._meta.name) for column in STATE_COLUMNS}
        updated = await Container.update(values).where(
            _unchanged(row.id, repair.previous_status, read_at)
        ).returning(Container.id)
        if updated:
            self._record(repair)

    # --- containers without an active row ----------------------------------------------------

    async def _check_unmatched(self, container_id: str, states: list[ContainerState], row: dict | None) -> None:
        if row is not None and row["status"] in ACTIVE_STATUSES:
            # An unclaimed pool member, or a row written after this pass read the active rows.
            return
        previous = row["status"] if row is not None else None
        for state in states:
            ours = row is not None or state.labels.get(LABEL_INSTALLATION) == self.installation
            if not ours or state.status == REMOVING:
                continue
            owner = state.labels.get(LABEL_OWNER, "")
            # Unclaimed pool members have no owner, so no user could be charged for them.
            adoptable = self.settings.orphans == "adopt" and owner and CONTAINER_ID_PATTERN.match(container_id)
            why = "it has no row" if row is None else f"its row is {previous}"
            if adoptable:
                await self._adopt(container_id, state, previous, why)
            else:
                await self._remove_orphan(container_id, state, previous, why)

    async def _remove_orphan(self, container_id: str, state: ContainerState, previous: str | None, why: str) -> None:
        self._check_lease()
        try:
            await self.runtime.remove(state.engine_id, force=True)
        except ContainerNotFound:
            return
        self._record(_label_repair("orphan_removed", container_id, state, previous, previous, f"removed the container because {why}"))

    async def _adopt(self, container_id: str, state: ContainerState, previous: str | None, why: str) -> None:
        self._check_lease()
        full = await self._inspect(state.engine_id)
        if full is None:
            return
        row = _adopted_row(container_id, full, state.labels[LABEL_OWNER])
        if previous is None:
            await Container.insert(row)
        else:
            updated = await Container.update(row_values(row)).where(
                (Container.id == container_id) & (Container.status == previous)
            ).returning(Container.id)
            if not updated:
                return
        self._record(_label_repair("orphan_adopted", container_id, full, previous, row.status, f"adopted the container because {why}"))

    # --- helpers -----------------------------------------------------------------------------

    async def _inspect(self, engine_id: str | None) -> ContainerState | None:
        if engine_id is None:
            return None
        try:
            return await self.runtime.inspect(engine_id)
        except ContainerNotFound:
            return None

    def _check_lease(self) -> None:
        if not self.reconciler.leader:
            raise _LeaseLost()

    def _recheck_in(self, seconds: float) -> None:
        current = self.report.recheck_in
        self.report.recheck_in = seconds if current is None else min(current, seconds)

    def _record(self, repair: Repair) -> None:
        self.report.repairs.append(repair)
        self.reconciler.record(repair)


def _unchanged(container_id: str, status: str, updated_at: datetime):
    """Match the row only while it has the status and `updated_at` the pass read.

    A request that changed the row after the pass read it, such as a restart that ran while the
    pass inspected the container, wins, and the next pass looks again.
    """
    return (Container.id == container_id) & (Container.status == status) & (Container.updated_at == updated_at)


def _row_repair(kind: str, row: Container, engine_id: str | None, status: str, detail: str) -> Repair:
    """Build the repair of an active row, before the row changes."""
    return Repair(
        kind=kind,
        container_id=row.id,
        engine_id=engine_id,
        owner=row.owner,
        project_id=row.project_id,
        template=row.template,
        previous_status=row.status,
        status=status,
        detail=detail,
    )


def _label_repair(
    kind: str, container_id: str, state: ContainerState, previous: str | None, status: str | None, detail: str
) -> Repair:
    """Build the repair of a container without an active row, from its labels."""
    return Repair(
        kind=kind,
        container_id=container_id,
        engine_id=state.engine_id,
        owner=state.labels.get(LABEL_OWNER),
        project_id=state.labels.get(LABEL_PROJECT),
        template=state.labels.get(LABEL_TEMPLATE),
        previous_status=previous,
        status=status,
        detail=detail,
    )


def _adopted_row(container_id: str, state: ContainerState, owner: str) -> Container:
    """Build the row of an adopted container from its inspect state and labels."""
    now = utcnow()
    labels = state.labels
    version = labels.get(LABEL_TEMPLATE_VERSION, "")
    row = Container(
        id=container_id,
        docker_id=state.engine_id,
        name=state.name,
        image=state.image,
        template=labels.get(LABEL_TEMPLATE),
        template_version=int(version) if version.isdigit() else None,
        project_id=labels.get(LABEL_PROJECT),
        owner=owner,
        status="creating",
        source="adopted",
        labels={key: value for key, value in labels.items() if not key.startswith(RESERVED_LABEL_PREFIX)},
        ports=[],
        tty=state.tty,
        memory=state.memory,
        nano_cpus=state.nano_cpus,
        created_at=state.created_at or now,
        updated_at=now,
    )
    _apply_state(row, state)
    return row


async def _rows_by_id(container_ids: list[str]) -> dict[str, dict]:
    """Return the id, status and pool state of each row among `container_ids`, by id."""
    found: dict[str, dict] = {}
    for start in range(0, len(container_ids), ID_BATCH):
        batch = container_ids[start : start + ID_BATCH]
        rows = await Container.select(Container.id, Container.status, Container.pool_state).where(
            Container.id.is_in(batch)
        )
        found.update((row["id"], row) for row in rows)
    return found


__all__ = ["LEASE_NAME", "REPAIR_KINDS", "ReconcileReport", "Reconciler", "Repair"]
