"""Decide whether a test that needs an outside service runs, skips or fails.

Under CI=true every service must be there, so a missing one fails the test. Elsewhere the test skips
with a reason that names the command that starts the service. scripts/test.sh starts private instances and exports
their addresses in the COREBASE_TEST_* variables read here.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import SplitResult, urlsplit

import pytest

from corebase.testing.services import require_engine, require_service, running_in_ci

__all__ = ["redact", "require_engine", "require_service", "running_in_ci", "service_address"]

START_HINT = 'run `scripts/services.sh start` and `eval "$(scripts/services.sh env)"`, or run scripts/test.sh'
CONNECT_TIMEOUT = 2.0  # seconds for one TCP connection attempt to a service

_DEFAULT_PORTS = {"postgres": 5432, "postgresql": 5432, "redis": 6379}


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
