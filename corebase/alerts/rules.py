"""Alert rules: what they may contain, which containers they apply to, and when an alert changes state.

A metric rule compares one sample field with a threshold. Its alert goes pending when the
comparison first holds, firing when it has held for `duration` seconds, and resolved when it no
longer holds. A lifecycle rule watches engine events instead. It fires at once and resolves when
the container has run for `window` seconds with no new occurrence, or is removed.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from corebase.alerts.notifiers import Notifier
from corebase.errors import InvalidField
from corebase.metrics.types import Sample

# Sample fields a metric rule may compare, with the unit each is read in.
METRICS = {
    "cpu_percent": "percent of one CPU",
    "memory_percent": "percent of the memory limit",
    "memory_bytes": "bytes",
    "network_rx_rate": "bytes per second",
    "network_tx_rate": "bytes per second",
    "pids": "processes",
}
OOM_KILLED = "oom_killed"
EXITED_UNEXPECTEDLY = "exited_unexpectedly"
RESTART_LOOP = "restart_loop"
LIFECYCLE_METRICS = (OOM_KILLED, EXITED_UNEXPECTEDLY, RESTART_LOOP)

COMPARATORS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
SCOPES = ("container", "template", "project", "all")
SEVERITIES = ("info", "warning", "critical")

MAX_DURATION = 86400.0
MAX_WINDOW = 7 * 86400.0
MAX_NOTIFIERS = 10
MAX_NAME_LENGTH = 128
# Keys a notifiers entry may mark write-only when its notifier names none.
DEFAULT_SECRET_FIELDS = ("secret",)

PENDING, FIRING, RESOLVED = "pending", "firing", "resolved"
ACTIVE_STATES = (PENDING, FIRING)


@dataclass(frozen=True)
class Rule:
    """A stored rule as evaluation uses it.

    `notifiers` keep their secrets; `record` is the rule's API record, which notifications carry.
    `all_owners` is true when the owner is an admin, whose rules watch every owner's containers.
    """

    id: str
    name: str
    owner: str
    metric: str
    comparator: str
    threshold: float
    duration: float
    window: float
    scope: str
    scope_value: str | None
    severity: str
    notifiers: list[dict[str, Any]]
    record: dict[str, Any] = field(default_factory=dict, compare=False)
    all_owners: bool = False

    @property
    def is_lifecycle(self) -> bool:
        return self.metric in LIFECYCLE_METRICS

    def applies_to(self, owner: str | None, container_id: str, project_id: str | None, template: str | None) -> bool:
        """Return whether this rule watches the container. A rule of a user who is not an admin
        watches that user's containers only."""
        if not self.all_owners and owner != self.owner:
            return False
        if self.scope == "container":
            return container_id == self.scope_value
        if self.scope == "project":
            return project_id == self.scope_value
        if self.scope == "template":
            return template == self.scope_value
        return True

    def holds(self, value: float) -> bool:
        return COMPARATORS[self.comparator](value, self.threshold)


def metric_value(sample: Sample, metric: str) -> float | None:
    """Read a rule's metric from a sample; None when this sample has no value for it (a first reading)."""
    value = getattr(sample, metric)
    return None if value is None else float(value)


def metric_transition(
    state: str | None, holds: bool, pending_since: datetime | None, duration: float, now: datetime
) -> str | None:
    """Return the state a metric alert moves to, or None when nothing changes.

    `state` is None when the rule has no active alert on the container. A rule with duration 0
    skips pending and fires at once.
    """
    if state is None:
        if not holds:
            return None
        return FIRING if duration <= 0 else PENDING
    if not holds:
        return RESOLVED
    if state == PENDING and pending_since is not None and (now - pending_since).total_seconds() >= duration:
        return FIRING
    return None


def lifecycle_quiet(
    status: str | None, started_at: datetime | None, last_occurrence: datetime, window: float, now: datetime
) -> bool:
    """Return whether a lifecycle alert can resolve, which needs a running container that has run
    for `window` seconds since both its last start and the last occurrence."""
    if status != "running" or started_at is None:
        return False
    quiet_since = max(started_at, last_occurrence)
    return (now - quiet_since).total_seconds() >= window


def starts_within(starts: list[datetime], now: datetime, window: float) -> int:
    return sum(1 for moment in starts if 0 <= (now - moment).total_seconds() <= window)


# --- validation ------------------------------------------------------------------------------


def validate_rule(
    fields: Mapping[str, Any], notifiers: Mapping[str, Notifier], default_window: float, stored_notifiers: list[dict] = ()
) -> dict[str, Any]:
    """Check a rule as the API received it and return the values to store.

    `fields` uses the API's names in snake_case, with None for an omitted optional field.
    `stored_notifiers` are the entries of the rule being replaced, whose write-only values an
    entry may keep by leaving them out. Raises InvalidField naming the first field at fault.
    """
    name = (fields.get("name") or "").strip()
    if not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidField("name", f"name must be 1 to {MAX_NAME_LENGTH} characters; give the rule a short name")

    metric = fields["metric"]
    if metric not in METRICS and metric not in LIFECYCLE_METRICS:
        allowed = ", ".join([*METRICS, *LIFECYCLE_METRICS])
        raise InvalidField("metric", f"unknown metric {metric!r}; use one of {allowed}")
    values: dict[str, Any] = {"name": name, "metric": metric}
    values.update(_condition(metric, fields, default_window))
    values.update(_scope(fields.get("scope"), fields.get("scope_value")))

    severity = fields.get("severity") or "warning"
    if severity not in SEVERITIES:
        raise InvalidField("severity", f"unknown severity {severity!r}; use one of {', '.join(SEVERITIES)}")
    values["severity"] = severity
    values["notifiers"] = validate_notifiers(fields.get("notifiers") or [], notifiers, stored_notifiers)
    values["enabled"] = bool(fields.get("enabled", True))
    return values


