"""A container's timers: its ttl, its idle timeout and auto-remove, from the request or its template.

A request's value replaces the template's, and neither may pass the configured maximum
(`lifecycle.max_ttl`, `lifecycle.max_idle_timeout`). The row keeps the timers, so the lifecycle
loop (corebase.containers.lifecycle) acts on them in whichever process runs it, after restarts too.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec

from corebase.containers.tables import Container
from corebase.durations import format_duration, parse_duration
from corebase.errors import InvalidField
from corebase.settings import LifecycleSettings
from corebase.templates import TemplateSpec


class Timers(msgspec.Struct, frozen=True):
    """Seconds until removal after the start, seconds without activity until a stop, and removal after exit."""

    ttl: float | None = None
    idle_timeout: float | None = None
    auto_remove: bool = False


def check_duration(field: str, value: float | str | None, maximum: float, setting: str) -> float | None:
    """Return `value` in seconds, or raise InvalidField naming `field` when it is unreadable or above `maximum`."""
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise InvalidField(field, f"{field}: {exc}") from None
    if seconds > maximum:
        raise InvalidField(
            field,
            f"{field} {value!r} is above the maximum of {format_duration(maximum)} ({maximum:g} seconds, setting "
            f"{setting}); ask for less",
        )
    return seconds


def resolve_timers(
    settings: LifecycleSettings,
    template: TemplateSpec | None,
    *,
    ttl: float | str | None,
    idle_timeout: float | str | None,
    auto_remove: bool | None,
) -> Timers:
    """Return the timers of a new container: the request's values, else its template's, checked against the maximums."""
    requested_ttl = check_duration("ttl", ttl, settings.max_ttl, "lifecycle.max_ttl")
    requested_idle = check_duration("idleTimeout", idle_timeout, settings.max_idle_timeout, "lifecycle.max_idle_timeout")
    defaults = template or TemplateSpec(name="", image="", category="custom")
    # A template stored before a maximum was lowered may exceed it; the new maximum wins.
    return Timers(
        ttl=requested_ttl if requested_ttl is not None else _capped(defaults.ttl, settings.max_ttl),
        idle_timeout=requested_idle if requested_idle is not None else _capped(defaults.idle_timeout, settings.max_idle_timeout),
        auto_remove=auto_remove if auto_remove is not None else defaults.auto_remove,
    )


def apply_timers(row: Container, timers: Timers) -> None:
    """Copy the timers onto a row; `start_clock` sets the times that follow from them."""
    row.ttl = timers.ttl
    row.idle_timeout = timers.idle_timeout
    row.auto_remove = timers.auto_remove


def start_clock(row: Container, started_at: datetime) -> None:
    """Set the expiry and the last activity of a container that started, or was claimed, at `started_at`."""
    row.expires_at = started_at + timedelta(seconds=row.ttl) if row.ttl is not None else None
    row.last_activity_at = started_at


# The columns that `apply_timers` and `start_clock` set.
TIMER_COLUMNS = (
    Container.ttl,
    Container.expires_at,
    Container.idle_timeout,
    Container.last_activity_at,
    Container.auto_remove,
)


def _capped(seconds: float | None, maximum: float) -> float | None:
    return None if seconds is None else min(seconds, maximum)
