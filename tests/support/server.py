"""Running a real `corebase serve` process for API tests, the way a user starts it."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

# Seconds a server gets to respond to /health after it was started.
START_TIMEOUT = 60.0
# Prefix of the per-owner networks that servers started by this test process create, so clean-up
# removes exactly those and never an installation's own networks.
TEST_NETWORK_PREFIX = "cbtest-" + secrets.token_hex(4)


@dataclass
class RunningServer:
    base_url: str
    admin_key: str
    data_dir: Path
    process: subprocess.Popen
    log_path: Path

    def client(self, key: str | None = None, timeout: float = 60.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.admin_key}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def async_client(self, key: str | None = None, timeout: float = 60.0) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key or self.admin_key}"}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def run_server(data_dir: Path, env: dict[str, str] | None = None, admin_key: str | None = None) -> Iterator[RunningServer]:
    """Start `python -m corebase serve` on a free loopback port and stop it (SIGTERM, then SIGKILL) afterwards."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    admin_key = admin_key or "cbk_test_" + secrets.token_urlsafe(24)
    log_path = data_dir / "server.log"
    process_env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("COREBASE_")},
        "COREBASE_ADMIN_API_KEY": admin_key,
        "COREBASE_NETWORKS_PREFIX": TEST_NETWORK_PREFIX,
        # Session-wide servers take thousands of requests from one key; the rate limit tests set their own limits.
        "COREBASE_RATE_LIMIT_REQUESTS_PER_MINUTE": "0",
        **(env or {}),
    }
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "corebase", "serve", "--port", str(port), "--data-dir", str(data_dir)],
            env=process_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = RunningServer(f"http://127.0.0.1:{port}", admin_key, data_dir, process, log_path)
    try:
        _wait_until_serving(server)
        yield server
    finally:
        stop_server(process)


def _wait_until_serving(server: RunningServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"corebase serve exited with {server.process.returncode}:\n{server.log()}")
        try:
            response = httpx.get(server.base_url + "/health", timeout=2.0)
            if response.status_code in (200, 503):
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"corebase serve did not answer within {START_TIMEOUT} s:\n{server.log()}")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
