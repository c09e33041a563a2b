"""Translation of aiodocker, aiohttp and timeout exceptions into `corebase.errors`.

The core receives only CoreBase errors, so every engine call in this plugin runs inside
`translate_errors`. Callers that expect a specific engine status (a 409 on create, a 304 on stop)
catch `aiodocker.DockerError` themselves inside the block, before this generic mapping applies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import aiodocker
import aiohttp

from corebase.errors import (
    ApiError,
    ContainerNotFound,
    ContainerStartRejected,
    PortInUse,
    ContainerNotRunning,
    EngineError,
    EngineTimeout,
    EngineUnavailable,
)

logger = logging.getLogger(__name__)

# aiodocker reports a failed connection to the engine as a DockerError with this status.
CONNECTION_FAILED_STATUS = 900


def unavailable(endpoint: str, reason: object) -> EngineUnavailable:
    """Build the error for an engine that cannot be reached, with the usual fixes."""
    return EngineUnavailable(
        f"cannot connect to the Docker Engine at {endpoint}: {reason}; is the Docker daemon running, "
        f"and can this user open {_socket_path(endpoint)}? set docker.url / COREBASE_DOCKER_URL"
    )


def is_not_running_message(message: str) -> bool:
    """Tell whether an engine message reports that a container is not running or is paused."""
    lowered = message.lower()
    return "is not running" in lowered or "is paused" in lowered


def map_engine_error(
    exc: BaseException,
    *,
    operation: str,
    endpoint: str,
    timeout: float | None,
    engine_id: str | None = None,
) -> ApiError:
    """Return the CoreBase error for an exception raised by an engine call.

    `operation` names the call in messages ("stop container"). With `engine_id`, a 404 becomes
    ContainerNotFound and a "not running" 409 becomes ContainerNotRunning.
    """
    # aiohttp's ServerTimeoutError is also a ClientConnectionError, so timeouts are checked first.
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        limit = f" after {timeout:g} s" if timeout is not None else ""
        return EngineTimeout(
            f"{operation} timed out{limit} waiting for the Docker Engine at {endpoint}; "
            "raise docker.timeout if the engine is slow"
        )
    # A payload error means the connection closed in the middle of a response, as a lost
    # connection does, so it counts the same.
    if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
        return unavailable(endpoint, exc)

    if isinstance(exc, aiodocker.DockerError):
        if exc.status == CONNECTION_FAILED_STATUS:
            return unavailable(endpoint, exc.message)
        if engine_id is not None and exc.status == 404:
            return ContainerNotFound(engine_id)
        if engine_id is not None and exc.status == 409 and is_not_running_message(exc.message):
            status = "paused" if "paused" in exc.message.lower() else None
            return ContainerNotRunning(engine_id, status=status)
        return EngineError(f"{operation} failed: the Docker Engine returned {exc.status}: {exc.message}")

    return EngineError(f"{operation} failed: {type(exc).__name__}: {exc}")


@contextmanager
def translate_errors(
    operation: str,
    *,
    endpoint: str,
    timeout: float | None,
    engine_id: str | None = None,
) -> Iterator[None]:
    """Re-raise engine, connection and timeout exceptions in the block as CoreBase errors.

    CoreBase errors raised inside the block pass through unchanged.
    """
    try:
        yield
    except (aiodocker.DockerError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
        error = map_engine_error(exc, operation=operation, endpoint=endpoint, timeout=timeout, engine_id=engine_id)
        logger.debug("%s failed: %r mapped to %s", operation, exc, type(error).__name__)
        raise error from exc


# Fragments of the OCI runtime's message when a container's process cannot start, and the
# request field that causes each, checked in this order (runc 1.1 wording).
_START_FAILURES = (
    ("chdir to cwd", "workdir"),
    ("unable to find user", "user"),
    ("no matching entries in passwd", "user"),
    ("executable file not found", "command"),
    ("no such file or directory", "command"),
    ("permission denied", "command"),
)


# Fragments of the engine's message when a published host port is taken (docker-proxy or the
# kernel's bind error).
_PORT_TAKEN = ("port is already allocated", "address already in use")


def start_rejection(exc: aiodocker.DockerError) -> ApiError | None:
    """Return the client error for a start the engine refused because of the spec, else None."""
    message = exc.message or ""
    lowered = message.lower()
    if exc.status not in (400, 500):
        return None
    if any(fragment in lowered for fragment in _PORT_TAKEN):
        return PortInUse(message)
    for fragment, field in _START_FAILURES:
        if fragment in lowered:
            return ContainerStartRejected(field, _short_reason(message))
    return None


def _short_reason(message: str) -> str:
    """Keep the part of runc's message after its last 'caused:'/'process:' prefix, which names the cause."""
    for marker in ("unable to start container process: ", "starting container process caused: "):
        if marker in message:
            return message.split(marker, 1)[1].removesuffix(": unknown")
    return message


def _socket_path(endpoint: str) -> str:
    if endpoint.startswith("unix://"):
        return endpoint[len("unix://") :]
    return endpoint
