"""GET /api/audit, and the plugin that records every change and denied request in the audit log."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

import msgspec
from litestar import Controller, get
from litestar.config.app import AppConfig
from litestar.di import NamedDependency
from litestar.middleware.base import DefineMiddleware
from litestar.params import QueryParameter
from litestar.plugins import InitPlugin

from corebase.api.audit_recorder import AuditRecorder
from corebase.api.logs import TIME_PATTERN, parse_log_time
from corebase.api.openapi import problem_responses
from corebase.api.schemas import Offset
from corebase.audit.chain import canonical_details
from corebase.audit.log import OUTCOMES, AuditFilter, AuditLog, find_records
from corebase.auth.caller import Caller
from corebase.errors import Forbidden, InvalidField

CallerDependency = NamedDependency[Caller]


class AuditPlugin(InitPlugin):
    """Adds GET /api/audit and the recorder, as the outermost middleware so that it records every rejection."""

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        audit = AuditLog()
        app_config.state["audit"] = audit
        app_config.route_handlers = [*app_config.route_handlers, AuditController]
        app_config.middleware = [DefineMiddleware(AuditRecorder, audit=audit), *app_config.middleware]
        return app_config


class AuditEntryRecord(msgspec.Struct, rename="camel", kw_only=True):
    """One audit record as GET /api/audit returns it."""

    id: int
    time: datetime
    actor: str | None
    key_id: str | None
    role: str | None
    action: str
    target_type: str | None
    target_id: str | None
    outcome: str
    status: int | None
    reason: str
    source: str
    request_id: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(msgspec.Struct, rename="camel", kw_only=True):
    items: list[AuditEntryRecord]
    total: int
    limit: int
    offset: int


class AuditController(Controller):
    path = "/api/audit"
    tags = ["audit"]

    # opt["access"] = "admin" makes the role guard require an admin key. The handler checks it as well.
    @get("/", summary="Audit records, newest first", opt={"access": "admin"}, responses=problem_responses(422))
    async def list_records(
        self,
        caller: CallerDependency,
        actor: Annotated[str | None, QueryParameter(description="User name")] = None,
        action: Annotated[
            str | None, QueryParameter(description="Action such as runtime.start, or a prefix such as runtime.*")
        ] = None,
        outcome: Annotated[str | None, QueryParameter(enum=list(OUTCOMES))] = None,
        target: Annotated[str | None, QueryParameter(description="Target id, such as a container id")] = None,
        start: Annotated[
            str | None, QueryParameter(name="from", description="RFC 3339 time or Unix seconds", pattern=TIME_PATTERN)
        ] = None,
        end: Annotated[
            str | None,
            QueryParameter(name="to", description="RFC 3339 time or Unix seconds, exclusive", pattern=TIME_PATTERN),
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        offset: Offset = 0,
    ) -> AuditPage:
        if not caller.is_admin:
            raise Forbidden(
                f"the API key of {caller.user!r} has the role {caller.role!r}, but GET /api/audit needs an admin "
                "API key because the audit log covers every user"
            )
        if outcome and outcome not in OUTCOMES:
            raise InvalidField("outcome", f"unknown outcome {outcome!r}; use one of {', '.join(OUTCOMES)}")
        since, until = parse_log_time("from", start), parse_log_time("to", end)
        if since is not None and until is not None and since > until:
            raise InvalidField("to", f"to {end!r} is earlier than from {start!r}; no entry can match")

        filters = AuditFilter(
            actor=actor or None,
            action=action or None,
            outcome=outcome or None,
            target=target or None,
            since=_moment(since),
            until=_moment(until),
            limit=limit,
            offset=offset,
        )
        rows, total = await find_records(filters)
        return AuditPage(items=[_record(row) for row in rows], total=total, limit=limit, offset=offset)


def _moment(seconds: float | None) -> datetime | None:
    return datetime.fromtimestamp(seconds, timezone.utc) if seconds is not None else None


def _record(row: dict[str, Any]) -> AuditEntryRecord:
    created = row["created_at"]
    if isinstance(created, str):
        created = datetime.fromisoformat(created)
    return AuditEntryRecord(
        id=row["id"],
        time=created.astimezone(timezone.utc),
        actor=row["actor"],
        key_id=row["key_id"],
        role=row["role"],
        action=row["action"],
        target_type=row["target_type"],
        target_id=row["target_id"],
        outcome=row["outcome"],
        status=row["status"],
        reason=row["reason"],
        source=row["source"],
        request_id=row["request_id"],
        details=canonical_details(row["details"]),
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )
