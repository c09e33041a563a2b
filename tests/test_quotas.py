"""Per-user quotas through real servers on SQLite and PostgreSQL: limits, usage, and concurrent starts."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from typing import NamedTuple

import httpx
import pytest

from api_support import (
    create_postgres_database,
    drop_postgres_database,
    remove_containers,
    run_containers_in_engine,
    start_body,
)
from support.server import RunningServer, run_server

pytestmark = pytest.mark.engine

SLEEP = ["sleep", "600"]
MIB = 1024**2
# Label that ties a test's containers to the user who started them, for engine-side counts.
USER_LABEL = "corebase-test.quota-user"
# Seconds a pool may take to start its members on a busy engine.
POOL_WAIT = 90.0


class QuotaServer:
    """A running server for quota tests."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server

    async def create_developer_key(self, user: str) -> str:
        """Create the developer `user` and a key for it through the admin API; return the key's secret."""
        async with self.server.async_client() as admin:
            created = await admin.post("/api/users", json={"name": user, "role": "developer"})
            assert created.status_code == 201, created.text
            key = await admin.post("/api/keys", json={"name": f"{user} (test)", "user": user})
            assert key.status_code == 201, key.text
        return key.json()["secret"]


class Developer(NamedTuple):
    name: str
    key: str


@pytest.fixture(scope="module")
def sqlite_quota_server(tmp_path_factory, docker_available) -> QuotaServer:
    with run_server(tmp_path_factory.mktemp("corebase-quota-data")) as server:
        yield QuotaServer(server)


@pytest.fixture(scope="module")
async def pg_quota_server(tmp_path_factory, docker_available, postgres_url) -> QuotaServer:
    database_url = await create_postgres_database(postgres_url)
    try:
        data_dir = tmp_path_factory.mktemp("corebase-quota-pg-data")
        with run_server(data_dir, env={"COREBASE_DATABASE_URL": database_url}) as server:
            yield QuotaServer(server)
    finally:
        await drop_postgres_database(postgres_url, database_url)


@pytest.fixture(params=["sqlite", "postgres"])
def quota_server(request) -> QuotaServer:
    return request.getfixturevalue("sqlite_quota_server" if request.param == "sqlite" else "pg_quota_server")


@pytest.fixture
async def admin(quota_server) -> httpx.AsyncClient:
    async with quota_server.server.async_client() as client:
        yield client


@pytest.fixture
async def user(quota_server) -> Developer:
    """A fresh developer per test; its containers are removed from the engine afterwards."""
    name = "quota-" + secrets.token_hex(4)
    yield Developer(name, await quota_server.create_developer_key(name))
    await remove_containers(f"{USER_LABEL}={name}")


def user_body(image: str, user: str, **fields) -> dict:
    return start_body(image, command=SLEEP, labels={USER_LABEL: user}, **fields)


async def engine_containers_of(user: str) -> list[dict]:
    return [
        container
        for container in await run_containers_in_engine()
        if container.get("Labels", {}).get(USER_LABEL) == user
    ]


async def own_quota(client: httpx.AsyncClient) -> dict:
    response = await client.get("/api/quotas/me")
    assert response.status_code == 200, response.text
    return response.json()


async def set_quota(admin: httpx.AsyncClient, user: str, **limits) -> dict:
    response = await admin.put(f"/api/quotas/{user}", json=limits)
    assert response.status_code == 200, response.text
    return response.json()


async def remove_all(client: httpx.AsyncClient, records: list[dict]) -> None:
    for record in records:
        response = await client.post("/api/runtime/remove", json={"containerId": record["id"], "force": True})
        assert response.status_code == 200, response.text


async def test_own_quota_shows_limits_and_usage(quota_server, admin, user, test_image):
    await set_quota(admin, user.name, maxContainers=3, maxMemory="1g", maxCpus=2.0)
    async with quota_server.server.async_client(user.key) as client:
        before = await own_quota(client)
        assert before["user"] == user.name
        assert before["enforced"] is True
        assert before["limits"]["maxContainers"] == 3
        assert before["limits"]["maxMemory"] == 1024 * MIB
        assert before["limits"]["maxCpus"] == 2.0
        assert before["usage"] == {"containers": 0, "memory": 0, "cpus": 0.0}

        first = await client.post("/api/runtime/start", json=user_body(test_image, user.name, memory="32m", cpus=0.5))
        assert first.status_code == 201, first.text
        second = await client.post("/api/runtime/start", json=user_body(test_image, user.name, memory="16m", cpus=0.25))
        assert second.status_code == 201, second.text

        during = await own_quota(client)
        assert during["usage"] == {"containers": 2, "memory": 48 * MIB, "cpus": 0.75}

        await remove_all(client, [first.json(), second.json()])
        after = await own_quota(client)
        assert after["usage"] == {"containers": 0, "memory": 0, "cpus": 0.0}


