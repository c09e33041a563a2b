"""Pools shared by two `corebase serve` processes on one PostgreSQL database and the real engine.

Both processes claim members. One of them, the holder of the "pool-manager" lease, starts and
retires members. These tests start both processes on a fresh database, point the built-in
`python` template at the local toolbox image and check the claims, the lease and retirement
while requests go to both processes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiodocker
import asyncpg
import httpx
import pytest

from api_support import (
    RUN_ID,
    RUN_LABEL,
    create_postgres_database,
    drop_postgres_database,
    remove_database_containers,
    toolbox_template_env,
)
from support.server import RunningServer, run_server

pytestmark = [pytest.mark.engine, pytest.mark.postgres]

TEMPLATE = "python"
POOL_PATH = f"/api/runtime/pools/{TEMPLATE}"
LEASE_NAME = "pool-manager"
# Seconds between two manager passes in both processes.
POOL_INTERVAL = "0.2"
# Upper bound in seconds for every wait on the pool or the lease. It is generous because a loaded
# machine may take long to start members. The tests check what happens, not how fast.
WAIT_LIMIT = 180.0
POLL_INTERVAL = 0.2
# Per-request timeout in seconds, long because a burst of cold starts on a small machine can take a while.
REQUEST_TIMEOUT = 180.0


@dataclass
class Cluster:
    database_url: str
    servers: list[RunningServer]


def template_start_body(**fields) -> dict:
    """A start request for the pooled template, with this test run's label like `start_body`."""
    labels = {RUN_LABEL: RUN_ID, **fields.pop("labels", {})}
    return {"template": TEMPLATE, "labels": labels, **fields}



@pytest.fixture
async def cluster(tmp_path, postgres_url, toolbox_image) -> AsyncIterator[Cluster]:
    """Two server processes sharing one new PostgreSQL database, which is dropped after both stop."""
    database_url = await create_postgres_database(postgres_url)
    env = {
        "COREBASE_DATABASE_URL": database_url,
        "COREBASE_POOL_INTERVAL": POOL_INTERVAL,
        **toolbox_template_env(toolbox_image),
    }
    admin_key = "cbk_test_" + secrets.token_urlsafe(24)
    try:
        with contextlib.ExitStack() as stack:
            # run_server returns once the process responds, so the second process starts after the
            # first one has migrated the new database and the two never migrate it at once.
            servers = [
                stack.enter_context(run_server(tmp_path / name, env=env, admin_key=admin_key))
                for name in ("server-a", "server-b")
            ]
            try:
                yield Cluster(database_url, servers)
            finally:
                await delete_pool(servers)
    finally:
        try:
            await remove_database_containers(database_url)
        finally:
            await drop_postgres_database(postgres_url, database_url)


async def delete_pool(servers: list[RunningServer]) -> None:
    """Delete the pool through the first server that is still running, so no new members start."""
    for server in servers:
        if server.process.poll() is not None:
            continue
        async with server.async_client(timeout=REQUEST_TIMEOUT) as client:
            try:
                response = await client.delete(POOL_PATH)
            except httpx.TransportError:
                continue
        if response.status_code in (204, 404):
            return


async def configure_pool(client: httpx.AsyncClient, min_idle: int, max_idle: int, max_total: int) -> dict:
    response = await client.put(POOL_PATH, json={"minIdle": min_idle, "maxIdle": max_idle, "maxTotal": max_total})
    assert response.status_code == 200, response.text
    return response.json()


async def wait_for_pool(client: httpx.AsyncClient, condition: Callable[[dict], bool], expected: str) -> dict:
    """Poll the pool record until `condition` holds, and fail with the last record after WAIT_LIMIT seconds."""
    deadline = time.monotonic() + WAIT_LIMIT
    while True:
        response = await client.get(POOL_PATH)
        assert response.status_code == 200, response.text
        record = response.json()
        if condition(record):
            return record
        if time.monotonic() > deadline:
            pytest.fail(f"the pool did not reach {expected} within {WAIT_LIMIT:g} s; last record: {record}")
        await asyncio.sleep(POLL_INTERVAL)


