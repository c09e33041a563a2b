"""`client.alerts` (alert rules, alert history, deliveries) and `client.audit` (the audit log, admins only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any, Literal

from corebase.alerts.records import AlertPage, AlertRecord, DeliveryRecord, RuleRecord
from corebase.api.audit import AuditEntryRecord, AuditPage
from corebase.client._call import Call, body, path, query
from corebase.client._resource import Resource, S, endpoint, paged
from corebase.client.containers import Moment

RULES = "/api/alerts/rules"
AlertState = Literal["pending", "firing", "resolved"]


class AlertRules(Resource[S]):
    """Alert rules; every argument left as None takes the server's default.

    Metric rules (cpu_percent, memory_percent, memory_bytes, network_rx_rate, network_tx_rate,
    pids) need `comparator` and `threshold`, and take `duration` in seconds. restart_loop needs
    `threshold` (starts) and takes `window` in seconds; oom_killed and exited_unexpectedly take
    `window` only. `scope` is all, project or container, with `scope_value` naming which.
    """

    @endpoint
    def get(self, rule_id: str) -> Call[RuleRecord]:
        return Call("GET", path(RULES, rule_id), RuleRecord)

    @endpoint
    def create(
        self,
        name: str,
        metric: str,
        *,
        comparator: str | None = None,
        threshold: float | None = None,
        duration: float | None = None,
        window: float | None = None,
        scope: str | None = None,
        scope_value: str | None = None,
        severity: str | None = None,
        notifiers: Sequence[Mapping[str, Any]] | None = None,
        enabled: bool | None = None,
    ) -> Call[RuleRecord]:
        # Every argument is a field of the rule's body.
        fields = _rule(**locals())
        return Call("POST", RULES, RuleRecord, body=fields)

    @endpoint
    def update(
        self,
        rule_id: str,
        name: str,
        metric: str,
        *,
        comparator: str | None = None,
        threshold: float | None = None,
        duration: float | None = None,
        window: float | None = None,
        scope: str | None = None,
        scope_value: str | None = None,
        severity: str | None = None,
        notifiers: Sequence[Mapping[str, Any]] | None = None,
        enabled: bool | None = None,
    ) -> Call[RuleRecord]:
        """Replace every field of a rule; a notifier without its secret keeps the stored one."""
        fields = _rule(**locals())
        return Call("PUT", path(RULES, rule_id), RuleRecord, body=fields)

    @endpoint
    def delete(self, rule_id: str) -> Call[None]:
        """Delete a rule; its active alerts resolve and its history stays."""
        return Call("DELETE", path(RULES, rule_id))

    @endpoint
    def list(self) -> Call[list[RuleRecord]]:
        """List the caller's rules; an admin gets every rule."""
        return Call("GET", RULES, list[RuleRecord])


def _rule(**arguments: Any) -> dict[str, Any]:
    arguments.pop("self")
    arguments.pop("rule_id", None)
    if arguments["notifiers"] is not None:
        arguments["notifiers"] = [dict(notifier) for notifier in arguments["notifiers"]]
    return body(**arguments)


class Alerts(Resource[S]):
    @cached_property
    def rules(self) -> AlertRules[S]:
        return AlertRules(self._session)

    @endpoint
    def get(self, alert_id: str) -> Call[AlertRecord]:
        return Call("GET", path("/api/alerts", alert_id), AlertRecord)

    @endpoint
    def deliveries(self, alert_id: str) -> Call[list[DeliveryRecord]]:
        """List every notification delivery attempt of an alert, oldest first."""
        return Call("GET", path("/api/alerts", alert_id, "deliveries"), list[DeliveryRecord])

    @endpoint
    def list(
        self,
        *,
        state: AlertState | None = None,
        rule_id: str | None = None,
        container_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Call[AlertPage]:
        """Read one page of the alert history, newest first."""
        params = query(state=state, rule_id=rule_id, container_id=container_id, limit=limit, offset=offset)
        return Call("GET", "/api/alerts", AlertPage, params=params)

    iterate = paged(list, AlertRecord)


class Audit(Resource[S]):
    """The audit log of changes and denied requests; every method needs an admin key."""

    @endpoint
    def list(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        target: str | None = None,
        start: Moment | None = None,
        end: Moment | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Call[AuditPage]:
        """Read one page of audit records, newest first.

        `action` is an action such as runtime.start, or a prefix such as runtime.*. `start` is
        inclusive and `end` exclusive.
        """
        params = query(actor=actor, action=action, outcome=outcome, target=target, limit=limit, offset=offset)
        # "from" and "to" are Python keywords, so the arguments are named start and end.
        params.update(query(**{"from": start, "to": end}))
        return Call("GET", "/api/audit", AuditPage, params=params)

    iterate = paged(list, AuditEntryRecord)

