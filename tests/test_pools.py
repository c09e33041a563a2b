"""Pre-warmed pools on one server: filling, claiming, replacing, limits and autoscaling."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable

import pytest

from api_support import remove_server_containers, server_fixture, toolbox_template_env
from support.server import RunningServer

pytestmark = pytest.mark.engine

# Seconds a bounded wait may take; the pool manager runs every 0.2 s here.
WAIT_LIMIT = 90.0


@pytest.fixture(scope="module")
def server(tmp_path_factory, docker_available, toolbox_image) -> RunningServer:
    env = {**toolbox_template_env(toolbox_image), "COREBASE_POOL_INTERVAL": "0.2", "COREBASE_POOL_DEMAND_WINDOW": "6"}
    for running in server_fixture(tmp_path_factory, env):
        yield running
        asyncio.run(remove_server_containers(running.data_dir))




@pytest.fixture
async def template(api, toolbox_image) -> str:
    """A custom template of its own per test, so each test's pool is independent."""
    name = "cbpool-" + secrets.token_hex(4)
    body = {
        "name": name,
        "image": toolbox_image,
        "command": ["sleep", "infinity"],
        "memory": "32m",
        "cpus": 0.25,
        "healthcheck": {"test": ["sh", "-c", "exit 0"], "interval": 0.2, "retries": 3},
    }
    assert (await api.post("/api/runtime/templates", json=body)).status_code == 201
    yield name
    await api.delete(f"/api/runtime/pools/{name}")