async def claim(client: httpx.AsyncClient, delay: float = 0.0) -> tuple[httpx.AsyncClient, httpx.Response]:
    """Start the pooled template after `delay` seconds and return the client with the response."""
    await asyncio.sleep(delay)
    return client, await client.post("/api/runtime/start", json=template_start_body())


def check_created(results: list[tuple[httpx.AsyncClient, httpx.Response]]) -> list[tuple[httpx.AsyncClient, dict]]:
    failures = [(response.status_code, response.text) for _, response in results if response.status_code != 201]
    assert failures == []
    return [(client, response.json()) for client, response in results]


async def check_serving(docker: aiodocker.Docker, client: httpx.AsyncClient, record: dict) -> None:
    """Check that a started container runs in the engine, belongs to its record and runs commands."""
    engine_view = await docker.containers.get(record["dockerId"])
    assert engine_view["State"]["Running"] is True, engine_view["State"]
    assert engine_view["Config"]["Labels"]["corebase.id"] == record["id"]

    fetched = await client.get(f"/api/runtime/containers/{record['id']}")
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["status"] == "running"

    executed = await client.post("/api/runtime/exec", json={"containerId": record["id"], "command": ["true"]})
    assert executed.status_code == 200, executed.text
    assert executed.json()["exitCode"] == 0


async def read_lease(database_url: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetch("SELECT holder, expires_at FROM leases WHERE name = $1", LEASE_NAME)
    finally:
        await connection.close()


def holder_pid(holder: str) -> int:
    """Return the process id in a lease holder, which the pool service writes as host:pid:token."""
    return int(holder.rsplit(":", 2)[1])


async def wait_for_lease_holder(database_url: str, pid: int) -> asyncpg.Record:
    deadline = time.monotonic() + WAIT_LIMIT
    while True:
        rows = await read_lease(database_url)
        if len(rows) == 1 and holder_pid(rows[0]["holder"]) == pid:
            return rows[0]
        if time.monotonic() > deadline:
            pytest.fail(f"process {pid} did not take the {LEASE_NAME} lease within {WAIT_LIMIT:g} s; leases: {rows}")
        await asyncio.sleep(POLL_INTERVAL)


async def idle_member_ids(database_url: str) -> set[str]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT id FROM containers WHERE pool = $1 AND pool_state = 'idle'", TEMPLATE
        )
    finally:
        await connection.close()
    return {row["id"] for row in rows}


async def test_concurrent_claims_share_no_member(cluster, docker):
    first, second = cluster.servers
    async with first.async_client(timeout=REQUEST_TIMEOUT) as a, second.async_client(timeout=REQUEST_TIMEOUT) as b:
        await configure_pool(a, min_idle=12, max_idle=12, max_total=12)
        await wait_for_pool(a, lambda record: record["idle"] == 12, "12 idle members")

        requests = [claim(client) for _ in range(12) for client in (a, b)]
        started = check_created(await asyncio.gather(*requests))

        records = [record for _, record in started]
        pooled = [(client, record) for client, record in started if record["source"] == "pool"]
        cold = [record for record in records if record["source"] == "cold"]
        assert len(pooled) + len(cold) == 24
        assert pooled, "no start was served from the pool"

        pooled_ids = [record["id"] for _, record in pooled]
        pooled_engine_ids = [record["dockerId"] for _, record in pooled]
        assert len(set(pooled_ids)) == len(pooled_ids)
        assert len(set(pooled_engine_ids)) == len(pooled_engine_ids)
        assert len({record["id"] for record in records}) == 24
        assert len({record["dockerId"] for record in records}) == 24

        for client, record in pooled:
            assert record["status"] == "running"
            assert record["owner"] == "admin"
            assert record["labels"] == {RUN_LABEL: RUN_ID}
            # Check each member through the process that did not hand it out, which reads it only
            # from the shared database.
            await check_serving(docker, b if client is a else a, record)

        status = (await b.get(POOL_PATH)).json()
        assert status["hits"] == len(pooled)
        assert status["misses"] == len(cold)
        assert status["hits"] + status["misses"] == 24


