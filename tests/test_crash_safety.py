"""Killing a real server with SIGKILL in the middle of concurrent starts, stops and removes.

Each round starts `corebase serve` on the same database, sends it concurrent requests and kills it
after a different delay. The next round starts it again and waits until reconciliation has
settled. Then the database and the engine must agree. Every container of the installation has an
active row with its engine id and status, and every active row has its container. No start is
left `creating`, and the user's quota usage equals their active rows. A retry of each start
with its Idempotency-Key then names the one container that the start made, if any.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiodocker
import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api_support import RUN_ID, RUN_LABEL, create_postgres_database, drop_postgres_database, remove_containers
from corebase.containers.tables import ACTIVE_STATUSES
from support.server import RunningServer, run_server

pytestmark = pytest.mark.engine

# Seconds from sending the requests to the SIGKILL, one round each. They spread the kills over the
# phases of a start: before the row, between the row and the engine's create, during the start,
# and after the response.
SQLITE_KILL_DELAYS = (0.05, 0.15, 0.3, 0.5, 0.8, 1.2, 1.8, 2.5, 3.5)
POSTGRES_KILL_DELAYS = (0.1, 0.4, 1.0, 2.0)
STARTS_PER_ROUND = 6
STOPS_PER_ROUND = 2
REMOVES_PER_ROUND = 3
USER = "crash"
# Generous upper bound in seconds for reconciliation to settle after a restart, so that a
# reconciler that never settles fails the test instead of hanging it.
SETTLE_LIMIT = 120.0
CRASH_LABEL = "corebase-test.crash"
# The Idempotency-Key of the start that made a container, so retries can be matched to containers.
KEY_LABEL = "corebase-test.key"

SERVER_ENV = {
    # Short, so that many rounds fit: a start without progress for 2 s counts as interrupted.
    "COREBASE_RECONCILE_CREATING_GRACE": "2",
    "COREBASE_RECONCILE_INTERVAL": "1",
}


class Database:
    """Direct reads of the server's `containers` table, so no API read refreshes a row before the check."""

    def __init__(self, sqlite_path: Path | None = None, postgres_url: str | None = None) -> None:
        self.sqlite_path = sqlite_path
        self.postgres_url = postgres_url

    async def rows(self) -> list[dict]:
        query = "SELECT id, docker_id, status, owner, memory, pool_state FROM containers"
        if self.postgres_url is not None:
            connection = await asyncpg.connect(self.postgres_url)
            try:
                return [dict(row) for row in await connection.fetch(query)]
            finally:
                await connection.close()
        with sqlite3.connect(self.sqlite_path) as connection:
            connection.row_factory = sqlite3.Row
            return [dict(row) for row in connection.execute(query)]


@dataclass
class TargetInstallation:
    """One installation under test: its data directory, database, admin key and the user's key."""

    data_dir: Path
    database: Database
    env: dict[str, str]
    image: str
    admin_key: str = field(default_factory=lambda: "cbk_test_" + secrets.token_urlsafe(24))
    user_key: str | None = None
    installation: str | None = None
    project: str = field(default_factory=lambda: "crash-" + secrets.token_hex(4))
    repairs: list[dict] = field(default_factory=list)
    # The body of each start sent with an Idempotency-Key, by key, to be retried after the last restart.
    keyed: dict[str, dict] = field(default_factory=dict)
    # Repairs by kind over all restarts, from each process's Prometheus counter.
    repaired: Counter[str] = field(default_factory=Counter)

    def body(self, key: str | None = None) -> dict:
        labels = {RUN_LABEL: RUN_ID, CRASH_LABEL: self.project}
        if key is not None:
            labels[KEY_LABEL] = key
        return {
            "image": self.image,
            "command": ["sleep", "600"],
            "memory": "16m",
            "cpus": 0.1,
            "projectId": self.project,
            "labels": labels,
        }


async def prepare_user(target: TargetInstallation, server: RunningServer) -> None:
    """Create the developer user with a key, and quotas that the test's containers never reach."""
    async with server.async_client() as admin:
        assert (await admin.post("/api/users", json={"name": USER, "role": "developer"})).status_code == 201
        created = await admin.post("/api/keys", json={"name": "crash key", "user": USER})
        assert created.status_code == 201, created.text
        target.user_key = created.json()["secret"]
        limits = {"maxContainers": 10_000, "maxMemory": "1000g", "maxCpus": 10_000}
        assert (await admin.put(f"/api/quotas/{USER}", json=limits)).status_code == 200
        target.installation = (await admin.get("/api/admin/reconcile")).json()["installation"]


