"""API records of rules, alerts and delivery attempts, which notifications carry too."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec

from corebase.alerts.notifiers import Notifier
from corebase.alerts.rules import METRICS, RESTART_LOOP, public_notifiers


class _Record(msgspec.Struct, rename="camel", kw_only=True):
    pass


class RuleRecord(_Record):
    id: str
    name: str
    owner: str
    metric: str
    # null where the metric does not use the field: comparator and threshold for oom_killed and
    # exited_unexpectedly, duration for lifecycle rules, window for metric rules.
    comparator: str | None
    threshold: float | None
    duration: float | None
    window: float | None
    scope: str
    scope_value: str | None
    severity: str
    # Write-only values such as a webhook's secret are left out and shown as `secretSet: true`.
    notifiers: list[dict[str, Any]]
    enabled: bool
    created_at: datetime
    updated_at: datetime


class AlertRecord(_Record):
    id: str
    rule_id: str
    container_id: str
    owner: str
    project_id: str | None
    state: str
    severity: str
    metric: str
    # The metric's latest reading; the exit code for exited_unexpectedly and oom_killed; the
    # number of starts in the window for restart_loop.
    value: float | None
    threshold: float
    message: str
    started_at: datetime
    fired_at: datetime | None
    resolved_at: datetime | None
    updated_at: datetime


class AlertPage(_Record):
    items: list[AlertRecord]
    total: int
    limit: int
    offset: int


class DeliveryRecord(_Record):
    id: int
    alert_id: str
    rule_id: str
    notifier: str
    target: str
    transition: str
    attempt: int
    ok: bool
    status_code: int | None
    error: str
    delivered_at: datetime


def rule_record(row: Mapping[str, Any], notifiers: Mapping[str, Notifier]) -> RuleRecord:
    metric = row["metric"]
    is_metric_rule = metric in METRICS
    compares = is_metric_rule or metric == RESTART_LOOP
    return RuleRecord(
        id=row["id"],
        name=row["name"],
        owner=row["owner"],
        metric=metric,
        comparator=row["comparator"] if compares else None,
        threshold=row["threshold"] if compares else None,
        duration=row["duration"] if is_metric_rule else None,
        window=None if is_metric_rule else row["window"],
        scope=row["scope"],
        scope_value=row["scope_value"],
        severity=row["severity"],
        notifiers=public_notifiers(row["notifiers"] or [], notifiers),
        enabled=row["enabled"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def alert_record(row: Mapping[str, Any]) -> AlertRecord:
    return AlertRecord(**{field: row[field] for field in AlertRecord.__struct_fields__})


def delivery_record(row: Mapping[str, Any]) -> DeliveryRecord:
    return DeliveryRecord(**{field: row[field] for field in DeliveryRecord.__struct_fields__})
