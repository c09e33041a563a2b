"""Parsing the query parameters of /api/runtime/logs, and the times other queries share with it.

The patterns are also the parameters' OpenAPI patterns, so a value that matches one is well-formed:
it is either accepted or rejected with 422 for its value, such as a date that does not exist.
An empty value means the parameter was left out.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from corebase.errors import InvalidField

# A number of lines (at most nine digits, which the engine accepts) or "all".
TAIL_PATTERN = r"^(all|[0-9]{1,9})?$"
# Unix seconds, or an RFC 3339 date and time; a time without an offset is read as UTC.
TIME_PATTERN = (
    r"^([0-9]{1,12}(\.[0-9]{1,9})?"
    r"|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})?)?$"
)
_TAIL = re.compile(TAIL_PATTERN)
_TIME = re.compile(TIME_PATTERN)


def parse_tail(value: str | None) -> int | None:
    """Return the number of lines to keep from the end, or None for all of them."""
    if not value or value == "all":
        return None
    if _TAIL.fullmatch(value):
        return int(value)
    raise InvalidField("tail", f"tail {value!r} is invalid; use a whole number of lines (up to 9 digits) or 'all'", status=400)


def check_window(since: float | None, until: float | None) -> None:
    """Reject a `since` later than `until`, which can match no output."""
    if since is not None and until is not None and since > until:
        raise InvalidField("until", "until is earlier than since; no output can match")


# 9999-12-31T23:59:59Z, the last second datetime can represent.
LATEST_TIME = 253402300799.0


def parse_log_time(field: str, value: str | None) -> float | None:
    """Read an RFC 3339 time or Unix seconds as Unix seconds, between the epoch and the year 9999.

    A value that does not match TIME_PATTERN is a 400; a date that does not exist, or seconds past
    the year 9999, a 422.
    """
    if not value:
        return None
    if not _TIME.fullmatch(value):
        raise InvalidField(
            field, f"{field} {value!r} is invalid; use RFC 3339 such as 2026-01-31T12:00:00Z or Unix seconds", status=400
        )
    if "T" not in value:
        seconds = float(value)
        if seconds > LATEST_TIME:
            raise InvalidField(field, f"{field} {value!r} is out of range; use Unix seconds up to {LATEST_TIME:.0f}")
        return seconds
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidField(field, f"{field} {value!r} is not a valid date and time ({exc}); check the date and time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