async def test_container_count_limit(quota_server, admin, user, test_image):
    await set_quota(admin, user.name, maxContainers=2)
    async with quota_server.server.async_client(user.key) as client:
        started = []
        for _ in range(2):
            response = await client.post("/api/runtime/start", json=user_body(test_image, user.name, memory="16m"))
            assert response.status_code == 201, response.text
            started.append(response.json())

        rejected = await client.post("/api/runtime/start", json=user_body(test_image, user.name, memory="16m"))
        assert rejected.status_code == 403, rejected.text
        problem = rejected.json()
        assert problem["type"].endswith("/quota-exceeded")
        assert problem["quota"] == "maxContainers"
        assert problem["limit"] == 2
        assert problem["usage"] == 2
        assert "maxContainers" in problem["detail"]

        # The rejected start left no row and no engine container.
        listed = (await client.get("/api/runtime/containers")).json()
        assert listed["total"] == 2
        assert len(await engine_containers_of(user.name)) == 2

        await remove_all(client, started)
        assert (await own_quota(client))["usage"]["containers"] == 0
        again = await client.post("/api/runtime/start", json=user_body(test_image, user.name, memory="16m"))
        assert again.status_code == 201, again.text
        await remove_all(client, [again.json()])


async def test_total_memory_and_cpu_limits(quota_server, admin, user, test_image):
    await set_quota(admin, user.name, maxMemory="64m", maxCpus=1.0)
    async with quota_server.server.async_client(user.key) as client:
        first = await client.post("/api/runtime/start", json=user_body(test_image, user.name, memory="48m", cpus=0.5))
        assert first.status_code == 201, first.text

        over_memory = await client.post("/api/runtime/start", json=user_body(test_image, user.name, memory="32m", cpus=0.25))
        assert over_memory.status_code == 403, over_memory.text
        assert over_memory.json()["quota"] == "maxMemory"
        assert over_memory.json()["limit"] == 64 * MIB
        assert over_memory.json()["usage"] == 48 * MIB
        assert over_memory.json()["requested"] == 32 * MIB

        over_cpus = await client.post("/api/runtime/start", json=user_body(test_image, user.name, memory="16m", cpus=0.75))
        assert over_cpus.status_code == 403, over_cpus.text
        assert over_cpus.json()["quota"] == "maxCpus"
        assert over_cpus.json()["limit"] == 1.0
        assert over_cpus.json()["usage"] == 0.5

        fits = await client.post("/api/runtime/start", json=user_body(test_image, user.name, memory="16m", cpus=0.5))
        assert fits.status_code == 201, fits.text
        assert (await own_quota(client))["usage"] == {"containers": 2, "memory": 64 * MIB, "cpus": 1.0}
        assert len(await engine_containers_of(user.name)) == 2

        await remove_all(client, [first.json(), fits.json()])
        assert (await own_quota(client))["usage"] == {"containers": 0, "memory": 0, "cpus": 0.0}


@pytest.mark.parametrize(
    ("request_fields", "quota", "field"),
    [
        ({"memory": "64m"}, "maxContainerMemory", "memory"),
        ({"memory": "16m", "cpus": 1.5}, "maxContainerCpus", "cpus"),
    ],
)
async def test_per_container_limits_name_the_field(quota_server, admin, user, test_image, request_fields, quota, field):
    await set_quota(admin, user.name, maxContainerMemory="32m", maxContainerCpus=1.0)
    async with quota_server.server.async_client(user.key) as client:
        response = await client.post("/api/runtime/start", json=user_body(test_image, user.name, **request_fields))
        assert response.status_code == 403, response.text
        problem = response.json()
        assert problem["quota"] == quota
        assert problem["field"] == field
        assert field in problem["detail"]
        assert (await own_quota(client))["usage"]["containers"] == 0
    assert await engine_containers_of(user.name) == []


