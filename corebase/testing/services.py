"""Decide whether a test that needs an outside service, such as the Docker Engine, runs, skips or fails.

Under CI=true every service must be there, so a missing one fails the test. Elsewhere the test
skips with the reason.
"""

from __future__ import annotations

import asyncio
import os
from typing import NoReturn

import aiodocker
import aiohttp
import pytest

ENGINE_TIMEOUT = 10.0  # seconds for the engine to respond to GET /version


def running_in_ci() -> bool:
    """Return True when the CI variable is set to true, 1 or yes."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require_service(name: str, reason: str) -> NoReturn:
    """Fail the calling test under CI=true, where every test must run, and skip it otherwise."""
    message = f"{name} is not available: {reason}"
    if running_in_ci():
        pytest.fail(f"{message} (CI=true, so the test fails instead of skipping)", pytrace=False)
    pytest.skip(message)


async def engine_problem() -> str | None:
    """Return why the Docker Engine cannot be used, or None when it responds to GET /version."""
    try:
        docker = aiodocker.Docker()
    except (AssertionError, ValueError):
        # aiodocker 0.27 fails an assert when neither DOCKER_HOST nor a Docker socket exists.
        return "DOCKER_HOST is not set and no Docker socket was found"

    try:
        await asyncio.wait_for(docker.version(), ENGINE_TIMEOUT)
    except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
        # OSError covers TimeoutError from wait_for and a refused or forbidden socket.
        return f"the engine did not answer ({exc}); start dockerd or set DOCKER_HOST"
    finally:
        await docker.close()
    return None


async def require_engine() -> None:
    """Call require_service unless the Docker Engine responds to GET /version."""
    problem = await engine_problem()
    if problem:
        require_service("Docker Engine", problem)
