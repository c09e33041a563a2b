"""Plain wording for query parameters that fail their pattern.

Litestar checks a parameter's `pattern` while it decodes the query and reports the bare regex,
which a client cannot act on. `query_hint` turns that report into a sentence that names the
parameter, the value sent and the forms accepted. The patterns stay in the OpenAPI document.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from litestar import Request

from corebase.api.logs import TAIL_PATTERN, TIME_PATTERN
from corebase.errors import InvalidField
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


def reject_repeated_query(request: Request) -> None:
    """Refuse a query parameter given more than once when its route takes a single value.

    Litestar would read one of the values and drop the rest, so `?user=a&user=b` would act on a
    user the client may not have meant. Parameters a route declares as lists may repeat.
    """
    counts: dict[str, int] = {}
    for name, _ in parse_qsl(request.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
        counts[name] = counts.get(name, 0) + 1
    repeated = [name for name, count in counts.items() if count > 1]
    if not repeated:
        return
    single = _single_valued_parameters(request.route_handler, tuple(request.path_params))
    for name in repeated:
        if name in single:
            raise InvalidField(name, f"query parameter {name!r} is given {counts[name]} times; give it once", status=400)


def _single_valued_parameters(handler, path_parameters: tuple[str, ...]) -> frozenset[str]:
    """Names, as sent in the query, of the handler's query parameters that take one value."""
    key = (handler, path_parameters)
    names = _SINGLE_VALUED.get(key)
    if names is None:
        model = handler.create_kwargs_model(path_parameters=dict.fromkeys(path_parameters))
        names = frozenset(parameter.field_alias for parameter in model.expected_query_params if not parameter.is_sequence)
        _SINGLE_VALUED[key] = names
    return names


# Filled on first use per route handler; handlers live as long as the app.
_SINGLE_VALUED: dict[tuple[object, tuple[str, ...]], frozenset[str]] = {}
