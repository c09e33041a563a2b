"""Decide whether a test that needs an outside service runs, skips or fails.

Under CI=true every service must be there, so a missing one fails the test. Elsewhere the test skips
with a reason that names the command that starts the service. scripts/test.sh starts private instances and exports
their addresses in the COREBASE_TEST_* variables read here.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import NoReturn
from urllib.parse import SplitResult, urlsplit

import aiodocker
import aiohttp
import pytest

START_HINT = 'run `scripts/services.sh start` and `eval "$(scripts/services.sh env)"`, or run scripts/test.sh'
CONNECT_TIMEOUT = 2.0  # seconds for one TCP connection attempt to a service
ENGINE_TIMEOUT = 10.0  # seconds for the engine to respond to GET /version

_DEFAULT_PORTS = {"postgres": 5432, "postgresql": 5432, "redis": 6379}


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require_service(name: str, reason: str) -> NoReturn:
    """Fail the calling test under CI=true, where every test must run, and skip it otherwise."""
    message = f"{name} is not available: {reason}"
    if running_in_ci():
        pytest.fail(f"{message} (CI=true, so the test fails instead of skipping)", pytrace=False)
    pytest.skip(message)


def redact(url: SplitResult) -> str:
    """Return the URL with its password replaced by ***, for messages."""
    if url.password is None:
        return url.geturl()
    userinfo, _, hostinfo = url.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return url._replace(netloc=f"{user}:***@{hostinfo}").geturl()


def service_address(name: str, variable: str) -> str:
    """Return the value of `variable`, a service URL or host:port, once a TCP connection to it succeeds.

    Calls require_service when the variable is unset or the address does not accept connections, and
    fails the test when the value cannot be parsed.
    """
    value = os.environ.get(variable, "").strip()
    if not value:
        require_service(name, f"{variable} is not set; {START_HINT}")

    # A bare host:port (the registry) parses as a URL with an empty scheme once it has a leading //.
    url = urlsplit(value if "://" in value else f"//{value}")
    try:
        host = url.hostname
        port = url.port or _DEFAULT_PORTS.get(url.scheme)
    except ValueError as exc:
        pytest.fail(f"{variable}={redact(url)} is invalid: {exc}", pytrace=False)
    if not host or not port:
        pytest.fail(f"{variable}={redact(url)} is invalid: it needs a host and a port", pytrace=False)

    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        require_service(name, f"{variable}={redact(url)} is unreachable ({exc}); {START_HINT}")
    return value


async def require_engine() -> None:
    """Call require_service unless the Docker Engine responds to GET /version."""
    try:
        docker = aiodocker.Docker()
    except (AssertionError, ValueError):
        # aiodocker 0.27 fails an assert when neither DOCKER_HOST nor a Docker socket exists.
        require_service("Docker Engine", "DOCKER_HOST is not set and no Docker socket was found")

    try:
        await asyncio.wait_for(docker.version(), ENGINE_TIMEOUT)
    except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
        # OSError covers TimeoutError from wait_for and a refused or forbidden socket.
        require_service("Docker Engine", f"the engine did not answer ({exc}); start dockerd or set DOCKER_HOST")
    finally:
        await docker.close()
