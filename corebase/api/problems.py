"""Exception handlers that turn every error into an RFC 9457 problem-details response."""

from __future__ import annotations

import logging
import re
import sqlite3
from typing import Any

import asyncpg
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from corebase.api.query_forms import query_hint
from corebase.errors import PROBLEM_TYPE_BASE, ApiError, DatabaseUnavailable

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"


def _problem(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(content=body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def handle_api_error(request: Request, exc: ApiError) -> Response:
    return _problem(exc.to_problem(instance=request.url.path), exc.status, exc.headers or None)


def handle_validation_error(request: Request, exc: ValidationException) -> Response:
    """Name each invalid field and what it expected, from Litestar's decoding errors."""
    errors, hints = [], []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            message = item.get("message", "")
            field = _query_alias(request, _field_name(item.get("key"), message))
            hint = query_hint(request, field, message)
            errors.append({"field": field, "message": hint or message})
            hints.append(hint)
    missing = re.match(r"Missing required (?:query|path|header) parameter '([^']+)'", exc.detail or "")
    if missing and not errors:
        errors.append({"field": missing.group(1), "message": "missing required parameter"})
    detail = (hints[0] if hints and hints[0] else _describe(errors[0])) if errors else exc.detail
    body = {
        "type": PROBLEM_TYPE_BASE + "invalid-request",
        "title": "Invalid request",
        "status": 400,
        "detail": detail,
        "instance": request.url.path,
        "errors": errors,
    }
    if errors and errors[0]["field"]:
        body["field"] = errors[0]["field"]
    return _problem(body, 400)


def _describe(error: dict[str, Any]) -> str:
    field, message = error["field"], error["message"]
    if message.startswith("Object contains unknown field"):
        return f"unknown field {field!r}; remove it or check its spelling against the API schema at /schema"
    if message == "missing required parameter":
        return f"the required parameter {field!r} is missing"
    if message.startswith("Object missing required field"):
        return f"the required field {field!r} is missing"
    if field is None and message.strip("'") in ("data", ""):
        return "the request body is missing or empty; send a JSON object"
    if field is None:
        return f"invalid request body: {message}"
    return f"invalid value for {field!r}: {message}"


def _query_alias(request: Request, field: str | None) -> str | None:
    """Return the name a client uses for a parameter that Litestar reports by its Python name.

    Query parameters declared as ``QueryParameter(name="groupBy")`` fail validation under the
    handler's argument name (``group_by``), which the client never sent.
    """
    if field is None or "." in field or "[" in field:
        return field
    try:
        parameter = request.route_handler.parsed_fn_signature.parameters.get(field)
    except AttributeError:
        return field
    definition = getattr(parameter, "kwarg_definition", None)
    # QueryParameter(name=...) keeps the alias in `name`, Parameter(query=...) in `query`.
    alias = getattr(definition, "query", None) or getattr(definition, "name", None)
    return alias or field


def _field_name(key: Any, message: str) -> str | None:
    """Return the field's JSON path, such as `mounts[0].target`.

    Litestar reports a body field by its path, a query parameter by its name, and the body itself
    as "data". An unknown field is named only inside msgspec's message.
    """
    path = "" if key in (None, "data", "body") else str(key).removeprefix("$.").removeprefix("$")
    # msgspec writes a dict value's position as "[...]" without the key.
    path = path.replace("[...]", "")
    named = re.match(r"Object (?:contains unknown|missing required) field `([^`]+)`", message)
    if named:
        return f"{path}.{named.group(1)}" if path else named.group(1)
    return path or None


def handle_http_exception(request: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    body = {
        "type": PROBLEM_TYPE_BASE + _slug(status),
        "title": exc.detail if status >= 500 else _title(status),
        "status": status,
        "detail": exc.detail,
        "instance": request.url.path,
    }
    if status == 413:
        body.update(_too_large(request))
    return _problem(body, status, exc.headers)


def _too_large(request: Request) -> dict[str, Any]:
    """Name the body size limit, which Litestar's own 413 message leaves out."""
    limit = request.app.request_max_body_size
    return {
        "detail": f"the request body is larger than the limit of {limit} bytes; send a smaller body, "
        "or raise server.max_request_body (COREBASE_SERVER_MAX_REQUEST_BODY)",
        "limit": limit,
    }


def handle_unexpected(request: Request, exc: Exception) -> Response:
    if isinstance(exc, RecursionError):
        # msgspec gives up on JSON nested deeper than Python's recursion limit allows.
        body = {
            "type": PROBLEM_TYPE_BASE + "bad-request",
            "title": "Bad Request",
            "status": 400,
            "detail": "the JSON body is nested too deeply to read; CoreBase requests need only a few levels",
            "instance": request.url.path,
        }
        return _problem(body, 400)
    unavailable = database_unavailable(exc)
    if unavailable is not None:
        logger.warning("%s %s: %s", request.method, request.url.path, unavailable.detail)
        return handle_api_error(request, unavailable)
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    body = {
        "type": PROBLEM_TYPE_BASE + "internal-error",
        "title": "Internal server error",
        "status": 500,
        "detail": f"an unexpected {type(exc).__name__} occurred; the server log has the details",
        "instance": request.url.path,
    }
    return _problem(body, 500)


def database_unavailable(exc: BaseException) -> DatabaseUnavailable | None:
    """Map a database that is locked, busy or unreachable to a 503; return None for any other error."""
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc)):
        return DatabaseUnavailable(
            f"the SQLite database stayed busy with other writes ({exc}); retry, or move to PostgreSQL for heavy write loads"
        )
    if isinstance(exc, (asyncpg.TooManyConnectionsError, asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError,
                        asyncpg.InterfaceError, ConnectionError)):
        return DatabaseUnavailable(f"the database could not be reached ({type(exc).__name__}: {exc}); retry shortly")
    return None


def _slug(status: int) -> str:
    return {400: "bad-request", 401: "unauthorized", 403: "forbidden", 404: "not-found", 405: "method-not-allowed",
            413: "request-too-large", 429: "too-many-requests"}.get(status, f"http-{status}")


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


EXCEPTION_HANDLERS = {
    ApiError: handle_api_error,
    ValidationException: handle_validation_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
