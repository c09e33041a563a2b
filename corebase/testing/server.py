"""Running a real `corebase serve` process for tests, the way a user starts it, and removing what it left.

`run_server` starts the server on a free loopback port with a data directory of its own, and stops
it afterwards. `remove_server_objects` then removes the engine containers recorded in that
server's SQLite database and the per-owner networks named with its network prefix.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiodocker
import httpx
from aiodocker.networks import DockerNetwork

# Seconds a server gets to respond to /health after it was started.
START_TIMEOUT = 60.0
# Seconds a server gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 30.0
# The SQLite file `corebase serve` keeps in its data directory.
SQLITE_FILE = "corebase.sqlite"


@dataclass
class RunningServer:
    """A `corebase serve` process: its address, admin key, data directory and log file."""

    base_url: str
    admin_key: str
    data_dir: Path
    process: subprocess.Popen
    log_path: Path
    # Start of the names of the per-owner networks this server creates (setting networks.prefix).
    network_prefix: str

    def client(self, key: str | None = None, timeout: float = 60.0) -> httpx.Client:
        """Return an httpx client for this server that sends `key`, or the admin key, as its bearer token."""
        headers = {"Authorization": f"Bearer {key or self.admin_key}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def async_client(self, key: str | None = None, timeout: float = 60.0) -> httpx.AsyncClient:
        """Return an httpx.AsyncClient for this server, like `client`."""
        headers = {"Authorization": f"Bearer {key or self.admin_key}"}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout)

    def log(self) -> str:
        """Return what the server has written to its log so far."""
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def run_server(
    data_dir: Path,
    env: dict[str, str] | None = None,
    admin_key: str | None = None,
    network_prefix: str | None = None,
) -> Iterator[RunningServer]:
    """Start `python -m corebase serve` on a free loopback port and stop it (SIGTERM, then SIGKILL) afterwards.

    The process gets none of the caller's COREBASE_* variables, an admin key, rate limits turned
    off (tests send many requests from one key), `network_prefix` (default: a random one) as
    networks.prefix, and then `env`, which wins over all of these. Raises RuntimeError with the server's log when it exits
    or does not answer within START_TIMEOUT seconds.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    admin_key = admin_key or "cbk_test_" + secrets.token_urlsafe(24)
    log_path = data_dir / "server.log"
    process_env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("COREBASE_")},
        "COREBASE_ADMIN_API_KEY": admin_key,
        "COREBASE_RATE_LIMIT_REQUESTS_PER_MINUTE": "0",
        "COREBASE_NETWORKS_PREFIX": network_prefix or "cbtest-" + secrets.token_hex(4),
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
    server = RunningServer(
        base_url=f"http://127.0.0.1:{port}",
        admin_key=process_env["COREBASE_ADMIN_API_KEY"],
        data_dir=data_dir,
        process=process,
        log_path=log_path,
        network_prefix=process_env["COREBASE_NETWORKS_PREFIX"],
    )
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
    """Send SIGTERM and wait; kill the process when it has not exited after STOP_TIMEOUT seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def sqlite_container_ids(data_dir: Path) -> set[str]:
    """Return the id of every row in the `containers` table of a server's SQLite database, pool members included."""
    database = data_dir / SQLITE_FILE
    if not database.exists():
        return set()
    with contextlib.closing(sqlite3.connect(database)) as connection:
        try:
            return {row[0] for row in connection.execute("SELECT id FROM containers")}
        except sqlite3.OperationalError:
            # The server stopped before its first migration created the table.
            return set()


async def remove_containers(label: str, corebase_ids: set[str] | None = None) -> None:
    """Force-remove the engine containers carrying `label`, only those with a `corebase.id` in `corebase_ids` if given."""
    docker = aiodocker.Docker()
    try:
        for container in await docker.containers.list(all=True, filters={"label": [label]}):
            if corebase_ids is not None and container._container.get("Labels", {}).get("corebase.id") not in corebase_ids:
                continue
            try:
                await container.delete(force=True, v=True)
            except aiodocker.DockerError as exc:
                if exc.status != 404:
                    raise
    finally:
        await docker.close()


async def remove_networks(prefix: str) -> None:
    """Remove the CoreBase networks whose names start with `prefix` and a dash; those still in use stay."""
    docker = aiodocker.Docker()
    try:
        for network in await docker.networks.list(filters={"label": ["corebase.managed=true"]}):
            if not network["Name"].startswith(prefix + "-"):
                continue
            try:
                await DockerNetwork(docker, network["Id"]).delete()
            except aiodocker.DockerError as exc:
                if exc.status not in (404, 403, 409):
                    raise
    finally:
        await docker.close()


async def remove_server_objects(server: RunningServer) -> None:
    """Remove the engine containers of a stopped SQLite server's database rows, then its networks.

    The `corebase.id` labels tie containers to the rows; the ids are random, so no other
    installation's container matches. Call it after the server stopped, so it starts nothing new.
    """
    ids = sqlite_container_ids(server.data_dir)
    if ids:
        await remove_containers("corebase.managed=true", ids)
    await remove_networks(server.network_prefix)
