"""Pause and resume, and the timers the lifecycle loop acts on (ttl, idleTimeout, autoRemove), on real servers."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import aiodocker
import httpx
import pytest
import websockets

from api_support import RUN_LABEL, postgres_server, remove_server_containers, server_fixture, start_body
from corebase.containers.lifecycle import LifecycleService
from corebase.containers.tables import Container
from corebase.settings import load_settings
from support.server import RunningServer, run_server

pytestmark = pytest.mark.engine

# A lifecycle pass every half second, and activity written at most every half second.
SERVER_ENV = {
    "COREBASE_LIFECYCLE_INTERVAL": "0.5",
    "COREBASE_LIFECYCLE_ACTIVITY_INTERVAL": "0.5",
    "COREBASE_LIFECYCLE_MAX_TTL": "3600",
    "COREBASE_LIFECYCLE_MAX_IDLE_TIMEOUT": "3600",
}
# Seconds a wait may take before the test fails instead of hanging; generous for a loaded machine.
WAIT = 60.0
SLEEPER = ["sleep", "600"]


@pytest.fixture(scope="module")
async def sqlite_server(tmp_path_factory, docker_available) -> AsyncIterator[RunningServer]:
    for running in server_fixture(tmp_path_factory, SERVER_ENV):
        try:
            yield running
        finally:
            await remove_server_containers(running.data_dir)


@pytest.fixture(scope="module")
async def pg_server(tmp_path_factory, docker_available, postgres_url) -> AsyncIterator[RunningServer]:
    async for server in postgres_server(tmp_path_factory, postgres_url, SERVER_ENV):
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def server(request) -> RunningServer:
    return request.getfixturevalue("sqlite_server" if request.param == "sqlite" else "pg_server")


@pytest.fixture
async def api(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with server.async_client() as client:
        yield client


async def start(client: httpx.AsyncClient, image: str, **fields) -> dict:
    response = await client.post("/api/runtime/start", json=start_body(image, **fields))
    assert response.status_code == 201, response.text
    return response.json()


async def wait_for_status(client: httpx.AsyncClient, container_id: str, status: str) -> dict:
    deadline = time.monotonic() + WAIT
    while True:
        record = (await client.get(f"/api/runtime/containers/{container_id}")).json()
        if record["status"] == status:
            return record
        assert time.monotonic() < deadline, f"container {container_id} is {record['status']}, not {status}, after {WAIT} s"
        await asyncio.sleep(0.25)


async def audit_records(client: httpx.AsyncClient, action: str, container_id: str) -> list[dict]:
    """Return the audit records of `action` on the container, waiting for the first; the loop writes it after acting."""
    deadline = time.monotonic() + WAIT
    while True:
        items = (await client.get("/api/audit", params={"action": action, "target": container_id})).json()["items"]
        if items or time.monotonic() > deadline:
            return items
        await asyncio.sleep(0.25)


async def engine_has(docker: aiodocker.Docker, engine_id: str) -> bool:
    try:
        await docker.containers.get(engine_id)
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return False
        raise
    return True


# --- pause and resume ------------------------------------------------------------------------


async def test_pause_and_resume(api: httpx.AsyncClient, test_image: str):
    record = await start(api, test_image, command=SLEEPER)
    container_id = record["id"]
    try:
        paused = await api.post("/api/runtime/pause", json={"containerId": container_id})
        assert paused.status_code == 200, paused.text
        assert paused.json()["status"] == "paused"
        listed = (await api.get("/api/runtime/containers", params={"status": "paused"})).json()
        assert container_id in [item["id"] for item in listed["items"]]
        assert (await api.post("/api/runtime/pause", json={"containerId": container_id})).json()["status"] == "paused"

        refused_exec = await api.post("/api/runtime/exec", json={"containerId": container_id, "command": ["true"]})
        assert refused_exec.status_code == 409
        assert refused_exec.json()["containerStatus"] == "paused"
        assert "POST /api/runtime/resume" in refused_exec.json()["detail"]
        refused_stats = await api.get("/api/runtime/stats", params={"containerId": container_id})
        assert refused_stats.status_code == 409
        assert "paused" in refused_stats.json()["detail"]

        resumed = await api.post("/api/runtime/resume", json={"containerId": container_id})
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["status"] == "running"
        assert (await api.post("/api/runtime/resume", json={"containerId": container_id})).json()["status"] == "running"
        executed = await api.post("/api/runtime/exec", json={"containerId": container_id, "command": ["true"]})
        assert executed.json()["exitCode"] == 0

        assert (await api.post("/api/runtime/stop", json={"containerId": container_id, "timeout": 1})).status_code == 200
        for action in ("pause", "resume"):
            refused = await api.post(f"/api/runtime/{action}", json={"containerId": container_id})
            assert refused.status_code == 409, action
            assert refused.json()["containerStatus"] == "exited"
    finally:
        await api.post("/api/runtime/remove", json={"containerId": container_id, "force": True})


async def test_pause_missing_container(api: httpx.AsyncClient):
    for action in ("pause", "resume"):
        response = await api.post(f"/api/runtime/{action}", json={"containerId": "ctr_0000000000000000"})
        assert response.status_code == 404


# --- timers ----------------------------------------------------------------------------------


async def test_ttl_removes_container(server: RunningServer, api: httpx.AsyncClient, test_image: str, docker: aiodocker.Docker):
    events_url = server.base_url.replace("http://", "ws://") + "/api/events?types=container.expired"
    headers = {"Authorization": f"Bearer {server.admin_key}"}
    async with websockets.connect(events_url, additional_headers=headers) as events:
        assert json.loads(await asyncio.wait_for(events.recv(), WAIT))["type"] == "subscribed"
        record = await start(api, test_image, command=SLEEPER, ttl="2s")
        assert record["ttl"] == 2.0
        started = datetime.fromisoformat(record["startedAt"])
        assert datetime.fromisoformat(record["expiresAt"]) - started == timedelta(seconds=2)

        removed = await wait_for_status(api, record["id"], "removed")
        event = json.loads(await asyncio.wait_for(events.recv(), WAIT))

    assert datetime.fromisoformat(removed["removedAt"]) >= datetime.fromisoformat(record["expiresAt"])
    assert not await engine_has(docker, record["dockerId"])
    assert (event["type"], event["containerId"]) == ("container.expired", record["id"])
    [audited] = await audit_records(api, "runtime.lifecycle.expire", record["id"])
    assert audited["actor"] == "system"
    assert audited["outcome"] == "success"
    assert "ttl" in audited["reason"]


async def test_idle_timeout_stops_container(api: httpx.AsyncClient, test_image: str):
    record = await start(api, test_image, command=SLEEPER, idleTimeout=2)
    try:
        assert record["idleTimeout"] == 2.0
        assert record["lastActivityAt"] == record["startedAt"]
        stopped = await wait_for_status(api, record["id"], "exited")
        assert stopped["removedAt"] is None
        [audited] = await audit_records(api, "runtime.lifecycle.idle_stop", record["id"])
        assert audited["actor"] == "system"
        assert "idle timeout" in audited["reason"]
    finally:
        await api.post("/api/runtime/remove", json={"containerId": record["id"], "force": True})


async def test_activity_keeps_container_running(api: httpx.AsyncClient, test_image: str):
    record = await start(api, test_image, command=SLEEPER, idleTimeout=3)
    try:
        for _ in range(8):
            executed = await api.post("/api/runtime/exec", json={"containerId": record["id"], "command": ["true"]})
            assert executed.status_code == 200, f"the container stopped while in use: {executed.text}"
            await asyncio.sleep(0.75)
        current = (await api.get(f"/api/runtime/containers/{record['id']}")).json()
        assert current["status"] == "running"
        assert current["lastActivityAt"] > record["lastActivityAt"]

        await wait_for_status(api, record["id"], "exited")
    finally:
        await api.post("/api/runtime/remove", json={"containerId": record["id"], "force": True})


async def test_auto_remove_after_exit(api: httpx.AsyncClient, test_image: str, docker: aiodocker.Docker):
    record = await start(api, test_image, command=["sh", "-c", "sleep 1; exit 4"], autoRemove=True)
    assert record["autoRemove"] is True
    removed = await wait_for_status(api, record["id"], "removed")
    assert removed["exitCode"] == 4
    assert not await engine_has(docker, record["dockerId"])
    [audited] = await audit_records(api, "runtime.lifecycle.auto_remove", record["id"])
    assert audited["actor"] == "system"


async def test_template_timers_and_overrides(api: httpx.AsyncClient, test_image: str):
    name = "timers-" + secrets.token_hex(4)
    created = await api.post(
        "/api/runtime/templates",
        json={"name": name, "image": test_image, "command": SLEEPER, "ttl": "1h", "idleTimeout": "10m", "autoRemove": True},
    )
    assert created.status_code == 201, created.text
    assert (created.json()["ttl"], created.json()["idleTimeout"], created.json()["autoRemove"]) == (3600.0, 600.0, True)
    try:
        from_template = await api.post("/api/runtime/start", json={"template": name, "labels": {RUN_LABEL: "timers"}})
        assert from_template.status_code == 201, from_template.text
        record = from_template.json()
        assert (record["ttl"], record["idleTimeout"], record["autoRemove"]) == (3600.0, 600.0, True)

        overridden = await api.post(
            "/api/runtime/start",
            json={"template": name, "labels": {RUN_LABEL: "timers"}, "ttl": 120, "idleTimeout": "90s", "autoRemove": False},
        )
        assert overridden.status_code == 201, overridden.text
        assert (overridden.json()["ttl"], overridden.json()["idleTimeout"], overridden.json()["autoRemove"]) == (120.0, 90.0, False)
        for started in (record, overridden.json()):
            await api.post("/api/runtime/remove", json={"containerId": started["id"], "force": True})
    finally:
        await api.delete(f"/api/runtime/templates/{name}", params={"force": "true"})


async def test_pool_claim_gets_timers(api: httpx.AsyncClient, test_image: str):
    name = "pooled-timers-" + secrets.token_hex(4)
    created = await api.post("/api/runtime/templates", json={"name": name, "image": test_image, "command": SLEEPER, "ttl": "1h"})
    assert created.status_code == 201, created.text
    try:
        pool = await api.put(f"/api/runtime/pools/{name}", json={"minIdle": 1, "maxIdle": 1, "maxTotal": 2})
        assert pool.status_code == 200, pool.text
        deadline = time.monotonic() + WAIT
        while (await api.get(f"/api/runtime/pools/{name}")).json()["idle"] < 1:
            assert time.monotonic() < deadline, f"pool {name} has no idle member after {WAIT} s"
            await asyncio.sleep(0.25)

        claimed = await api.post("/api/runtime/start", json={"template": name, "idleTimeout": 600, "labels": {RUN_LABEL: "pool"}})
        assert claimed.status_code == 201, claimed.text
        record = claimed.json()
        assert record["source"] == "pool"
        assert (record["ttl"], record["idleTimeout"], record["autoRemove"]) == (3600.0, 600.0, False)
        stored = (await api.get(f"/api/runtime/containers/{record['id']}")).json()
        expires_at = datetime.fromisoformat(stored["expiresAt"])
        assert expires_at - datetime.fromisoformat(stored["lastActivityAt"]) == timedelta(hours=1)
        await api.post("/api/runtime/remove", json={"containerId": record["id"], "force": True})
    finally:
        await api.delete(f"/api/runtime/templates/{name}", params={"force": "true"})


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"ttl": "2h"}, "ttl"),
        ({"ttl": "soon"}, "ttl"),
        ({"ttl": 0}, "ttl"),
        ({"idleTimeout": 7200}, "idleTimeout"),
        ({"idleTimeout": "-5m"}, "idleTimeout"),
    ],
)
async def test_bad_timer_leaves_nothing(api: httpx.AsyncClient, test_image: str, docker: aiodocker.Docker, fields: dict, field: str):
    name = "bad-timer-" + secrets.token_hex(4)
    before = (await api.get("/api/runtime/containers")).json()["total"]
    response = await api.post("/api/runtime/start", json=start_body(test_image, command=SLEEPER, name=name, **fields))
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["field"] == field
    assert field in problem["detail"]
    assert (await api.get("/api/runtime/containers")).json()["total"] == before
    assert await docker.containers.list(all=True, filters={"name": [name]}) == []


async def test_template_timer_above_maximum(api: httpx.AsyncClient, test_image: str):
    response = await api.post("/api/runtime/templates", json={"name": "too-long-" + secrets.token_hex(4), "image": test_image, "ttl": "2d"})
    assert response.status_code == 422
    assert response.json()["field"] == "ttl"
    assert "lifecycle.max_ttl" in response.json()["detail"]


# --- restarts and storage --------------------------------------------------------------------


async def test_ttl_survives_restart(tmp_path_factory, test_image: str, docker: aiodocker.Docker):
    data_dir = tmp_path_factory.mktemp("lifecycle-restart")
    admin_key = "cbk_test_" + secrets.token_urlsafe(24)
    try:
        with run_server(data_dir, env=SERVER_ENV, admin_key=admin_key) as first:
            async with first.async_client() as client:
                record = await start(client, test_image, command=SLEEPER, ttl=15)
        expires_at = datetime.fromisoformat(record["expiresAt"])

        with run_server(data_dir, env=SERVER_ENV, admin_key=admin_key) as second:
            async with second.async_client() as client:
                current = (await client.get(f"/api/runtime/containers/{record['id']}")).json()
                if datetime.now(timezone.utc) < expires_at:
                    assert current["status"] == "running"
                removed = await wait_for_status(client, record["id"], "removed")
                [audited] = await audit_records(client, "runtime.lifecycle.expire", record["id"])

        removed_at = datetime.fromisoformat(removed["removedAt"])
        assert removed_at >= expires_at
        assert removed_at - expires_at < timedelta(seconds=WAIT)
        assert datetime.fromisoformat(audited["time"]) >= expires_at
        assert not await engine_has(docker, record["dockerId"])
    finally:
        await remove_server_containers(data_dir)


def timer_row(status: str, **fields) -> Container:
    now = datetime.now(timezone.utc)
    return Container(
        id="ctr_" + secrets.token_hex(8),
        name="timer-" + secrets.token_hex(4),
        image="corebase-test/busybox:1",
        owner="alice",
        status=status,
        created_at=now,
        updated_at=now,
        started_at=now - timedelta(minutes=10),
        **fields,
    )


async def test_due_timers_found_on_each_database(database):
    now = datetime.now(timezone.utc)
    rows = {
        "expired": timer_row("running", ttl=60.0, expires_at=now - timedelta(seconds=1)),
        "expired_stopped": timer_row("exited", ttl=60.0, expires_at=now - timedelta(minutes=5)),
        "not_yet": timer_row("running", ttl=3600.0, expires_at=now + timedelta(minutes=50)),
        "creating": timer_row("creating", ttl=1.0, expires_at=now - timedelta(seconds=1)),
        "removed": timer_row("removed", ttl=1.0, expires_at=now - timedelta(seconds=1)),
        "idle": timer_row("running", idle_timeout=60.0, last_activity_at=now - timedelta(minutes=2)),
        "idle_paused": timer_row("paused", idle_timeout=60.0, last_activity_at=now - timedelta(minutes=2)),
        "busy": timer_row("running", idle_timeout=60.0, last_activity_at=now - timedelta(seconds=10)),
        "idle_exited": timer_row("exited", idle_timeout=60.0, last_activity_at=now - timedelta(minutes=2)),
        "idle_pool": timer_row("running", idle_timeout=60.0, last_activity_at=now - timedelta(minutes=2), pool="p", pool_state="idle"),
        "never_used": timer_row("running", idle_timeout=60.0),
    }
    for row in rows.values():
        await row.save()
    names = {row.id: name for name, row in rows.items()}

    service = LifecycleService(load_settings(environ={}), containers=None, bus=None, audit=None)
    expired = sorted(names[row.id] for row in await service._expired())
    idle = sorted(names[row.id] for row in await service._idle())

    assert expired == ["expired", "expired_stopped"]
    assert idle == ["idle", "idle_paused", "never_used"]