async def test_surviving_process_takes_over_manager(cluster, docker):
    servers_by_pid = {server.process.pid: server for server in cluster.servers}
    first = cluster.servers[0]
    async with first.async_client(timeout=REQUEST_TIMEOUT) as a:
        await configure_pool(a, min_idle=3, max_idle=3, max_total=6)

        # Sample the lease on every poll while the pool fills.
        holders: set[str] = set()
        deadline = time.monotonic() + WAIT_LIMIT
        while True:
            holders.update(row["holder"] for row in await read_lease(cluster.database_url))
            record = (await a.get(POOL_PATH)).json()
            if record["idle"] == 3:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the pool did not reach 3 idle members within {WAIT_LIMIT:g} s; last record: {record}")
            await asyncio.sleep(POLL_INTERVAL)

    # One process held the lease all through the fill, and it is one of the two servers.
    assert len(holders) == 1, holders
    (holder,) = holders
    assert holder_pid(holder) in servers_by_pid
    leader = servers_by_pid[holder_pid(holder)]
    (survivor,) = [server for server in cluster.servers if server is not leader]

    # The holder renews its lease, so the expiry moves forward while it keeps the lease.
    (before,) = await read_lease(cluster.database_url)
    renewed = await wait_for_lease_holder(cluster.database_url, leader.process.pid)
    deadline = time.monotonic() + WAIT_LIMIT
    while renewed["expires_at"] <= before["expires_at"]:
        assert time.monotonic() < deadline, "the lease holder did not renew its lease"
        await asyncio.sleep(POLL_INTERVAL)
        renewed = await wait_for_lease_holder(cluster.database_url, leader.process.pid)

    started_by_leader = await idle_member_ids(cluster.database_url)
    assert len(started_by_leader) == 3
    leader.process.kill()
    leader.process.wait()
    await wait_for_lease_holder(cluster.database_url, survivor.process.pid)

    async with survivor.async_client(timeout=REQUEST_TIMEOUT) as client:
        # The members the killed process started stay in the engine and in the database.
        claimed = []
        for _ in range(3):
            _, response = await claim(client)
            assert response.status_code == 201, response.text
            record = response.json()
            assert record["source"] == "pool"
            assert record["id"] in started_by_leader
            claimed.append(record)

        # Only the survivor can start the replacements, so new members prove it manages the pool.
        await wait_for_pool(client, lambda record: record["idle"] == 3, "3 idle members after the claims")
        refilled = await idle_member_ids(cluster.database_url)
        assert len(refilled) == 3
        assert refilled.isdisjoint(started_by_leader)

        for record in claimed:
            await check_serving(docker, client, record)

        # The new members are served like the old ones.
        for _ in range(3):
            _, response = await claim(client)
            assert response.status_code == 201, response.text
            record = response.json()
            assert record["source"] == "pool"
            assert record["id"] in refilled
            await check_serving(docker, client, record)

    (lease,) = await read_lease(cluster.database_url)
    assert holder_pid(lease["holder"]) == survivor.process.pid


# How each round of the retirement test empties the pool. "lower" sets minIdle and maxIdle to 0,
# so the manager retires the members one by one. "delete" deletes the pool, which retires them all
# in one statement.
SHRINK_ROUNDS = ("lower", "delete", "lower", "delete", "lower", "delete")
ROUND_MEMBERS = 8
ROUND_CLAIMS = 6
# Seconds between two claims of a round, so the claims spread over the manager's retirement pass
# instead of all landing before it begins.
CLAIM_SPACING = 0.05
# Seconds from the first claim of a round to the shrink. The claims before it make the manager
# start replacements, so the shrink lands while a manager pass is under way.
SHRINK_DELAY = 2 * CLAIM_SPACING
# Minimum number of starts sent after a delete returned. A manager pass that read the pool just before the delete may
# still start members, and these claims would take them if they became idle.
CLAIMS_AFTER_DELETE = 5


