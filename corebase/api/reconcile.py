"""/api/admin/reconcile: the reconciler's state in this process, and a pass on request."""

from __future__ import annotations

from datetime import datetime

import msgspec
from litestar import Controller, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.status_codes import HTTP_200_OK

from corebase import leases
from corebase.api.schemas import Record
from corebase.auth.access import ADMIN_ONLY
from corebase.auth.caller import Caller
from corebase.containers.reconciler import LEASE_NAME, ReconcileReport, Reconciler


class RepairRecord(Record):
    # gone, drifted, interrupted, orphan_removed or orphan_adopted.
    kind: str
    container_id: str
    engine_id: str | None
    owner: str | None
    project_id: str | None
    template: str | None
    previous_status: str | None
    status: str | None
    detail: str


class ReconcileReportRecord(Record):
    process: str
    started_at: datetime
    finished_at: datetime | None
    repairs: list[RepairRecord]
    # The reason the pass stopped early, such as an unreachable engine, or null for a complete pass.
    error: str | None


class ReconcilerRecord(Record):
    process: str
    leader: bool
    # The process that holds the reconciler lease, or null when the lease is free.
    leader_process: str | None
    interval: float
    creating_grace: float
    orphans: str
    installation: str | None
    # The last pass this process ran, or null when it has run none.
    last_pass: ReconcileReportRecord | None


class ReconcileController(Controller):
    path = "/api/admin/reconcile"
    tags = ["admin"]
    opt = {"access": ADMIN_ONLY}

    @get("/", summary="Read the reconciler's settings, its leader and this process's last pass (admin)")
    async def status(self, state: State, caller: NamedDependency[Caller]) -> ReconcilerRecord:
        reconciler: Reconciler = state.reconciler
        return ReconcilerRecord(
            process=reconciler.holder,
            leader=reconciler.leader,
            leader_process=await leases.current_holder(LEASE_NAME),
            interval=reconciler.settings.interval,
            creating_grace=reconciler.settings.creating_grace,
            orphans=reconciler.settings.orphans,
            installation=reconciler.containers.installation_id,
            last_pass=report_record(reconciler.last) if reconciler.last else None,
        )

    @post(
        "/",
        status_code=HTTP_200_OK,
        summary="Compare the database with the engine now and return what was repaired (admin)",
        description="Returns 409 while another API process holds the reconciler lease.",
        opt={"audit_action": "admin.reconcile"},
    )
    async def run(self, state: State, caller: NamedDependency[Caller]) -> ReconcileReportRecord:
        return report_record(await state.reconciler.run_now())


def report_record(report: ReconcileReport) -> ReconcileReportRecord:
    return msgspec.convert(report, ReconcileReportRecord, from_attributes=True)
