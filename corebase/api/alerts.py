"""/api/alerts: alert rules, the history of the alerts they raised, and each alert's delivery log.

A caller sees and changes only their own rules and alerts; an admin sees and changes all of them.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from corebase.alerts import history
from corebase.alerts.records import AlertPage, AlertRecord, DeliveryRecord, RuleRecord, alert_record, delivery_record
from corebase.alerts.rules import FIRING, PENDING, RESOLVED
from corebase.alerts.service import AlertService
from corebase.api.openapi import problem_responses
from corebase.api.schemas import Body, Offset
from corebase.auth.caller import Caller
from corebase.errors import InvalidField

STATES = (PENDING, FIRING, RESOLVED)

CallerDependency = NamedDependency[Caller]
AlertsDependency = NamedDependency[AlertService]


class RuleBody(Body):
    """An alert rule; PUT replaces every field. Which fields a metric needs is checked by the service.

    Metric rules (cpu_percent, memory_percent, memory_bytes, network_rx_rate, network_tx_rate, pids)
    need comparator and threshold, and take duration. restart_loop needs threshold (starts) and
    takes window; oom_killed and exited_unexpectedly take window only.
    """

    name: str
    metric: str
    comparator: str | None = None
    threshold: float | None = None
    # Seconds the condition of a metric rule must hold before the alert fires; 0 fires at once.
    duration: float | None = None
    # Seconds over which restart_loop counts starts, and that a container must run with no new
    # occurrence before a lifecycle alert resolves; alerts.restart_window when omitted.
    window: float | None = None
    scope: str = "all"
    scope_value: str | None = None
    severity: str = "warning"
    notifiers: list[dict[str, Any]] = []
    enabled: bool = True


class AlertController(Controller):
    path = "/api/alerts"
    tags = ["alerts"]

    @post(
        "/rules",
        status_code=HTTP_201_CREATED,
        summary="Create an alert rule owned by the caller",
        responses=problem_responses(422),
    )
    async def create_rule(self, data: JSONBody[RuleBody], caller: CallerDependency, alerts: AlertsDependency) -> RuleRecord:
        return await alerts.create_rule(caller, msgspec.structs.asdict(data))

    @get("/rules", summary="List the caller's alert rules (every rule for an admin)")
    async def list_rules(self, caller: CallerDependency, alerts: AlertsDependency) -> list[RuleRecord]:
        return await alerts.list_rules(caller)

    @get("/rules/{rule_id:str}", summary="Read an alert rule", responses=problem_responses(404))
    async def get_rule(self, rule_id: FromPath[str], caller: CallerDependency, alerts: AlertsDependency) -> RuleRecord:
        return await alerts.get_rule(caller, rule_id)

    @put(
        "/rules/{rule_id:str}",
        summary="Replace an alert rule",
        description="A notifiers entry that leaves out its secret keeps the stored one when its type and url "
        "are unchanged. Disabling the rule, or changing its metric or scope, resolves its active alerts.",
        responses=problem_responses(404, 422),
    )
    async def update_rule(
        self, rule_id: FromPath[str], data: JSONBody[RuleBody], caller: CallerDependency, alerts: AlertsDependency
    ) -> RuleRecord:
        return await alerts.update_rule(caller, rule_id, msgspec.structs.asdict(data))

    @delete(
        "/rules/{rule_id:str}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Delete an alert rule; its active alerts resolve and its history stays",
        responses=problem_responses(404),
    )
    async def delete_rule(self, rule_id: FromPath[str], caller: CallerDependency, alerts: AlertsDependency) -> None:
        await alerts.delete_rule(caller, rule_id)

    @get("/", summary="Alert history, newest first", responses=problem_responses(422))
    async def list_alerts(
        self,
        caller: CallerDependency,
        # `state` is a reserved parameter name in Litestar, so the handler checks the renamed
        # parameter itself, which keeps "state" as the field an error names.
        alert_state: Annotated[str | None, QueryParameter(name="state", enum=list(STATES))] = None,
        rule_id: Annotated[str | None, QueryParameter(name="ruleId")] = None,
        container_id: Annotated[str | None, QueryParameter(name="containerId")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
        offset: Offset = 0,
    ) -> AlertPage:
        if alert_state and alert_state not in STATES:
            raise InvalidField("state", f"unknown state {alert_state!r}; use one of {', '.join(STATES)}")
        rows, total = await history.list_alerts(caller, alert_state or None, rule_id or None, container_id or None, limit, offset)
        return AlertPage(items=[alert_record(row) for row in rows], total=total, limit=limit, offset=offset)

    @get("/{alert_id:str}", summary="Read an alert", responses=problem_responses(404))
    async def get_alert(self, alert_id: FromPath[str], caller: CallerDependency) -> AlertRecord:
        return alert_record(await history.get_alert(caller, alert_id))

    @get(
        "/{alert_id:str}/deliveries",
        summary="Every notification delivery attempt of an alert, oldest first",
        responses=problem_responses(404),
    )
    async def list_deliveries(self, alert_id: FromPath[str], caller: CallerDependency) -> list[DeliveryRecord]:
        return [delivery_record(row) for row in await history.list_deliveries(caller, alert_id)]