async def shrink_pool(client: httpx.AsyncClient, shrink: str) -> None:
    await asyncio.sleep(SHRINK_DELAY)
    if shrink == "lower":
        await configure_pool(client, min_idle=0, max_idle=0, max_total=ROUND_MEMBERS)
    else:
        response = await client.delete(POOL_PATH)
        assert response.status_code == 204, response.text


async def member_count(database_url: str) -> int:
    """Count the rows of pool members that are not claimed: warming, idle or retiring."""
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetchval(
            "SELECT count(*) FROM containers WHERE pool = $1 AND pool_state IN ('warming', 'idle', 'retiring')", TEMPLATE
        )
    finally:
        await connection.close()


async def claim_after_delete(client: httpx.AsyncClient, database_url: str) -> None:
    """Start the template until the deleted pool's last member is gone, and check each start is cold.

    Each cold container is removed at once, so the loop does not load the engine.
    """
    deadline = time.monotonic() + WAIT_LIMIT
    sent = 0
    while sent < CLAIMS_AFTER_DELETE or await member_count(database_url) > 0:
        if time.monotonic() > deadline:
            pytest.fail(f"members of the deleted pool were still there after {WAIT_LIMIT:g} s")
        _, response = await claim(client)
        sent += 1
        assert response.status_code == 201, response.text
        record = response.json()
        assert record["source"] == "cold", f"a start after the pool was deleted was served from it: {record}"
        removed = await client.post("/api/runtime/remove", json={"containerId": record["id"], "force": True})
        assert removed.status_code == 200, removed.text
        await asyncio.sleep(POLL_INTERVAL)


async def test_retirement_spares_claimed_members(cluster, docker):
    first, second = cluster.servers
    claimed: list[dict] = []
    async with first.async_client(timeout=REQUEST_TIMEOUT) as a, second.async_client(timeout=REQUEST_TIMEOUT) as b:
        for shrink in SHRINK_ROUNDS:
            await configure_pool(a, min_idle=ROUND_MEMBERS, max_idle=ROUND_MEMBERS, max_total=ROUND_MEMBERS)
            await wait_for_pool(a, lambda record: record["idle"] == ROUND_MEMBERS, f"{ROUND_MEMBERS} idle members")

            # A empties the pool while B claims from it.
            claims = [claim(b, delay=index * CLAIM_SPACING) for index in range(ROUND_CLAIMS)]
            _, *results = await asyncio.gather(shrink_pool(a, shrink), *claims)
            started = check_created(results)
            sources = [record["source"] for _, record in started]
            assert set(sources) <= {"pool", "cold"}, sources
            pooled = [record for _, record in started if record["source"] == "pool"]
            claimed.extend(pooled)

            if shrink == "lower":
                await wait_for_pool(a, lambda record: record["size"] == 0, "no members after lowering it to 0")
            else:
                deleted = await a.get(POOL_PATH)
                assert deleted.status_code == 404, deleted.text
                await claim_after_delete(b, cluster.database_url)

            # Let any removal still under way finish, then check that the claimed members still run.
            await asyncio.sleep(1.0)
            for record in pooled:
                await check_serving(docker, a, record)

        assert claimed, "no claim in any round was served from the pool"
        assert len({record["id"] for record in claimed}) == len(claimed)
        assert len({record["dockerId"] for record in claimed}) == len(claimed)

        # Later rounds retired other members, and every member claimed in an earlier round must still run.
        for record in claimed:
            await check_serving(docker, b, record)
