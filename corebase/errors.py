"""CoreBase's error tree, and the one place that maps errors to HTTP statuses.

    CoreBaseError                    every error CoreBase raises on purpose
    ├── ConfigError                  invalid settings; stops start-up
    ├── PluginError                  a plugin failed validation; stops start-up
    └── ApiError                     reaches a client as RFC 9457 problem details
        ├── InvalidField             400/422, names the field and the fix
        │   ├── ContainerStartRejected   the engine could not run the spec (bad command, user, ...)
        │   └── IdempotencyKeyReused     422, the Idempotency-Key was sent with another request
        ├── Unauthorized             401
        ├── Forbidden                403
        │   ├── PolicyDenied         403, with every policy's reasons
        │   └── QuotaExceeded        403, names the quota, its limit and the usage
        ├── NotFound                 404
        │   ├── ContainerNotFound
        │   ├── PathNotFound         a path inside a container
        │   ├── ImageNotFound
        │   ├── TemplateNotFound
        │   ├── PoolNotFound
        │   ├── RuleNotFound
        │   ├── AlertNotFound
        │   ├── UserNotFound
        │   └── KeyNotFound
        ├── Conflict                 409
        │   ├── NameInUse
        │   ├── IdempotencyKeyInProgress   the first request with the Idempotency-Key still runs
        │   ├── ContainerNotRunning
        │   │   └── ContainerPaused
        │   ├── ContainerNotPaused
        │   ├── ContainerRunning
        │   ├── PathReadOnly         the target of an upload is on a read-only file system
        │   ├── PortInUse
        │   ├── TemplateInUse
        │   └── ReconcilerBusy     another API process runs reconciliation
        ├── UploadTooLarge           413, names the limit files.max_upload
        ├── RateLimited              429, the API key sent too many requests; has Retry-After
        ├── EngineError              502, the engine refused an operation
        │   └── ImagePullFailed
        ├── EngineUnavailable        503, the engine cannot be reached
        └── EngineTimeout            504, an engine call ran past its timeout

Runtime plugins raise these too, so the core never sees a backend's own exceptions.
"""

from __future__ import annotations

import math

from typing import Any

PROBLEM_TYPE_BASE = "https://corebase.dev/problems/"


class CoreBaseError(Exception):
    """Base class of every error CoreBase raises on purpose."""


class ConfigError(CoreBaseError):
    """A setting is invalid; the message names it and what is allowed."""


class PluginError(CoreBaseError):
    """A plugin is missing, misspelt or conflicts with another; the message names it."""


class ApiError(CoreBaseError):
    """An error that reaches the client as a problem-details body."""

    status: int = 500
    slug: str = "internal-error"
    title: str = "Internal server error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = {key: value for key, value in extra.items() if value is not None}
        self.headers: dict[str, str] = {}

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        """Build the RFC 9457 body: type, title, status, detail, then the extra fields."""
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


class InvalidField(ApiError):
    """A request field is missing or invalid. `field` is its JSON path, such as `memory`."""

    status = 422
    slug = "invalid-field"
    title = "Invalid request field"

    def __init__(self, field: str, detail: str, status: int = 422, **extra: Any) -> None:
        super().__init__(detail, field=field, **extra)
        self.field = field
        self.status = status


class ContainerStartRejected(InvalidField):
    """The engine created the container but could not start its process, because of the request.

    Typical causes are a command or entrypoint missing from the image, a missing working
    directory, or an unknown user. `field` names the request field most likely at fault.
    """

    slug = "container-start-rejected"
    title = "Container could not be started"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, f"the engine could not start the container: {reason}; check '{field}'")


class IdempotencyKeyReused(InvalidField):
    """An Idempotency-Key came again with a different request; `containerId` names what the first one started."""

    slug = "idempotency-key-reused"
    title = "Idempotency key reused"

    def __init__(self, key: str, container_id: str | None) -> None:
        started = f", which started container {container_id}" if container_id else ""
        super().__init__(
            "Idempotency-Key",
            f"Idempotency-Key {key!r} was already used for a different request{started}; send a new key for "
            "a new request, or repeat the first request exactly to get its response again",
            containerId=container_id,
        )


class Unauthorized(ApiError):
    status = 401
    slug = "unauthorized"
    title = "Authentication required"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.headers["WWW-Authenticate"] = 'Bearer realm="corebase"'


class Forbidden(ApiError):
    status = 403
    slug = "forbidden"
    title = "Forbidden"


class PolicyDenied(Forbidden):
    """One or more security policies denied a container spec; `reasons` lists all of them."""

    slug = "policy-denied"
    title = "Denied by security policy"

    def __init__(self, reasons: list[dict[str, str]]) -> None:
        summary = "; ".join(reason["reason"] for reason in reasons)
        super().__init__(f"the request was denied by security policy: {summary}", reasons=reasons)
        self.reasons = reasons