def _condition(metric: str, fields: Mapping[str, Any], default_window: float) -> dict[str, Any]:
    comparator, threshold = fields.get("comparator"), fields.get("threshold")
    duration, window = fields.get("duration"), fields.get("window")

    if metric in METRICS:
        if comparator not in COMPARATORS:
            problem = "is missing" if comparator is None else f"{comparator!r} is invalid"
            raise InvalidField("comparator", f"comparator {problem}; use one of {', '.join(COMPARATORS)}")
        _require_number("threshold", threshold, f"the {METRICS[metric]} that {metric} is compared with")
        duration = 0.0 if duration is None else duration
        if not 0 <= duration <= MAX_DURATION:
            raise InvalidField("duration", f"duration must be 0 to {MAX_DURATION:.0f} seconds; 0 fires at once")
        _forbid("window", window, f"{metric} rules")
        return {"comparator": comparator, "threshold": float(threshold), "duration": float(duration), "window": 0.0}

    _forbid("comparator", comparator, f"{metric} rules")
    _forbid("duration", duration, f"{metric} rules, which fire at once")
    window = default_window if window is None else window
    if not 0 < window <= MAX_WINDOW:
        raise InvalidField("window", f"window must be above 0 and at most {MAX_WINDOW:.0f} seconds")
    if metric == RESTART_LOOP:
        _require_number("threshold", threshold, "the number of starts within the window that fires the alert")
        if threshold < 2 or not float(threshold).is_integer():
            raise InvalidField("threshold", "threshold of a restart_loop rule must be a whole number of starts, at least 2")
        return {"comparator": ">=", "threshold": float(threshold), "duration": 0.0, "window": float(window)}
    _forbid("threshold", threshold, f"{metric} rules")
    return {"comparator": "", "threshold": 0.0, "duration": 0.0, "window": float(window)}


def _require_number(field: str, value: Any, meaning: str) -> None:
    if value is None:
        raise InvalidField(field, f"{field} is missing; give {meaning}")
    if not math.isfinite(value):
        raise InvalidField(field, f"{field} must be a finite number")


def _forbid(field: str, value: Any, where: str) -> None:
    if value is not None:
        raise InvalidField(field, f"{field} does not apply to {where}; remove it")


def _scope(scope: str | None, scope_value: str | None) -> dict[str, Any]:
    scope = scope or "all"
    if scope not in SCOPES:
        raise InvalidField("scope", f"unknown scope {scope!r}; use one of {', '.join(SCOPES)}")
    if scope == "all":
        if scope_value is not None:
            raise InvalidField("scopeValue", "scopeValue does not apply to scope 'all'; remove it")
        return {"scope": scope, "scope_value": None}
    if not scope_value or not scope_value.strip():
        raise InvalidField("scopeValue", f"scope {scope!r} needs scopeValue: the {scope} id or name the rule watches")
    return {"scope": scope, "scope_value": scope_value.strip()}


def validate_notifiers(
    entries: list[Any], notifiers: Mapping[str, Notifier], stored: list[dict] = ()
) -> list[dict[str, Any]]:
    """Check each notifiers entry with its notifier and return them normalised, secrets included."""
    if len(entries) > MAX_NOTIFIERS:
        raise InvalidField("notifiers", f"a rule may have at most {MAX_NOTIFIERS} notifiers; remove some")
    checked = []
    for index, entry in enumerate(entries):
        field = f"notifiers[{index}]"
        if not isinstance(entry, dict):
            raise InvalidField(field, f"{field} must be an object such as {{\"type\": \"log\"}}")
        kind = entry.get("type")
        notifier = notifiers.get(kind) if isinstance(kind, str) else None
        if notifier is None:
            allowed = ", ".join(sorted(notifiers)) or "none (no notifier plugin is loaded)"
            if kind is None:
                raise InvalidField(f"{field}.type", f"{field}.type is missing; use one of {allowed}")
            raise InvalidField(f"{field}.type", f"unknown notifier type {kind!r}; use one of {allowed}")

        entry = _keep_secrets(entry, stored[index] if index < len(stored) else None, secret_fields(notifier))
        try:
            normalised = notifier.validate(entry)
        except ValueError as exc:
            key = getattr(exc, "field", None)
            raise InvalidField(f"{field}.{key}" if key else field, str(exc)) from None
        checked.append({**normalised, "type": kind})
    return checked


def secret_fields(notifier: Notifier | None) -> tuple[str, ...]:
    return tuple(getattr(notifier, "secret_fields", DEFAULT_SECRET_FIELDS))


def _keep_secrets(entry: dict, stored: dict | None, fields: tuple[str, ...]) -> dict:
    """Carry write-only values over from the stored entry at the same position, because the API
    never returned them. This happens only when the type and url are unchanged, so a new url
    needs its secret again."""
    if stored is None or stored.get("type") != entry.get("type") or stored.get("url") != entry.get("url"):
        return entry
    merged = dict(entry)
    for key in fields:
        if key not in merged and key in stored:
            merged[key] = stored[key]
    return merged


def public_notifiers(entries: list[dict[str, Any]], notifiers: Mapping[str, Notifier]) -> list[dict[str, Any]]:
    """Return the entries as the API shows them: each write-only value replaced by `<key>Set: true`."""
    public_entries = []
    for entry in entries:
        hidden = secret_fields(notifiers.get(entry.get("type")))
        public = {key: value for key, value in entry.items() if key not in hidden}
        for key in hidden:
            if entry.get(key):
                public[f"{key}Set"] = True
        public_entries.append(public)
    return public_entries
