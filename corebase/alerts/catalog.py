"""Stored alert rules: create, read, replace and delete them for their owner, and load the enabled ones.

A caller sees and changes only the rules they own; an admin sees and changes every rule. A rule
that exists but belongs to someone else is reported as not found, so ids do not leak.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import msgspec
from piccolo.query.functions.aggregate import Count, Max

from corebase.alerts.notifiers import Notifier
from corebase.alerts.records import RuleRecord, rule_record
from corebase.alerts.rules import Rule, validate_rule
from corebase.alerts.tables import AlertRule
from corebase.auth.caller import Caller
from corebase.auth.tables import ApiKey
from corebase.containers.tables import Container
from corebase.errors import InvalidField, RuleNotFound

logger = logging.getLogger(__name__)


def new_rule_id() -> str:
    return "rule_" + secrets.token_hex(8)


class RuleCatalog:
    def __init__(self, notifiers: Mapping[str, Notifier], default_window: float) -> None:
        self.notifiers = notifiers
        self.default_window = default_window

    def record(self, row: Mapping[str, Any]) -> RuleRecord:
        return rule_record(row, self.notifiers)

    # --- reads -------------------------------------------------------------------------------

    async def list(self, caller: Caller) -> list[dict[str, Any]]:
        query = AlertRule.select().output(load_json=True).order_by(AlertRule.created_at)
        if not caller.is_admin:
            query = query.where(AlertRule.owner == caller.user)
        return await query

    async def get(self, caller: Caller, rule_id: str) -> dict[str, Any]:
        row = await AlertRule.select().output(load_json=True).where(AlertRule.id == rule_id).first()
        if row is None or not (caller.is_admin or row["owner"] == caller.user):
            raise RuleNotFound(rule_id)
        return row

    async def fingerprint(self) -> tuple[Any, ...]:
        """Return a value that changes whenever any rule is created, changed or deleted."""
        row = await AlertRule.select(Count(alias="rules"), Max(AlertRule.updated_at, alias="latest")).first()
        return (row["rules"], str(row["latest"]))

    async def enabled(self) -> list[Rule]:
        """Load every enabled rule; a rule whose owner holds an active admin key watches every owner's containers."""
        rows = await AlertRule.select().output(load_json=True).where(AlertRule.enabled == True)  # noqa: E712
        admins = {
            row["user"]
            for row in await ApiKey.select(ApiKey.user).where((ApiKey.role == "admin") & ApiKey.revoked_at.is_null())
        }
        return [self.rule(row, all_owners=row["owner"] in admins) for row in rows]

    def rule(self, row: Mapping[str, Any], all_owners: bool = False) -> Rule:
        return Rule(
            id=row["id"],
            name=row["name"],
            owner=row["owner"],
            metric=row["metric"],
            comparator=row["comparator"],
            threshold=row["threshold"],
            duration=row["duration"],
            window=row["window"],
            scope=row["scope"],
            scope_value=row["scope_value"],
            severity=row["severity"],
            notifiers=row["notifiers"] or [],
            record=msgspec.to_builtins(self.record(row)),
            all_owners=all_owners,
        )

    # --- changes -----------------------------------------------------------------------------

    async def create(self, caller: Caller, fields: Mapping[str, Any]) -> dict[str, Any]:
        values = validate_rule(fields, self.notifiers, self.default_window)
        await self._check_container_scope(caller, values)

        now = datetime.now(timezone.utc)
        rule_id = new_rule_id()
        await AlertRule.insert(AlertRule(id=rule_id, owner=caller.user, created_at=now, updated_at=now, **values))
        logger.info("created alert rule %s (%s, metric %s) by %s", rule_id, values["name"], values["metric"], caller.user)
        return await self.get(caller, rule_id)

    async def replace(self, caller: Caller, rule_id: str, fields: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Replace every field of a rule; return the rule before and after."""
        before = await self.get(caller, rule_id)
        values = validate_rule(fields, self.notifiers, self.default_window, stored_notifiers=before["notifiers"] or [])
        # A rule may keep a container that was removed since, so it can still be disabled or edited.
        same_container = (values["scope"], values["scope_value"]) == (before["scope"], before["scope_value"])
        await self._check_container_scope(caller, values, allow_removed=same_container)

        values["updated_at"] = datetime.now(timezone.utc)
        await AlertRule.update({getattr(AlertRule, key): value for key, value in values.items()}).where(AlertRule.id == rule_id)
        logger.info("updated alert rule %s by %s", rule_id, caller.user)
        return before, await self.get(caller, rule_id)

    async def delete(self, caller: Caller, rule_id: str) -> dict[str, Any]:
        """Delete a rule and return it; its alerts and their delivery log stay as history."""
        row = await self.get(caller, rule_id)
        await AlertRule.delete().where(AlertRule.id == rule_id)
        logger.info("deleted alert rule %s by %s", rule_id, caller.user)
        return row

    async def _check_container_scope(self, caller: Caller, values: Mapping[str, Any], allow_removed: bool = False) -> None:
        if values["scope"] != "container":
            return
        container_id = values["scope_value"]
        row = (
            await Container.select(Container.owner, Container.status)
            .where((Container.id == container_id) & Container.pool_state.is_null())
            .first()
        )
        if row is None or not (caller.is_admin or row["owner"] == caller.user):
            raise InvalidField(
                "scopeValue",
                f"container {container_id!r} does not exist; give the id of one of your containers "
                "from GET /api/runtime/containers",
            )
        if row["status"] == "removed" and not allow_removed:
            raise InvalidField("scopeValue", f"container {container_id!r} was removed; a rule on it would never fire")
