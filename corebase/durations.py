"""Durations written as seconds or as strings such as "90s", "15m", "1h" or "1h30m"."""

from __future__ import annotations

import math
import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?[smhd])+$")


def parse_duration(value: float | int | str) -> float:
    """Return `value` in seconds: a number, a digit string, or numbers with s, m, h or d units ("1h30m").

    Raises ValueError naming the accepted forms when the value cannot be read or is not above zero.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; use seconds, or a string such as \"90s\", \"15m\" or \"1h\"")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            if not _DURATION.match(text):
                raise ValueError(
                    f"{value!r} is not a duration; use seconds, or a string such as \"90s\", \"15m\", \"1h\" or \"1h30m\""
                ) from None
            seconds = sum(float(number) * _UNITS[unit] for number, unit in _PART.findall(text))
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{value!r} is not a duration above zero; use a number of seconds such as 30, or \"30s\"")
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds the short way a person reads them, such as "1h30m"; exact for whole seconds."""
    if seconds != int(seconds):
        return f"{seconds:g}s"
    remaining = int(seconds)
    parts = []
    for unit in ("d", "h", "m", "s"):
        count, remaining = divmod(remaining, _UNITS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"
