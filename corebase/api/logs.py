"""Parsing the query parameters of /api/runtime/logs."""

from __future__ import annotations

from datetime import datetime, timezone

from corebase.errors import InvalidField


def parse_tail(value: str | None) -> int | None:
    """Return the number of lines to keep from the end, or None for all of them; an empty value means all."""
    if not value or value == "all":
        return None
    if value.isdigit():
        return int(value)
    raise InvalidField("tail", f"tail {value!r} is invalid; use a whole number of lines or 'all'", status=400)


def check_window(since: float | None, until: float | None) -> None:
    """Reject a `since` later than `until`, which can match no output."""
    if since is not None and until is not None and since > until:
        raise InvalidField("until", "until is earlier than since; no output can match", status=400)


# 9999-12-31T23:59:59Z, the last second datetime can represent.
LATEST_TIME = 253402300799.0


def parse_log_time(field: str, value: str | None) -> float | None:
    """Read an RFC 3339 time or Unix seconds as Unix seconds, between the epoch and the year 9999."""
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not 0 <= seconds <= LATEST_TIME:
            raise InvalidField(
                field, f"{field} {value!r} is out of range; use Unix seconds between 0 and {LATEST_TIME:.0f}", status=400
            )
        return seconds
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidField(
            field, f"{field} {value!r} is invalid; use RFC 3339 such as 2026-01-31T12:00:00Z or Unix seconds", status=400
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