async def wait_for(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def pool_status(api, template) -> dict:
    response = await api.get(f"/api/runtime/pools/{template}")
    assert response.status_code == 200, response.text
    return response.json()


async def wait_for_idle(api, template, count) -> dict:
    async def ready() -> bool:
        return (await pool_status(api, template))["idle"] == count

    await wait_for(ready, f"{count} idle members in pool {template}")
    return await pool_status(api, template)


async def members(docker, template, claimed: list[dict] = ()) -> dict[str, dict]:
    """The pool's unclaimed members in the engine, by CoreBase id.

    A claimed container keeps its corebase.pool label, because the engine cannot change labels,
    so the containers in `claimed` are left out.
    """
    taken = {record["id"] for record in claimed}
    found = {}
    for container in await docker.containers.list(all=True, filters={"label": [f"corebase.pool={template}"]}):
        labels = container._container["Labels"]
        if labels["corebase.id"] not in taken:
            found[labels["corebase.id"]] = container._container
    return found


async def claim(api, template, **fields) -> dict:
    response = await api.post("/api/runtime/start", json={"template": template, **fields})
    assert response.status_code == 201, response.text
    return response.json()


async def test_pool_fills_and_claims_are_served_from_it(api, docker, template):
    configured = await api.put(
        f"/api/runtime/pools/{template}", json={"minIdle": 2, "maxIdle": 4, "maxTotal": 5, "idleTtl": 600}
    )
    assert configured.status_code == 200, configured.text
    status = await wait_for_idle(api, template, 2)
    assert (status["minIdle"], status["maxIdle"], status["maxTotal"]) == (2, 4, 5)
    assert status["size"] == 2
    assert status["target"] == 2
    assert len(await members(docker, template)) == 2
    # Pool members belong to no user until claimed, so listings do not show them.
    listed = (await api.get("/api/runtime/containers", params={"limit": 500})).json()["items"]
    assert not [item for item in listed if item["template"] == template]

    name = "cbtest-claimed-" + secrets.token_hex(4)
    record = await claim(api, template, name=name, projectId="pooled", labels={"team": "blue"})
    assert record["source"] == "pool"
    assert record["status"] == "running"
    assert record["name"] == name
    assert record["projectId"] == "pooled"
    assert record["labels"] == {"team": "blue"}
    assert record["owner"] == "admin"
    engine = await docker.containers.get(record["dockerId"])
    assert engine["State"]["Running"] is True
    assert engine["Name"] == "/" + name
    executed = await api.post("/api/runtime/exec", json={"containerId": name, "command": ["true"]})
    assert executed.json()["exitCode"] == 0

    status = await wait_for_idle(api, template, 2)
    assert status["hits"] == 1
    assert status["claimLatency"]["p50Ms"] is not None
    assert len(await members(docker, template, [record])) == 2
    await api.post("/api/runtime/remove", json={"containerId": record["id"], "force": True})


async def test_requests_a_member_cannot_satisfy_start_cold(api, template):
    # Cold starts before the pool exists, and ones no member could serve, are not misses.
    before = await claim(api, template)
    await api.put(f"/api/runtime/pools/{template}", json={"minIdle": 1, "maxIdle": 1, "maxTotal": 2})
    await wait_for_idle(api, template, 1)
    record = await claim(api, template, env={"CUSTOM": "1"})
    assert record["source"] == "cold"
    status = await pool_status(api, template)
    assert status["idle"] == 1
    assert (status["hits"], status["misses"]) == (0, 0)
    await api.post("/api/runtime/remove", json={"containerId": before["id"], "force": True})
    await api.post("/api/runtime/remove", json={"containerId": record["id"], "force": True})


async def test_removed_member_never_handed_out(api, docker, template):
    await api.put(f"/api/runtime/pools/{template}", json={"minIdle": 1, "maxIdle": 1, "maxTotal": 2})
    await wait_for_idle(api, template, 1)
    (victim_id, victim), = (await members(docker, template)).items()
    await docker.containers.container(victim["Id"]).delete(force=True)

    record = await claim(api, template)
    assert record["id"] != victim_id
    assert (await docker.containers.get(record["dockerId"]))["State"]["Running"] is True
    await api.post("/api/runtime/remove", json={"containerId": record["id"], "force": True})

    # The pool notices the loss by itself and starts a replacement.
    await wait_for_idle(api, template, 1)
    assert victim_id not in await members(docker, template)


async def test_idle_members_are_replaced_after_their_ttl(api, docker, template):
    await api.put(f"/api/runtime/pools/{template}", json={"minIdle": 1, "maxIdle": 1, "maxTotal": 2, "idleTtl": 2})
    await wait_for_idle(api, template, 1)
    first = set(await members(docker, template))

    async def replaced() -> bool:
        current = await members(docker, template)
        return bool(current) and not (set(current) & first) and (await pool_status(api, template))["idle"] == 1

    await wait_for(replaced, "the member past its TTL to be replaced")


async def test_pool_never_exceeds_max_total(api, docker, template):
    await api.put(f"/api/runtime/pools/{template}", json={"minIdle": 3, "maxIdle": 3, "maxTotal": 3})
    claimed = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = await pool_status(api, template)
        assert status["idle"] + status["inFlight"] <= 3
        assert len(await members(docker, template, claimed)) <= 3
        if status["idle"] == 3 and len(claimed) < 4:
            claimed.append(await claim(api, template))
        await asyncio.sleep(0.1)
    assert claimed
    for record in claimed:
        await api.post("/api/runtime/remove", json={"containerId": record["id"], "force": True})


async def test_concurrent_claims_give_distinct_running_containers(api, docker, template):
    await api.put(f"/api/runtime/pools/{template}", json={"minIdle": 10, "maxIdle": 10, "maxTotal": 12})
    await wait_for_idle(api, template, 10)
    records = await asyncio.gather(*(claim(api, template) for _ in range(20)))

    assert len({record["id"] for record in records}) == 20
    assert len({record["dockerId"] for record in records}) == 20
    sources = [record["source"] for record in records]
    assert sources.count("pool") == 10
    assert sources.count("cold") == 10
    for record in records:
        assert (await docker.containers.get(record["dockerId"]))["State"]["Running"] is True
    await asyncio.gather(
        *(api.post("/api/runtime/remove", json={"containerId": record["id"], "force": True}) for record in records)
    )


async def test_autoscaling_follows_demand(api, template):
    await api.put(f"/api/runtime/pools/{template}", json={"minIdle": 1, "maxIdle": 6, "maxTotal": 8})
    await wait_for_idle(api, template, 1)
    burst = await asyncio.gather(*(claim(api, template) for _ in range(5)))

    async def grown() -> bool:
        return (await pool_status(api, template))["target"] >= 5

    await wait_for(grown, "the target to grow after a burst")
    await wait_for_idle(api, template, (await pool_status(api, template))["target"])
    second = await asyncio.gather(*(claim(api, template) for _ in range(5)))
    assert [record["source"] for record in second].count("pool") >= 4

    async def shrunk() -> bool:
        status = await pool_status(api, template)
        return status["target"] == 1 and status["idle"] == 1

    # With no claims for the 6 s demand window, the target falls back to minIdle.
    await wait_for(shrunk, "the target to shrink when idle")
    for record in [*burst, *second]:
        await api.post("/api/runtime/remove", json={"containerId": record["id"], "force": True})


async def test_template_update_replaces_idle_members(api, template, toolbox_image):
    await api.put(f"/api/runtime/pools/{template}", json={"minIdle": 1, "maxIdle": 1, "maxTotal": 2})
    await wait_for_idle(api, template, 1)
    update = {"image": toolbox_image, "command": ["sleep", "infinity"], "env": {"VERSION": "2"}}
    assert (await api.put(f"/api/runtime/templates/{template}", json=update)).status_code == 200

    async def refreshed() -> bool:
        record = await claim(api, template)
        await api.post("/api/runtime/remove", json={"containerId": record["id"], "force": True})
        return record["source"] == "pool" and record["templateVersion"] == 2

    await wait_for(refreshed, "a member of the new template version")


async def test_deleting_a_pool_removes_its_members(api, docker, template):
    await api.put(f"/api/runtime/pools/{template}", json={"minIdle": 2, "maxIdle": 2, "maxTotal": 2})
    await wait_for_idle(api, template, 2)
    assert (await api.delete(f"/api/runtime/pools/{template}")).status_code == 204
    assert await members(docker, template) == {}
    assert (await api.get(f"/api/runtime/pools/{template}")).status_code == 404
    assert (await api.delete(f"/api/runtime/pools/{template}")).status_code == 404


async def test_template_with_a_pool_is_in_use(api, docker, template):
    await api.put(f"/api/runtime/pools/{template}", json={"minIdle": 1, "maxIdle": 1, "maxTotal": 1})
    await wait_for_idle(api, template, 1)
    refused = await api.delete(f"/api/runtime/templates/{template}")
    assert refused.status_code == 409
    assert "pool" in refused.json()["usedBy"][0]

    forced = await api.delete(f"/api/runtime/templates/{template}", params={"force": "true"})
    assert forced.status_code == 204
    assert (await api.get(f"/api/runtime/pools/{template}")).status_code == 404
    assert await members(docker, template) == {}


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"minIdle": 5, "maxIdle": 2}, 422, "minIdle"),
        ({"maxIdle": 9, "maxTotal": 3}, 422, "maxIdle"),
        ({"minIdle": -1}, 400, "minIdle"),
        ({"maxTotal": 0}, 400, "maxTotal"),
        ({"idleTtl": 0}, 400, "idleTtl"),
        ({"size": 3}, 400, "size"),
    ],
)
async def test_bad_pool_settings_name_the_field(api, template, body, status, field):
    response = await api.put(f"/api/runtime/pools/{template}", json=body)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    assert (await api.get(f"/api/runtime/pools/{template}")).status_code == 404


async def test_pool_for_unknown_template(api):
    assert (await api.put("/api/runtime/pools/no-such-template", json={})).status_code == 404
    assert (await api.get("/api/runtime/pools/no-such-template")).status_code == 404


async def test_pools_are_listed(api, template):
    await api.put(f"/api/runtime/pools/{template}", json={"minIdle": 0, "maxIdle": 0, "maxTotal": 1})
    listed = (await api.get("/api/runtime/pools")).json()
    assert template in [item["template"] for item in listed]