class QuotaExceeded(Forbidden):
    """A start would take the caller past a quota; `quota` names the limit, with `limit` and `usage`."""

    slug = "quota-exceeded"
    title = "Quota exceeded"


class NotFound(ApiError):
    status = 404
    slug = "not-found"
    title = "Not found"


class ContainerNotFound(NotFound):
    slug = "container-not-found"
    title = "Container not found"

    def __init__(self, container_id: str, detail: str | None = None) -> None:
        super().__init__(
            detail or f"container {container_id!r} does not exist; list containers with GET /api/runtime/containers",
            containerId=container_id,
        )


class PathNotFound(NotFound):
    """A path inside a container does not exist; `field` is "path", the query parameter that named it."""

    slug = "path-not-found"
    title = "Path not found"

    def __init__(self, container_id: str, path: str, hint: str = "check 'path'") -> None:
        self.hint = hint
        super().__init__(
            f"path {path!r} does not exist in container {container_id!r}; {hint}",
            field="path",
            path=path,
            containerId=container_id,
        )


class ImageNotFound(NotFound):
    slug = "image-not-found"
    title = "Image not found"

    def __init__(self, image: str, detail: str | None = None) -> None:
        super().__init__(
            detail or f"image {image!r} was not found locally or in its registry; check the name and tag",
            image=image,
        )


class TemplateNotFound(NotFound):
    slug = "template-not-found"
    title = "Template not found"

    def __init__(self, name: str, version: int | None = None) -> None:
        which = f"{name!r} version {version}" if version is not None else repr(name)
        super().__init__(
            f"template {which} does not exist; list templates with GET /api/runtime/templates", template=name
        )


class PoolNotFound(NotFound):
    slug = "pool-not-found"
    title = "Pool not found"

    def __init__(self, template: str) -> None:
        super().__init__(
            f"template {template!r} has no pool; create one with PUT /api/runtime/pools/{template}", template=template
        )


class RuleNotFound(NotFound):
    slug = "rule-not-found"
    title = "Alert rule not found"

    def __init__(self, rule_id: str) -> None:
        super().__init__(
            f"alert rule {rule_id!r} does not exist; list your rules with GET /api/alerts/rules", ruleId=rule_id
        )


class AlertNotFound(NotFound):
    slug = "alert-not-found"
    title = "Alert not found"

    def __init__(self, alert_id: str) -> None:
        super().__init__(f"alert {alert_id!r} does not exist; list your alerts with GET /api/alerts", alertId=alert_id)


class UserNotFound(NotFound):
    slug = "user-not-found"
    title = "User not found"

    def __init__(self, name: str) -> None:
        super().__init__(f"user {name!r} does not exist; list users with GET /api/users", user=name)


class KeyNotFound(NotFound):
    slug = "key-not-found"
    title = "API key not found"

    def __init__(self, key_id: str) -> None:
        super().__init__(f"API key {key_id!r} does not exist; list your keys with GET /api/keys", keyId=key_id)


class Conflict(ApiError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class NameInUse(Conflict):
    slug = "name-in-use"
    title = "Name already in use"

    def __init__(self, name: str, detail: str | None = None) -> None:
        super().__init__(
            detail or f"the container name {name!r} is already in use; choose another name or remove that container",
            name=name,
        )


class IdempotencyKeyInProgress(Conflict):
    """The first request with this Idempotency-Key has not finished; Retry-After gives the seconds to wait."""

    slug = "idempotency-key-in-progress"
    title = "Request with this idempotency key in progress"

    def __init__(self, key: str, detail: str | None = None, retry_after: int = 1) -> None:
        super().__init__(
            detail or f"a request with Idempotency-Key {key!r} is still running; retry in a moment to get its response",
            field="Idempotency-Key",
        )
        self.headers["Retry-After"] = str(retry_after)


class ContainerNotRunning(Conflict):
    slug = "container-not-running"
    title = "Container is not running"

    def __init__(self, container_id: str, status: str | None = None, detail: str | None = None) -> None:
        state = f" (status {status})" if status else ""
        super().__init__(
            detail or f"container {container_id!r} is not running{state}; start or restart it first",
            containerId=container_id,
            containerStatus=status,
        )


class ContainerPaused(ContainerNotRunning):
    """The container is paused, so its processes cannot run a command or report usage until it is resumed."""

    slug = "container-paused"
    title = "Container is paused"

    def __init__(self, container_id: str, action: str) -> None:
        super().__init__(
            container_id,
            "paused",
            f"container {container_id!r} is paused, so it cannot {action}; resume it with POST /api/runtime/resume first",
        )


class ContainerRunning(Conflict):
    slug = "container-running"
    title = "Container is running"

    def __init__(self, container_id: str, detail: str | None = None) -> None:
        super().__init__(
            detail or f"container {container_id!r} is running; stop it first or pass force=true",
            containerId=container_id,
        )


class PortInUse(Conflict):
    slug = "port-in-use"
    title = "Host port in use"

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"a requested host port is already in use on the host ({reason}); choose another host port in "
            "'ports', or null to let the engine pick a free one",
            field="ports",
        )