async def settle(target: TargetInstallation, server: RunningServer) -> None:
    """Run passes until two in a row repair nothing and no row is `creating`.

    The first passes wait for the killed process's lease to expire and for its starts to pass the
    grace period. The repairs are kept for the failure message.
    """
    deadline = time.monotonic() + SETTLE_LIMIT
    quiet = 0
    async with server.async_client() as admin:
        while quiet < 2:
            assert time.monotonic() < deadline, f"reconciliation did not settle; repairs so far: {target.repairs}"
            response = await admin.post("/api/admin/reconcile")
            if response.status_code == 409:
                # The killed process still holds the lease until it expires.
                await asyncio.sleep(0.5)
                continue
            assert response.status_code == 200, response.text
            report = response.json()
            target.repairs.extend(report["repairs"])
            creating = [row for row in await target.database.rows() if row["status"] == "creating"]
            if report["repairs"] or report["error"] or creating:
                quiet = 0
            else:
                quiet += 1
            await asyncio.sleep(0.5)

        metrics = (await admin.get("/metrics")).text
    for family in text_string_to_metric_families(metrics):
        if family.name == "corebase_reconcile_repairs":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    target.repaired[sample.labels["kind"]] += int(sample.value)


async def check_agreement(target: TargetInstallation, server: RunningServer, docker: aiodocker.Docker) -> None:
    rows = {row["id"]: row for row in await target.database.rows()}
    active = {container_id: row for container_id, row in rows.items() if row["status"] in ACTIVE_STATUSES}
    engine = {}
    for container in await docker.containers.list(all=True, filters={"label": [f"corebase.installation={target.installation}"]}):
        details = await container.show()
        engine[details["Config"]["Labels"]["corebase.id"]] = details

    for container_id, details in engine.items():
        row = active.get(container_id)
        assert row is not None, f"container {details['Id']} ({container_id}) has no active row: {rows.get(container_id)}"
        assert row["docker_id"] == details["Id"], f"{container_id}: row {row}, engine {details['Id']}"
        assert row["status"] == details["State"]["Status"], f"{container_id}: row {row}, engine {details['State']}"
    for container_id, row in active.items():
        assert container_id in engine, f"active row {row} has no container"
    assert all(row["status"] != "creating" for row in rows.values())

    # Every container this test asked for carries the installation label too.
    labelled = await docker.containers.list(all=True, filters={"label": [f"{CRASH_LABEL}={target.project}"]})
    assert {container.id for container in labelled} == {details["Id"] for details in engine.values()}

    owned = [row for row in active.values() if row["owner"] == USER]
    async with server.async_client(target.user_key) as client:
        usage = (await client.get("/api/quotas/me")).json()["usage"]
    assert usage["containers"] == len(owned)
    assert usage["memory"] == sum(row["memory"] or 0 for row in owned)


async def running_containers(target: TargetInstallation, client: httpx.AsyncClient) -> list[str]:
    listed = await client.get("/api/runtime/containers", params={"projectId": target.project, "limit": 200})
    assert listed.status_code == 200, listed.text
    return [record["id"] for record in listed.json()["items"] if record["status"] == "running"]


async def send_load(target: TargetInstallation, server: RunningServer) -> asyncio.Task:
    """Start the round's requests concurrently: new containers, and stops and removes of running ones.

    Containers are started first, one after another, until there are enough to stop and remove.
    """
    client = server.async_client(target.user_key, timeout=30)
    running = await running_containers(target, client)
    while len(running) < STOPS_PER_ROUND + REMOVES_PER_ROUND:
        response = await client.post("/api/runtime/start", json=target.body())
        assert response.status_code == 201, response.text
        running.append(response.json()["id"])

    requests = []
    for container_id in running[:STOPS_PER_ROUND]:
        requests.append(client.post("/api/runtime/stop", json={"containerId": container_id, "timeout": 0}))
    for container_id in running[STOPS_PER_ROUND : STOPS_PER_ROUND + REMOVES_PER_ROUND]:
        requests.append(client.post("/api/runtime/remove", json={"containerId": container_id, "force": True}))
    for _ in range(STARTS_PER_ROUND):
        key = "crash-" + secrets.token_hex(8)
        target.keyed[key] = target.body(key)
        requests.append(client.post("/api/runtime/start", json=target.keyed[key], headers={"Idempotency-Key": key}))

    async def send_all() -> None:
        try:
            await asyncio.gather(*requests, return_exceptions=True)
        finally:
            await client.aclose()

    return asyncio.create_task(send_all())


