"""Errors the CoreBase client raises.

    ClientError                  every error the client raises on purpose
    ├── ConfigurationError       no API key, or an unreadable profile file
    ├── ConnectionFailed         the server could not be reached, or the connection broke
    │   └── RequestTimedOut      the server did not respond within the client's timeout
    ├── UnexpectedResponse       a response that is not what the API documents
    └── ApiError                 the server returned RFC 9457 problem details
        ├── ValidationError      400, 422: `field` names the invalid field
        ├── Unauthorized         401: the API key is missing, wrong, expired or revoked
        ├── Forbidden            403: the key's role or scopes do not allow the request
        │   ├── PolicyDenied     403: `reasons` lists every security policy's reason
        │   └── QuotaExceeded    403: `quota`, `limit` and `usage`
        ├── NotFound             404
        ├── Conflict             409
        ├── TooLarge             413: `limit` is the server's limit in bytes
        ├── RateLimited          429: `retry_after` seconds
        └── ServerError          5xx
            ├── EngineError      502: the container engine rejected the operation
            ├── EngineUnavailable  503: `retry_after` seconds
            └── EngineTimeout    504

The server's own error tree (`corebase.errors`) decides the class: a problem's `type` names the
server class that raised it, and the client class is that of its nearest mapped ancestor, so a
`container-not-found` problem becomes `NotFound`. A type the client does not know falls back to
its HTTP status.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from corebase import errors as server_errors


class ClientError(Exception):
    """Base class of every error the client raises on purpose."""


class ConfigurationError(ClientError):
    """The client has no API key, or its profile file cannot be read. The message tells how to fix it."""


class ConnectionFailed(ClientError):
    """The request did not reach the server, or the connection broke before the response was complete."""

    def __init__(self, message: str, url: str) -> None:
        super().__init__(message)
        self.url = url


class RequestTimedOut(ConnectionFailed):
    """The server did not respond within the client's timeout."""


class UnexpectedResponse(ClientError):
    """The server's response does not have the documented shape, for example a proxy's HTML error page."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ApiError(ClientError):
    """An RFC 9457 problem-details response.

    `problem` is the whole body, so fields a subclass does not name (such as `containerId`) are
    there. `retry_after` is the Retry-After header in seconds, when the server sent one.
    """

    def __init__(self, status: int, problem: Mapping[str, Any], retry_after: float | None = None) -> None:
        self.status = status
        self.problem = dict(problem)
        self.type: str = str(problem.get("type", "about:blank"))
        self.title: str = str(problem.get("title", ""))
        self.detail: str = str(problem.get("detail") or self.title or f"HTTP {status}")
        self.instance: str | None = problem.get("instance")
        self.retry_after = retry_after
        super().__init__(self.detail)

    @property
    def slug(self) -> str:
        """The last part of `type`, such as `container-not-found`."""
        return self.type.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return f"{self.status} {self.title}: {self.detail}" if self.title else f"{self.status}: {self.detail}"


class ValidationError(ApiError):
    """A request field is missing or invalid; `field` is its JSON path, such as `memory`, when the server names one."""

    @property
    def field(self) -> str | None:
        return self.problem.get("field")

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Each invalid field with its message, for request bodies the server could not decode."""
        return list(self.problem.get("errors") or [])


class Unauthorized(ApiError):
    """The API key is missing, unknown, expired or revoked."""


class Forbidden(ApiError):
    """The API key's role or scopes do not allow the request."""


class PolicyDenied(Forbidden):
    """Security policies denied the container spec. `reasons` contains one entry per denying policy."""

    @property
    def reasons(self) -> list[dict[str, str]]:
        return list(self.problem.get("reasons") or [])


class QuotaExceeded(Forbidden):
    """A start would take the user past a quota."""

    @property
    def quota(self) -> str | None:
        return self.problem.get("quota")

    @property
    def limit(self) -> Any:
        return self.problem.get("limit")

    @property
    def usage(self) -> Any:
        return self.problem.get("usage")


class NotFound(ApiError):
    """The container, template, pool, user, key or rule does not exist, or belongs to another user."""


class Conflict(ApiError):
    """The request conflicts with the current state: a name in use, or a container in the wrong state."""


class TooLarge(ApiError):
    """The request body, such as an upload, is larger than the server accepts."""

    @property
    def limit(self) -> int | None:
        return self.problem.get("limit")


class RateLimited(ApiError):
    """The API key sent too many requests; wait `retry_after` seconds."""


class ServerError(ApiError):
    """The server failed; the request may succeed when retried."""


class EngineError(ServerError):
    """The container engine rejected the operation, for example an image pull that failed."""


class EngineUnavailable(ServerError):
    """The server cannot reach its container engine; retry after `retry_after` seconds."""


class EngineTimeout(ServerError):
    """A container engine call ran past the server's timeout."""


# The client class of each server error class; the server's subclasses take their nearest ancestor's.
_CLIENT_CLASS_OF_SERVER_CLASS: dict[type[server_errors.ApiError], type[ApiError]] = {
    server_errors.ApiError: ServerError,
    server_errors.InvalidField: ValidationError,
    server_errors.Unauthorized: Unauthorized,
    server_errors.Forbidden: Forbidden,
    server_errors.PolicyDenied: PolicyDenied,
    server_errors.QuotaExceeded: QuotaExceeded,
    server_errors.NotFound: NotFound,
    server_errors.Conflict: Conflict,
    server_errors.UploadTooLarge: TooLarge,
    server_errors.RateLimited: RateLimited,
    server_errors.EngineError: EngineError,
    server_errors.EngineUnavailable: EngineUnavailable,
    server_errors.EngineTimeout: EngineTimeout,
}

# Problem types that Litestar's own errors produce (corebase/api/problems.py), not server classes.
_FRAMEWORK_SLUGS: dict[str, type[ApiError]] = {
    "invalid-request": ValidationError,
    "bad-request": ValidationError,
    "too-many-requests": RateLimited,
    "request-too-large": TooLarge,
}

_CLASS_OF_STATUS: dict[int, type[ApiError]] = {
    400: ValidationError,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    422: ValidationError,
    429: RateLimited,
    502: EngineError,
    503: EngineUnavailable,
    504: EngineTimeout,
}


def _server_classes(root: type[server_errors.ApiError]) -> list[type[server_errors.ApiError]]:
    found = [root]
    for subclass in root.__subclasses__():
        found.extend(_server_classes(subclass))
    return found


def _client_class_of(server_class: type[server_errors.ApiError]) -> type[ApiError]:
    for ancestor in server_class.__mro__:
        if ancestor in _CLIENT_CLASS_OF_SERVER_CLASS:
            return _CLIENT_CLASS_OF_SERVER_CLASS[ancestor]
    return ServerError


@functools.cache
def client_classes_by_slug() -> dict[str, type[ApiError]]:
    """Map every problem type slug the server can send to the client class that represents it."""
    classes = {cls.slug: _client_class_of(cls) for cls in _server_classes(server_errors.ApiError)}
    classes.update(_FRAMEWORK_SLUGS)
    return classes


def error_class(status: int, problem_type: str | None) -> type[ApiError]:
    """Choose the client class for a problem: by its type when the server defines it, else by status."""
    if problem_type and problem_type.startswith(server_errors.PROBLEM_TYPE_BASE):
        known = client_classes_by_slug().get(problem_type.removeprefix(server_errors.PROBLEM_TYPE_BASE))
        if known is not None:
            return known
    if status in _CLASS_OF_STATUS:
        return _CLASS_OF_STATUS[status]
    return ServerError if status >= 500 else ApiError