class PathReadOnly(Conflict):
    """An upload's target directory is on a read-only file system: a read-only root or a read-only mount."""

    slug = "path-read-only"
    title = "Path is read-only"

    def __init__(self, container_id: str, path: str, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"cannot write to {path!r} in container {container_id!r}: {reason}; upload to a writable volume, or "
            "start the container without a read-only root file system (the engine copies nothing into a "
            "container whose root is read-only)",
            field="path",
            path=path,
            containerId=container_id,
        )


class TemplateInUse(Conflict):
    slug = "template-in-use"
    title = "Template in use"

    def __init__(self, name: str, users: list[str]) -> None:
        super().__init__(
            f"template {name!r} is used by {', '.join(users)}; remove those first or pass force=true",
            template=name,
            usedBy=users,
        )


class ReconcilerBusy(Conflict):
    slug = "reconciler-busy"
    title = "Another process reconciles"

    def __init__(self, holder: str, interval: float, lease_seconds: float | None = None) -> None:
        expiry = (
            f"; if that process has stopped, its lease runs out within {lease_seconds:g} s and this one takes over"
            if lease_seconds
            else ""
        )
        super().__init__(
            f"API process {holder} holds the reconciler lease and runs a pass every {interval:g} s; "
            f"send the request to that process, or wait for its next pass{expiry}",
            leaderProcess=holder,
        )
        self.headers["Retry-After"] = str(max(1, math.ceil(lease_seconds or interval)))


class ContainerNotPaused(Conflict):
    slug = "container-not-paused"
    title = "Container is not paused"

    def __init__(self, container_id: str, status: str | None = None) -> None:
        state = f" (status {status})" if status else ""
        super().__init__(
            f"container {container_id!r} is not paused{state}, so it cannot be resumed; pause it first",
            containerId=container_id,
            containerStatus=status,
        )


class UploadTooLarge(ApiError):
    """An upload is larger than `files.max_upload`; `limit` is that limit in bytes."""

    status = 413
    slug = "upload-too-large"
    title = "Upload too large"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the upload of {size} bytes is larger than the limit of {limit} bytes; upload less at a time, "
            "or raise files.max_upload (COREBASE_FILES_MAX_UPLOAD)",
            limit=limit,
            size=size,
        )


class RateLimited(ApiError):
    """An API key used up its rate limit; Retry-After gives the whole seconds until its next request."""

    status = 429
    slug = "rate-limited"
    title = "Too many requests"

    def __init__(self, key_id: str, retry_after: int, per_minute: int, burst: int) -> None:
        super().__init__(
            f"API key {key_id} sent more requests than its limit of {per_minute} per minute (burst {burst}); "
            f"retry after {retry_after} s, or ask an admin to raise rate_limit.requests_per_minute",
            keyId=key_id,
            retryAfter=retry_after,
        )
        self.headers["Retry-After"] = str(retry_after)


class EngineError(ApiError):
    """The engine rejected an operation for a reason CoreBase has no narrower error for."""

    status = 502
    slug = "engine-error"
    title = "Container engine error"


class ImagePullFailed(EngineError):
    slug = "image-pull-failed"
    title = "Image pull failed"

    def __init__(self, image: str, reason: str) -> None:
        super().__init__(f"pulling image {image!r} failed: {reason}", image=image)


class DatabaseUnavailable(ApiError):
    """The database is unreachable or stayed busy past its wait; the request changed nothing and can be retried."""

    status = 503
    slug = "database-unavailable"
    title = "Database unavailable"

    def __init__(self, detail: str, retry_after: int = 2) -> None:
        super().__init__(detail, dependency="database", retryAfter=retry_after)
        self.headers["Retry-After"] = str(retry_after)


class EngineUnavailable(ApiError):
    """The container engine cannot be reached; `dependency` names it, and Retry-After says when to try again."""

    status = 503
    slug = "engine-unavailable"
    title = "Container engine unavailable"

    def __init__(self, detail: str, retry_after: int = 5) -> None:
        super().__init__(detail, dependency="engine", retryAfter=retry_after)
        self.headers["Retry-After"] = str(retry_after)


class EngineTimeout(ApiError):
    status = 504
    slug = "engine-timeout"
    title = "Container engine timed out"