async def retry_keyed_starts(target: TargetInstallation, server: RunningServer, docker: aiodocker.Docker) -> None:
    """Retry every keyed start of the rounds: each key must name one container, never two.

    A retry gets 409 while the lock of a killed request's key has not run out, so it waits.
    """
    deadline = time.monotonic() + SETTLE_LIMIT
    async with server.async_client(target.user_key, timeout=30) as client:
        for key, body in target.keyed.items():
            while (response := await client.post("/api/runtime/start", json=body, headers={"Idempotency-Key": key})).status_code == 409:
                assert time.monotonic() < deadline, f"key {key} stayed in progress: {response.text}"
                await asyncio.sleep(0.5)
            assert response.status_code == 201, response.text
            made = await docker.containers.list(all=True, filters={"label": [f"{KEY_LABEL}={key}"]})
            # A container that a later round removed is gone, and its key still names it.
            assert len(made) <= 1, f"key {key} started {len(made)} containers"
            if made:
                labels = (await made[0].show())["Config"]["Labels"]
                assert labels["corebase.id"] == response.json()["id"], f"key {key}: {response.text}"


async def crash_rounds(target: TargetInstallation, kill_delays: tuple[float, ...], docker: aiodocker.Docker) -> None:
    for round_number, delay in enumerate(kill_delays):
        with run_server(target.data_dir, env=target.env, admin_key=target.admin_key) as server:
            if round_number == 0:
                await prepare_user(target, server)
            else:
                await settle(target, server)
                await check_agreement(target, server, docker)

            load = await send_load(target, server)
            await asyncio.sleep(delay)
            server.process.send_signal(signal.SIGKILL)
            server.process.wait()
            await asyncio.gather(load, return_exceptions=True)

    with run_server(target.data_dir, env=target.env, admin_key=target.admin_key) as server:
        await settle(target, server)
        await check_agreement(target, server, docker)
        await retry_keyed_starts(target, server, docker)
        await check_agreement(target, server, docker)
        # The recovered server serves starts as before.
        async with server.async_client(target.user_key) as client:
            response = await client.post("/api/runtime/start", json=target.body())
            assert response.status_code == 201, response.text
    # Without interrupted starts, the kills missed the window this test is about.
    assert target.repaired["interrupted"] > 0, target.repaired


@pytest.fixture
async def cleanup() -> AsyncIterator[list[str]]:
    """Collect label filters, such as the installation's; their containers are removed after the test."""
    labels: list[str] = []
    try:
        yield labels
    finally:
        for label in labels:
            await remove_containers(label)


async def test_kills_on_sqlite(tmp_path, docker, test_image, cleanup):
    data_dir = tmp_path / "data"
    target = TargetInstallation(data_dir, Database(sqlite_path=data_dir / "corebase.sqlite"), dict(SERVER_ENV), test_image)
    cleanup.append(f"{CRASH_LABEL}={target.project}")
    try:
        await crash_rounds(target, SQLITE_KILL_DELAYS, docker)
    finally:
        if target.installation:
            cleanup.append(f"corebase.installation={target.installation}")


@pytest.mark.postgres
async def test_kills_on_postgres(tmp_path, docker, test_image, postgres_url, cleanup):
    database_url = await create_postgres_database(postgres_url)
    env = {**SERVER_ENV, "COREBASE_DATABASE_URL": database_url}
    target = TargetInstallation(tmp_path / "data", Database(postgres_url=database_url), env, test_image)
    cleanup.append(f"{CRASH_LABEL}={target.project}")
    try:
        await crash_rounds(target, POSTGRES_KILL_DELAYS, docker)
    finally:
        if target.installation:
            cleanup.append(f"corebase.installation={target.installation}")
        await drop_postgres_database(postgres_url, database_url)
