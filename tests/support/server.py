"""Running a real `corebase serve` process for API tests, with this test process's network prefix.

The server code is shared with plugin authors in corebase.testing.server.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path

from corebase.testing.server import START_TIMEOUT, RunningServer, free_port, stop_server
from corebase.testing.server import run_server as _run_server

__all__ = ["START_TIMEOUT", "TEST_NETWORK_PREFIX", "RunningServer", "free_port", "run_server", "stop_server"]

# Prefix of the per-owner networks that servers started by this test process create, so clean-up
# removes exactly those and never an installation's own networks.
TEST_NETWORK_PREFIX = "cbtest-" + secrets.token_hex(4)


@contextlib.contextmanager
def run_server(data_dir: Path, env: dict[str, str] | None = None, admin_key: str | None = None) -> Iterator[RunningServer]:
    """Start `python -m corebase serve` with TEST_NETWORK_PREFIX as its network prefix; see corebase.testing.server."""
    with _run_server(data_dir, env=env, admin_key=admin_key, network_prefix=TEST_NETWORK_PREFIX) as server:
        yield server
