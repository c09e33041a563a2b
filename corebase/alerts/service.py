"""Alert evaluation: rules against samples and engine events, alert state in the database, notifications.

The monitoring leader calls `evaluate` after each sampling round and `on_event` for each
container lifecycle event. Every alert lives in the `alerts` table, so a new leader continues
from the rows the old one left. Each state change is a conditional UPDATE from the state last
read, so a change that another process makes at the same time is applied once.

States of a metric alert, per rule and container:

    (none) --condition holds--> pending --held for `duration`--> firing --condition fails--> resolved
    a rule with duration 0 goes straight to firing
    pending --condition fails--> resolved, with firedAt null and no notification

A metric alert also resolves when its container stops running or is removed, when its rule is
deleted, disabled or moved to another metric or scope, or when the rule no longer watches the
container. Lifecycle alerts fire at once, and a new occurrence while one fires updates it. It
resolves once the container has run for the rule's `window` with no new occurrence, or is
removed. Every change is published on the event bus; firing, and resolving an alert that fired,
is sent to each of the rule's notifiers in the background.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

import msgspec

from corebase.alerts.catalog import RuleCatalog
from corebase.alerts.delivery import DeliveryQueue
from corebase.alerts.notifiers import Notification, Notifier
from corebase.alerts.records import RuleRecord, alert_record
from corebase.alerts.rules import (
    ACTIVE_STATES,
    EXITED_UNEXPECTEDLY,
    FIRING,
    OOM_KILLED,
    PENDING,
    RESOLVED,
    RESTART_LOOP,
    Rule,
    lifecycle_quiet,
    metric_transition,
    metric_value,
    starts_within,
)
from corebase.alerts.tables import Alert
from corebase.auth.caller import Caller
from corebase.containers.tables import Container
from corebase.events.bus import EventBus
from corebase.events.types import Event
from corebase.metrics.types import Sample
from corebase.settings import Settings

logger = logging.getLogger(__name__)

# Seconds after which the enabled rules are reloaded even when no rule changed, so a change of
# admin keys, or a rule change stamped by a process whose clock runs behind, is seen.
RULE_RELOAD_INTERVAL = 60.0


class AlertService:
    def __init__(self, settings: Settings, bus: EventBus, notifiers: Iterable[Notifier]) -> None:
        alerts = settings.alerts
        self.bus = bus
        self.notifiers: dict[str, Notifier] = {notifier.name: notifier for notifier in notifiers}
        self.catalog = RuleCatalog(self.notifiers, alerts.restart_window)
        self.deliveries = DeliveryQueue(alerts.webhook_attempts, alerts.webhook_backoff, alerts.webhook_timeout)
        self._rules: list[Rule] = []
        self._fingerprint: tuple[Any, ...] | None = None
        self._loaded_at = float("-inf")
        # Start times per container for restart_loop rules.
        # NOTE: kept in this process only, so a new monitoring leader counts starts from zero.
        self._starts: dict[str, deque[datetime]] = {}
        # Evaluation and event handling both change alerts; one at a time keeps their reads current.
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self.deliveries.start()

    async def stop(self) -> None:
        await self.deliveries.stop()

    # --- rules, for the API ----------------------------------------------------------------

    async def list_rules(self, caller: Caller) -> list[RuleRecord]:
        return [self.catalog.record(row) for row in await self.catalog.list(caller)]

    async def get_rule(self, caller: Caller, rule_id: str) -> RuleRecord:
        return self.catalog.record(await self.catalog.get(caller, rule_id))

    async def create_rule(self, caller: Caller, fields: Mapping[str, Any]) -> RuleRecord:
        row = await self.catalog.create(caller, fields)
        self._fingerprint = None
        return self.catalog.record(row)

    async def update_rule(self, caller: Caller, rule_id: str, fields: Mapping[str, Any]) -> RuleRecord:
        """Replace a rule. Disabling it, or changing what it watches, resolves its active alerts."""
        before, after = await self.catalog.replace(caller, rule_id, fields)
        self._fingerprint = None
        watched = ("metric", "scope", "scope_value", "owner")
        if not after["enabled"] or any(before[key] != after[key] for key in watched):
            reason = "the rule was disabled" if not after["enabled"] else "the rule now watches something else"
            await self._resolve_rule_alerts(self.catalog.rule(before), reason)
        return self.catalog.record(after)

    async def delete_rule(self, caller: Caller, rule_id: str) -> None:
        """Delete a rule and resolve its active alerts, telling its notifiers about those that fired."""
        row = await self.catalog.delete(caller, rule_id)
        self._fingerprint = None
        await self._resolve_rule_alerts(self.catalog.rule(row), "the rule was deleted")

    async def _resolve_rule_alerts(self, rule: Rule, reason: str) -> None:
        now = datetime.now(timezone.utc)
        rows = await Alert.select().where((Alert.rule_id == rule.id) & Alert.state.is_in(list(ACTIVE_STATES)))
        for row in rows:
            await self._move(row, rule, RESOLVED, now, None, reason)

    async def _enabled_rules(self) -> list[Rule]:
        fingerprint = await self.catalog.fingerprint()
        if fingerprint != self._fingerprint or time.monotonic() - self._loaded_at > RULE_RELOAD_INTERVAL:
            self._rules = await self.catalog.enabled()
            self._fingerprint = fingerprint
            self._loaded_at = time.monotonic()
        return self._rules

    # --- metric rules ------------------------------------------------------------------------

    async def evaluate(self, samples: list[Sample], now: datetime) -> None:
        """Apply every enabled metric rule to one round of samples, and resolve alerts whose cause ended."""
        async with self._lock:
            rules = await self._enabled_rules()
            active = await Alert.select().where(Alert.state.is_in(list(ACTIVE_STATES)))
            by_key = {(row["rule_id"], row["container_id"]): row for row in active}
            handled: set[str] = set()

            for sample in samples:
                for rule in rules:
                    if rule.is_lifecycle or not rule.applies_to(
                        sample.owner, sample.container_id, sample.project_id, sample.template
                    ):
                        continue
                    row = by_key.get((rule.id, sample.container_id))
                    if row is not None and row["metric"] != rule.metric:
                        # The rule moved to another metric; its old alert resolves below.
                        row = None
                    if row is not None:
                        handled.add(row["id"])
                    await self._apply_sample(rule, sample, row, now)

            unhandled = [row for row in active if row["id"] not in handled]
            if unhandled:
                await self._resolve_ended(unhandled, {rule.id: rule for rule in rules}, samples, now)

    async def _apply_sample(self, rule: Rule, sample: Sample, row: dict[str, Any] | None, now: datetime) -> None:
        value = metric_value(sample, rule.metric)
        if value is None:
            return
        state = row["state"] if row is not None else None
        moved_to = metric_transition(state, rule.holds(value), row["started_at"] if row else None, rule.duration, now)
        if moved_to is None:
            return

        condition = f"{rule.metric} is {_number(value)}, {rule.comparator} {_number(rule.threshold)}"
        if row is None:
            if moved_to == PENDING:
                message = f"{condition}; fires if this is still true after {_number(rule.duration)} s"
            else:
                message = condition
            await self._open(rule, sample.container_id, sample.project_id, moved_to, value, message, now)
        elif moved_to == FIRING:
            message = f"{condition} for {_number(rule.duration)} s"
            await self._move(row, rule, FIRING, now, value, message)
        else:
            message = f"{rule.metric} is {_number(value)}, no longer {rule.comparator} {_number(rule.threshold)}"
            await self._move(row, rule, RESOLVED, now, value, message)

    async def _resolve_ended(
        self, rows: list[dict[str, Any]], rules: dict[str, Rule], samples: list[Sample], now: datetime
    ) -> None:
        """Resolve the active alerts that no sample evaluated this round, when their cause has ended.

        A running container missing from the round (its reading timed out) keeps its alerts.
        """
        sampled = {sample.container_id for sample in samples}
        containers = {
            row["id"]: row
            for row in await Container.select(Container.id, Container.status, Container.started_at).where(
                Container.id.is_in(list({row["container_id"] for row in rows}))
            )
        }
        for row in rows:
            rule = rules.get(row["rule_id"])
            container = containers.get(row["container_id"])
            status = container["status"] if container else None
            if rule is None or rule.metric != row["metric"]:
                # Deleting, disabling or changing a rule resolves its alerts itself; this catches a
                # change that raced with evaluation. The rule's notifiers are unknown here.
                await self._move(row, None, RESOLVED, now, None, "the rule was deleted, disabled or changed")
            elif status in (None, "removed"):
                await self._move(row, rule, RESOLVED, now, None, "the container was removed")
            elif rule.is_lifecycle:
                started_at = container["started_at"]
                if lifecycle_quiet(status, started_at, row["updated_at"], rule.window, now):
                    message = f"the container has run for {_number(rule.window)} s with no new occurrence"
                    await self._move(row, rule, RESOLVED, now, None, message)
            elif row["container_id"] in sampled:
                await self._move(row, rule, RESOLVED, now, None, "the rule no longer watches this container")
            elif status != "running":
                await self._move(row, rule, RESOLVED, now, None, f"the container is no longer running (status {status})")

    # --- lifecycle rules ---------------------------------------------------------------------

    async def on_event(self, event: Event) -> None:
        """Apply the lifecycle rules to one container event; a removal resolves every alert of the container."""
        container_id = event.container_id
        if not container_id:
            return
        async with self._lock:
            now = event.time
            if event.type == "container.removed":
                self._starts.pop(container_id, None)
                rows = await Alert.select().where(
                    (Alert.container_id == container_id) & Alert.state.is_in(list(ACTIVE_STATES))
                )
                rules = {rule.id: rule for rule in await self._enabled_rules()}
                for row in rows:
                    await self._move(row, rules.get(row["rule_id"]), RESOLVED, now, None, "the container was removed")
                return

            rules = [
                rule
                for rule in await self._enabled_rules()
                if rule.is_lifecycle and rule.applies_to(event.owner, container_id, event.project_id, event.template)
            ]
            if event.type == "container.started":
                await self._on_start(event, rules, now)
                return

            exit_code = event.data.get("exitCode")
            died = event.type == "container.died"
            if event.type == "container.oom" or (died and event.data.get("oomKilled")):
                message = "the container was killed for exceeding its memory limit"
                for rule in rules:
                    if rule.metric == OOM_KILLED:
                        await self._occur(rule, event, exit_code, message, now)
            if died and exit_code not in (None, 0) and not event.data.get("requested"):
                message = f"the container exited with code {exit_code} without a stop request"
                for rule in rules:
                    if rule.metric == EXITED_UNEXPECTEDLY:
                        await self._occur(rule, event, exit_code, message, now)

    async def _on_start(self, event: Event, rules: list[Rule], now: datetime) -> None:
        restart_rules = [rule for rule in rules if rule.metric == RESTART_LOOP]
        # Keep starts as long as the longest window of any restart_loop rule needs them.
        keep = max((rule.window for rule in self._rules if rule.metric == RESTART_LOOP), default=0.0)
        starts = self._starts.setdefault(event.container_id, deque())
        starts.append(now)
        while starts and (now - starts[0]).total_seconds() > keep:
            starts.popleft()
        if not starts:
            del self._starts[event.container_id]

        for rule in restart_rules:
            count = starts_within(list(starts), now, rule.window)
            if count >= rule.threshold:
                message = f"the container started {count} times within {_number(rule.window)} s"
                await self._occur(rule, event, count, message, now)

    async def _occur(self, rule: Rule, event: Event, value: float | None, message: str, now: datetime) -> None:
        """Fire a lifecycle alert, or record a new occurrence on the one already firing."""
        row = (
            await Alert.select()
            .where(
                (Alert.rule_id == rule.id)
                & (Alert.container_id == event.container_id)
                & Alert.state.is_in(list(ACTIVE_STATES))
            )
            .first()
        )
        if row is None:
            await self._open(rule, event.container_id, event.project_id, FIRING, value, message, now)
            return
        values: dict[Any, Any] = {Alert.updated_at: now, Alert.message: message}
        if value is not None:
            values[Alert.value] = float(value)
        await Alert.update(values).where(Alert.id == row["id"])

    # --- state changes -----------------------------------------------------------------------

    async def _open(
        self, rule: Rule, container_id: str, project_id: str | None, state: str, value: float | None, message: str, now: datetime
    ) -> None:
        row = {
            "id": "alr_" + secrets.token_hex(8),
            "rule_id": rule.id,
            "container_id": container_id,
            "owner": rule.owner,
            "project_id": project_id,
            "state": state,
            "severity": rule.severity,
            "metric": rule.metric,
            "value": None if value is None else float(value),
            "threshold": rule.threshold,
            "message": message,
            "started_at": now,
            "fired_at": now if state == FIRING else None,
            "resolved_at": None,
            "updated_at": now,
        }
        await Alert.insert(Alert(**row))
        self._announce(row, rule, state)

    async def _move(
        self, row: dict[str, Any], rule: Rule | None, state: str, now: datetime, value: float | None, message: str
    ) -> bool:
        """Change an alert's state if it is still in the state `row` was read in; return whether it changed."""
        values: dict[str, Any] = {"state": state, "updated_at": now, "message": message}
        if value is not None:
            values["value"] = float(value)
        if state == FIRING:
            values["fired_at"] = now
        if state == RESOLVED:
            values["resolved_at"] = now
        changed = await (
            Alert.update({getattr(Alert, key): item for key, item in values.items()})
            .where((Alert.id == row["id"]) & (Alert.state == row["state"]))
            .returning(Alert.id)
        )
        if not changed:
            return False
        row.update(values)
        self._announce(row, rule, state)
        return True

    def _announce(self, row: dict[str, Any], rule: Rule | None, state: str) -> None:
        """Publish the change; send it to the rule's notifiers when the alert fires, or resolves after firing."""
        record = msgspec.to_builtins(alert_record(row))
        logger.info(
            "alert %s %s: rule %s on container %s: %s", row["id"], state, row["rule_id"], row["container_id"], row["message"]
        )
        self.bus.publish(
            Event(
                type=f"alert.{state}",
                container_id=row["container_id"],
                project_id=row["project_id"],
                owner=row["owner"],
                data={**record, "ruleName": rule.name if rule else None},
                time=row["updated_at"],
            )
        )
        if rule is None or not (state == FIRING or (state == RESOLVED and row["fired_at"] is not None)):
            return
        for entry in rule.notifiers:
            notifier = self.notifiers.get(entry.get("type"))
            if notifier is None:
                logger.warning(
                    "alert %s: rule %s names notifier %r, which no loaded plugin provides; nothing sent",
                    row["id"], rule.id, entry.get("type"),
                )
                continue
            notification = Notification(
                transition=state, alert=record, rule=rule.record, delivery_id="dlv_" + secrets.token_hex(8)
            )
            self.deliveries.submit(notifier, entry, notification, row["id"], rule.id)


def _number(value: float) -> str:
    """Format a reading for a message: whole numbers without decimals, others to two places."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.2f}"

