"""Plain wording for query parameters that fail their pattern.

Litestar checks a parameter's `pattern` while it decodes the query and reports the bare regex,
which a client cannot act on. `query_hint` turns that report into a sentence that names the
parameter, the value sent and the forms accepted. The patterns stay in the OpenAPI document.
"""

from __future__ import annotations

import re

from litestar import Request

from corebase.api.logs import TAIL_PATTERN, TIME_PATTERN
from corebase.metrics.queries import STEP_PATTERN

ABSOLUTE_PATH_PATTERN = "^/"

# Pattern -> what the value is not, and the forms that are accepted.
FORMS: dict[str, tuple[str, str]] = {
    TIME_PATTERN: ("a time", "use RFC 3339 such as 2026-12-05T10:00:00Z, or Unix seconds"),
    TAIL_PATTERN: ("a line count", "use a whole number of lines such as 100, or 'all'"),
    STEP_PATTERN: ("a step", "use whole seconds from 1 to 2678400, such as 60"),
    ABSOLUTE_PATH_PATTERN: ("an absolute path", "start it with '/', such as /app/notes.txt"),
}

_MISMATCH = re.compile(r"Expected `str` matching regex '(?P<pattern>.*)'", re.DOTALL)


def query_hint(request: Request, field: str | None, message: str) -> str | None:
    """Return a plain sentence for a query parameter that failed a pattern in FORMS, else None."""
    match = _MISMATCH.fullmatch(message)
    # The message writes each backslash of the pattern twice.
    pattern = match.group("pattern").replace("\\\\", "\\") if match else None
    value = request.query_params.get(field) if field else None
    if pattern not in FORMS or value is None:
        return None
    what, forms = FORMS[pattern]
    return f"{field} {value!r} is not {what}; {forms}"
