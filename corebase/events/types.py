"""The event record every publisher sends and every WebSocket client receives, and client filters."""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from typing import Any

import msgspec

# Event types. Container lifecycle comes from the engine's event stream, except
# container.reconciled, which the reconciler sends for each repair, and container.expired,
# container.idle_stopped and container.auto_removed, which the lifecycle loop sends for each
# action on a container's timers; metric samples come from the collector; alert changes from
# rule evaluation.
CONTAINER_TYPES = (
    "container.created",
    "container.started",
    "container.died",
    "container.stopped",
    "container.removed",
    "container.oom",
    "container.health",
    "container.paused",
    "container.unpaused",
    "container.reconciled",
    "container.expired",
    "container.idle_stopped",
    "container.auto_removed",
)
METRIC_TYPES = ("metric.sample",)
ALERT_TYPES = ("alert.pending", "alert.firing", "alert.resolved")
EVENT_TYPES = CONTAINER_TYPES + METRIC_TYPES + ALERT_TYPES

# One bus channel per family of event types.
CHANNELS = ("container", "metric", "alert")


def channel_of(event_type: str) -> str:
    return event_type.partition(".")[0]


class Event(msgspec.Struct, rename="camel", omit_defaults=True):
    """One event. `data` contains the type's details: exit code, health status, a sample, an alert."""

    type: str
    container_id: str | None = None
    project_id: str | None = None
    owner: str | None = None
    template: str | None = None
    data: dict[str, Any] = {}
    id: str = msgspec.field(default_factory=lambda: "evt_" + secrets.token_hex(8))
    time: datetime = msgspec.field(default_factory=lambda: datetime.now(timezone.utc))


class EventFilter(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """A client's selection of events by type, container id and project id.

    A family such as "container" in `types` matches all of its types, and an empty list matches
    everything. Metric samples match only when `container_ids` names their container.
    """

    types: list[str] = []
    container_ids: list[str] = []
    project_ids: list[str] = []

    def problem(self) -> tuple[str, str] | None:
        """Return (field, message) for an unknown event type, else None."""
        for name in self.types:
            if name not in EVENT_TYPES and name not in CHANNELS:
                allowed = ", ".join(CHANNELS + EVENT_TYPES)
                return "types", f"unknown event type {name!r}; use one of {allowed}"
        return None

    def matches(self, event: Event) -> bool:
        if not self.container_ids and event.type in METRIC_TYPES:
            return False
        if self.types and event.type not in self.types and channel_of(event.type) not in self.types:
            return False
        if self.container_ids and event.container_id not in self.container_ids:
            return False
        if self.project_ids and event.project_id not in self.project_ids:
            return False
        return True