async def test_admin_api_manages_overrides(quota_server, admin, user):
    async with quota_server.server.async_client(user.key) as client:
        forbidden = await client.put(f"/api/quotas/{user.name}", json={"maxContainers": 100})
        assert forbidden.status_code == 403
        assert "admin" in forbidden.json()["detail"]
        assert (await client.get(f"/api/quotas/{user.name}")).status_code == 403
        assert (await client.delete(f"/api/quotas/{user.name}")).status_code == 403

    defaults = (await admin.get(f"/api/quotas/{user.name}")).json()
    assert defaults["overrides"]["maxContainers"] is None
    assert defaults["limits"]["maxContainers"] == 10
    assert defaults["updatedAt"] is None

    changed = await set_quota(admin, user.name, maxContainers=4, maxContainerMemory="256m")
    assert changed["overrides"]["maxContainers"] == 4
    assert changed["overrides"]["maxContainerMemory"] == 256 * MIB
    assert changed["overrides"]["maxMemory"] is None
    assert changed["limits"]["maxMemory"] == 16 * 1024 * MIB
    assert changed["updatedAt"] is not None

    # PUT replaces every override, so a field left out returns to its default.
    replaced = await set_quota(admin, user.name, maxCpus=3.0)
    assert replaced["overrides"]["maxContainers"] is None
    assert replaced["limits"]["maxContainers"] == 10
    assert replaced["limits"]["maxCpus"] == 3.0

    assert (await admin.delete(f"/api/quotas/{user.name}")).status_code == 204
    assert (await admin.get(f"/api/quotas/{user.name}")).json()["limits"]["maxCpus"] == 16.0

    invalid = await admin.put(f"/api/quotas/{user.name}", json={"maxMemory": "lots"})
    assert invalid.status_code == 422
    assert invalid.json()["field"] == "maxMemory"
    assert (await admin.put("/api/quotas/nobody-" + secrets.token_hex(4), json={})).status_code == 404

    admin_quota = await own_quota(admin)
    assert admin_quota["enforced"] is False


async def test_concurrent_starts_stop_at_the_limit(quota_server, admin, user, test_image):
    await set_quota(admin, user.name, maxContainers=10)
    async with quota_server.server.async_client(user.key) as client:
        body = user_body(test_image, user.name, memory="16m", cpus=0.1)
        responses = await asyncio.gather(*(client.post("/api/runtime/start", json=body) for _ in range(50)))
        statuses = Counter(response.status_code for response in responses)
        assert statuses == {201: 10, 403: 40}, [response.text for response in responses if response.status_code >= 500]
        rejections = [response.json() for response in responses if response.status_code == 403]
        assert {problem["quota"] for problem in rejections} == {"maxContainers"}
        assert {problem["usage"] for problem in rejections} == {10}

        assert len(await engine_containers_of(user.name)) == 10
        listed = (await client.get("/api/runtime/containers", params={"limit": 100})).json()
        assert listed["total"] == 10
        usage = (await own_quota(client))["usage"]
        assert usage["containers"] == 10
        assert usage["memory"] == 10 * 16 * MIB
        assert usage["cpus"] == pytest.approx(1.0)

        await remove_all(client, [response.json() for response in responses if response.status_code == 201])
        assert (await own_quota(client))["usage"] == {"containers": 0, "memory": 0, "cpus": 0.0}
        assert await engine_containers_of(user.name) == []



async def wait_for_idle_members(admin: httpx.AsyncClient, template: str, count: int) -> None:
    deadline = asyncio.get_running_loop().time() + POOL_WAIT
    while (await admin.get(f"/api/runtime/pools/{template}")).json()["idle"] < count:
        assert asyncio.get_running_loop().time() < deadline, f"pool {template} did not reach {count} idle members"
        await asyncio.sleep(0.2)


async def test_pool_claims_count_against_the_quota(quota_server, admin, user, test_image):
    await set_quota(admin, user.name, maxContainers=1)
    template = "cbquota-" + secrets.token_hex(4)
    claimed = []
    async with quota_server.server.async_client(user.key) as client:
        body = {"name": template, "image": test_image, "command": SLEEP, "memory": "16m", "cpus": 0.25}
        created = await client.post("/api/runtime/templates", json=body)
        assert created.status_code == 201, created.text
        try:
            pool = {"minIdle": 2, "maxIdle": 2, "maxTotal": 3, "idleTtl": 600}
            assert (await admin.put(f"/api/runtime/pools/{template}", json=pool)).status_code == 200
            await wait_for_idle_members(admin, template, 2)

            first = await client.post("/api/runtime/start", json={"template": template, "labels": {USER_LABEL: user.name}})
            assert first.status_code == 201, first.text
            claimed.append(first.json())
            assert first.json()["source"] == "pool"
            assert (await own_quota(client))["usage"] == {"containers": 1, "memory": 16 * MIB, "cpus": 0.25}

            second = await client.post("/api/runtime/start", json={"template": template, "labels": {USER_LABEL: user.name}})
            if second.status_code == 201:
                claimed.append(second.json())
            assert second.status_code == 403, second.text
            assert second.json()["quota"] == "maxContainers"
            assert second.json()["usage"] == 1
            # The member the rejected claim took went back to the pool instead of to the caller.
            assert (await own_quota(client))["usage"]["containers"] == 1
            await wait_for_idle_members(admin, template, 2)

            await remove_all(client, claimed)
            claimed.clear()
            assert (await own_quota(client))["usage"] == {"containers": 0, "memory": 0, "cpus": 0.0}
        finally:
            await remove_all(client, claimed)
            await admin.delete(f"/api/runtime/pools/{template}")
            await client.delete(f"/api/runtime/templates/{template}")
