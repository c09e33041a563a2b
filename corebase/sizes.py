"""Byte sizes written as integers or as Docker-style strings such as "512m" or "2g"."""

from __future__ import annotations

import re

# Binary multiples, as the Docker CLI reads `--memory 512m`.
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
# The largest size a database BIGINT column holds, about 8 EiB; larger values are refused.
MAX_SIZE = 2**63 - 1
_SIZE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(value: int | str) -> int:
    """Return `value` in bytes. Accepts an int, a digit string, or a number with b/k/m/g/t (kb, mib, ...).

    Raises ValueError with the accepted forms when the value cannot be read.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size; use bytes as an integer or a string such as \"512m\"")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative; sizes are zero or more bytes")
        return _bounded(value, value)
    match = _SIZE_PATTERN.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a size; use bytes as an integer or a string such as \"512m\" or \"2g\"")
    number, unit = match.groups()
    return _bounded(int(float(number) * _UNITS[unit.lower()]), value)


def _bounded(size: int, value: int | str) -> int:
    if size > MAX_SIZE:
        raise ValueError(f"{value!r} is too large; sizes go up to {MAX_SIZE} bytes (8 EiB), such as \"64g\"")
    return size


def format_size(size: int) -> str:
    """Render bytes the short way a person reads them, such as "512m"; exact, never rounded."""
    for unit in ("t", "g", "m", "k"):
        multiple = _UNITS[unit]
        if size >= multiple and size % multiple == 0:
            return f"{size // multiple}{unit}"
    return str(size)
