"""Ownership across users: two developers and an admin on a real server and engine.

For a developer, every id that belongs to another user must get the same 404 as an id that does
not exist, on every route that takes one, and must leave the other user's resource unchanged.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import websockets
from litestar.routes import HTTPRoute

from api_support import RUN_ID, RUN_LABEL, remove_server_containers, server_fixture, start_body
from corebase.app import create_app
from corebase.settings import load_settings
from support.server import RunningServer

pytestmark = pytest.mark.engine

# Seconds a bounded wait may take; the server samples containers every second.
WAIT_LIMIT = 60.0
MISSING = "missing0123456789"

# Every route with an id in its path that a developer can reach; the ownership matrix sends a
# request to each. Admin-only routes are covered by the role matrix, because no developer reaches them.
PATH_ID_ROUTES = {
    ("GET", "/api/runtime/containers/{container_id:str}"),
    ("GET", "/api/runtime/containers/{container_id:str}/files"),
    ("PUT", "/api/runtime/containers/{container_id:str}/files"),
    ("GET", "/api/runtime/templates/{name:str}"),
    ("PUT", "/api/runtime/templates/{name:str}"),
    ("DELETE", "/api/runtime/templates/{name:str}"),
    ("GET", "/api/runtime/pools/{template:str}"),
    ("PUT", "/api/runtime/pools/{template:str}"),
    ("DELETE", "/api/runtime/pools/{template:str}"),
    ("GET", "/api/alerts/rules/{rule_id:str}"),
    ("PUT", "/api/alerts/rules/{rule_id:str}"),
    ("DELETE", "/api/alerts/rules/{rule_id:str}"),
    ("GET", "/api/alerts/{alert_id:str}"),
    ("GET", "/api/alerts/{alert_id:str}/deliveries"),
    ("GET", "/api/keys/{key_id:str}"),
    ("DELETE", "/api/keys/{key_id:str}"),
    ("POST", "/api/keys/{key_id:str}/revoke"),
}
ADMIN_ONLY_PATH_ID_ROUTES = {
    ("GET", "/api/users/{name:str}"),
    ("PATCH", "/api/users/{name:str}"),
    ("GET", "/api/quotas/{user:str}"),
    ("PUT", "/api/quotas/{user:str}"),
    ("DELETE", "/api/quotas/{user:str}"),
}


@dataclass
class Owned:
    """Alice's resources, which Bob must not reach."""

    container: str
    template: str
    rule: str
    alert: str
    key: str
    key_secret: str


@pytest.fixture(scope="module")
async def server(tmp_path_factory, docker_available) -> AsyncIterator[RunningServer]:
    for running in server_fixture(tmp_path_factory, {"COREBASE_MONITORING_INTERVAL": "1"}):
        try:
            yield running
        finally:
            await remove_server_containers(running.data_dir)


@pytest.fixture(scope="module")
def developer_keys(server: RunningServer) -> dict[str, str]:
    with server.client() as admin:
        keys = {}
        for user in ("alice", "bob"):
            assert admin.post("/api/users", json={"name": user, "role": "developer"}).status_code == 201
            created = admin.post("/api/keys", json={"name": user, "user": user})
            assert created.status_code == 201, created.text
            keys[user] = created.json()["secret"]
        return keys


@pytest.fixture(scope="module")
async def owned(server: RunningServer, developer_keys: dict[str, str], test_image: str) -> Owned:
    """Alice's container, custom template with a pool, alert rule, fired alert and API key."""
    async with server.async_client(developer_keys["alice"]) as alice:
        started = await alice.post(
            "/api/runtime/start",
            json=start_body(test_image, command=["sleep", "600"], projectId="alice-project", memory="64m", cpus=0.5),
        )
        assert started.status_code == 201, started.text
        container = started.json()["id"]

        template = "alice-" + secrets.token_hex(4)
        created = await alice.post("/api/runtime/templates", json={"name": template, "image": test_image, "command": ["sleep", "600"]})
        assert created.status_code == 201, created.text
        # No idle members, so the pool starts no containers.
        pool = await alice.put(f"/api/runtime/pools/{template}", json={"minIdle": 0, "maxIdle": 0, "maxTotal": 1})
        assert pool.status_code == 200, pool.text

        rule = await alice.post("/api/alerts/rules", json=rule_body(container))
        assert rule.status_code == 201, rule.text

        alert = await wait_for_alert(alice, container)

        key = await alice.post("/api/keys", json={"name": "alice second"})
        assert key.status_code == 201, key.text
        return Owned(container, template, rule.json()["id"], alert, key.json()["id"], key.json()["secret"])


def rule_body(container: str) -> dict:
    """A rule that fires on the first sample of a running container."""
    return {
        "name": "always",
        "metric": "pids",
        "comparator": ">=",
        "threshold": 0,
        "duration": 0,
        "scope": "container",
        "scopeValue": container,
    }


async def wait_for_alert(client: httpx.AsyncClient, container: str) -> str:
    deadline = time.monotonic() + WAIT_LIMIT
    while time.monotonic() < deadline:
        page = (await client.get("/api/alerts", params={"containerId": container})).json()
        if page["items"]:
            return page["items"][0]["id"]
        await asyncio.sleep(0.5)
    raise AssertionError(f"no alert fired for container {container} within {WAIT_LIMIT} s")


def requests_for(owned: Owned, test_image: str) -> list[tuple[tuple[str, str], dict]]:
    """Every request that names one of Alice's ids, as (route, request arguments for httpx)."""
    container, template, rule, alert, key = owned.container, owned.template, owned.rule, owned.alert, owned.key
    template_body = {"image": test_image, "command": ["sleep", "1"]}
    from_template = {"template": template, "labels": {RUN_LABEL: RUN_ID}}
    requests = [
        ("/api/runtime/containers/{container_id:str}", "GET", f"/api/runtime/containers/{container}", {}),
        ("/api/runtime/stop", "POST", "/api/runtime/stop", {"json": {"containerId": container, "timeout": 1}}),
        ("/api/runtime/restart", "POST", "/api/runtime/restart", {"json": {"containerId": container, "timeout": 1}}),
        ("/api/runtime/remove", "POST", "/api/runtime/remove", {"json": {"containerId": container, "force": True}}),
        ("/api/runtime/exec", "POST", "/api/runtime/exec", {"json": {"containerId": container, "command": ["true"]}}),
        ("/api/runtime/pause", "POST", "/api/runtime/pause", {"json": {"containerId": container}}),
        ("/api/runtime/resume", "POST", "/api/runtime/resume", {"json": {"containerId": container}}),
        (
            "/api/runtime/containers/{container_id:str}/files",
            "GET",
            f"/api/runtime/containers/{container}/files",
            {"params": {"path": "/"}},
        ),
        (
            "/api/runtime/containers/{container_id:str}/files",
            "PUT",
            f"/api/runtime/containers/{container}/files",
            {"params": {"path": "/intruder.txt"}, "content": "x", "headers": {"Content-Type": "application/octet-stream"}},
        ),
        ("/api/runtime/logs", "GET", "/api/runtime/logs", {"params": {"containerId": container}}),
        ("/api/runtime/logs", "GET", "/api/runtime/logs", {"params": {"containerId": container, "follow": "true"}}),
        ("/api/runtime/stats", "GET", "/api/runtime/stats", {"params": {"containerId": container}}),
        ("/api/runtime/stats", "GET", "/api/runtime/stats", {"params": {"containerId": container, "step": "60"}}),
        ("/api/runtime/templates/{name:str}", "GET", f"/api/runtime/templates/{template}", {}),
        ("/api/runtime/templates/{name:str}", "GET", f"/api/runtime/templates/{template}", {"params": {"version": "1"}}),
        ("/api/runtime/templates/{name:str}", "PUT", f"/api/runtime/templates/{template}", {"json": template_body}),
        ("/api/runtime/templates/{name:str}", "DELETE", f"/api/runtime/templates/{template}", {"params": {"force": "true"}}),
        ("/api/runtime/start", "POST", "/api/runtime/start", {"json": from_template}),
        ("/api/runtime/pools/{template:str}", "GET", f"/api/runtime/pools/{template}", {}),
        ("/api/runtime/pools/{template:str}", "PUT", f"/api/runtime/pools/{template}", {"json": {"minIdle": 0, "maxIdle": 0, "maxTotal": 2}}),
        ("/api/runtime/pools/{template:str}", "DELETE", f"/api/runtime/pools/{template}", {}),
        ("/api/alerts/rules/{rule_id:str}", "GET", f"/api/alerts/rules/{rule}", {}),
        ("/api/alerts/rules/{rule_id:str}", "PUT", f"/api/alerts/rules/{rule}", {"json": rule_body(MISSING)}),
        ("/api/alerts/rules/{rule_id:str}", "DELETE", f"/api/alerts/rules/{rule}", {}),
        ("/api/alerts/{alert_id:str}", "GET", f"/api/alerts/{alert}", {}),
        ("/api/alerts/{alert_id:str}/deliveries", "GET", f"/api/alerts/{alert}/deliveries", {}),
        ("/api/keys/{key_id:str}", "GET", f"/api/keys/{key}", {}),
        ("/api/keys/{key_id:str}", "DELETE", f"/api/keys/{key}", {}),
        ("/api/keys/{key_id:str}/revoke", "POST", f"/api/keys/{key}/revoke", {}),
    ]
    return [((method, route), {"method": method, "url": url, **options}) for route, method, url, options in requests]


def with_missing_ids(value, owned: Owned):
    """The same request with every one of Alice's ids replaced by an id that does not exist."""
    text = json.dumps(value)
    for real in (owned.container, owned.template, owned.rule, owned.alert, owned.key):
        text = text.replace(real, MISSING)
    return json.loads(text)


def path_id_routes(tmp_path) -> set[tuple[str, str]]:
    settings = load_settings(environ={}, overrides={"server": {"data_dir": str(tmp_path)}})
    found = set()
    for route in create_app(settings).routes:
        if isinstance(route, HTTPRoute) and "{" in route.path and not route.path.startswith("/schema"):
            found.update((method, route.path) for method in route.methods if method not in ("OPTIONS", "HEAD"))
    return found


def test_every_id_route_is_in_matrix(tmp_path):
    missing = path_id_routes(tmp_path) - PATH_ID_ROUTES - ADMIN_ONLY_PATH_ID_ROUTES
    assert not missing, f"add these routes to the ownership matrix: {sorted(missing)}"


async def test_other_users_ids_are_not_found(server: RunningServer, developer_keys: dict[str, str], owned: Owned, test_image: str):
    requests = requests_for(owned, test_image)
    untested = PATH_ID_ROUTES - {route for route, _ in requests}
    assert not untested, f"the ownership matrix sends no request to {sorted(untested)}"

    async with server.async_client(developer_keys["bob"]) as bob:
        for (method, route), arguments in requests:
            response = await bob.request(**arguments)
            missing = await bob.request(**with_missing_ids(arguments, owned))
            assert response.status_code == 404, f"{method} {route}: {response.text}"
            assert missing.status_code == 404, f"{method} {route} with a missing id: {missing.text}"
            assert response.json()["title"] == missing.json()["title"], f"{method} {route}"
            assert set(response.json()) == set(missing.json()), f"{method} {route}"

    await check_alice_resources_intact(server, developer_keys, owned)


async def check_alice_resources_intact(server: RunningServer, developer_keys: dict[str, str], owned: Owned) -> None:
    async with server.async_client(developer_keys["alice"]) as alice:
        record = (await alice.get(f"/api/runtime/containers/{owned.container}")).json()
        assert record["status"] == "running"
        template = (await alice.get(f"/api/runtime/templates/{owned.template}")).json()
        assert template["versions"] == [1]
        pool = (await alice.get(f"/api/runtime/pools/{owned.template}")).json()
        assert pool["maxTotal"] == 1
        assert (await alice.get(f"/api/alerts/rules/{owned.rule}")).status_code == 200
        key = (await alice.get(f"/api/keys/{owned.key}")).json()
        assert key["revokedAt"] is None


async def test_rule_on_other_users_container_rejected(server: RunningServer, developer_keys: dict[str, str], owned: Owned):
    async with server.async_client(developer_keys["bob"]) as bob:
        other = await bob.post("/api/alerts/rules", json=rule_body(owned.container))
        missing = await bob.post("/api/alerts/rules", json=rule_body(MISSING))
        assert other.status_code == missing.status_code == 422
        assert other.json()["detail"].replace(owned.container, MISSING) == missing.json()["detail"]


async def test_lists_hide_other_users(server: RunningServer, developer_keys: dict[str, str], owned: Owned):
    async with server.async_client(developer_keys["bob"]) as bob:
        containers = (await bob.get("/api/runtime/containers", params={"projectId": "alice-project"})).json()
        assert containers["total"] == 0
        every_status = (await bob.get("/api/runtime/containers", params={"status": "running"})).json()
        assert owned.container not in [item["id"] for item in every_status["items"]]
        templates = [item["name"] for item in (await bob.get("/api/runtime/templates")).json()]
        assert owned.template not in templates
        assert "python" in templates
        assert (await bob.get("/api/runtime/pools")).json() == []
        assert (await bob.get("/api/alerts/rules")).json() == []
        assert (await bob.get("/api/alerts")).json()["total"] == 0
        assert (await bob.get("/api/alerts", params={"containerId": owned.container})).json()["total"] == 0
        assert owned.key not in [item["id"] for item in (await bob.get("/api/keys")).json()]
        totals = (await bob.get("/api/runtime/stats/totals", params={"groupBy": "owner"})).json()
        assert "alice" not in json.dumps(totals)


async def test_builtin_template_readable_by_all(server: RunningServer, developer_keys: dict[str, str]):
    async with server.async_client(developer_keys["bob"]) as bob:
        assert (await bob.get("/api/runtime/templates/python")).status_code == 200
        denied = await bob.put("/api/runtime/pools/python", json={"minIdle": 0, "maxIdle": 0, "maxTotal": 1})
        assert denied.status_code == 403
        assert denied.json()["requiredRole"] == "admin"


async def test_admin_reaches_every_id(server: RunningServer, owned: Owned):
    async with server.async_client() as admin:
        assert (await admin.get(f"/api/runtime/containers/{owned.container}")).status_code == 200
        assert (await admin.get("/api/runtime/logs", params={"containerId": owned.container})).status_code == 200
        assert (await admin.get(f"/api/runtime/templates/{owned.template}")).status_code == 200
        assert (await admin.get(f"/api/runtime/pools/{owned.template}")).status_code == 200
        assert (await admin.get(f"/api/alerts/rules/{owned.rule}")).status_code == 200
        assert (await admin.get(f"/api/alerts/{owned.alert}")).status_code == 200
        assert (await admin.get(f"/api/alerts/{owned.alert}/deliveries")).status_code == 200
        assert (await admin.get(f"/api/keys/{owned.key}")).status_code == 200
        listed = (await admin.get("/api/runtime/containers", params={"projectId": "alice-project"})).json()
        assert listed["total"] == 1
        exec_result = await admin.post("/api/runtime/exec", json={"containerId": owned.container, "command": ["true"]})
        assert exec_result.status_code == 200, exec_result.text


async def test_logs_socket_other_users_container(server: RunningServer, developer_keys: dict[str, str], owned: Owned):
    closes = []
    for container in (owned.container, MISSING):
        url = server.base_url.replace("http://", "ws://") + f"/api/runtime/logs/ws?containerId={container}"
        headers = {"Authorization": f"Bearer {developer_keys['bob']}"}
        async with websockets.connect(url, additional_headers=headers) as socket:
            message = json.loads(await asyncio.wait_for(socket.recv(), 10))
            assert message["type"] == "error"
            assert message["status"] == 404
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                await asyncio.wait_for(socket.recv(), 10)
            closes.append(socket.close_code)
    assert closes == [4404, 4404]


async def test_events_socket_other_users_container(server: RunningServer, developer_keys: dict[str, str], owned: Owned):
    url = server.base_url.replace("http://", "ws://") + f"/api/events?containerId={owned.container}&types=metric"
    alice = {"Authorization": f"Bearer {developer_keys['alice']}"}
    async with websockets.connect(url, additional_headers=alice) as socket:
        first = json.loads(await asyncio.wait_for(socket.recv(), 10))
        assert first["type"] == "subscribed", first
        # The server samples every second, so the owner sees a sample within a few seconds.
        sample = json.loads(await asyncio.wait_for(socket.recv(), 10))
        assert sample["containerId"] == owned.container

    # Bob naming Alice's container at connection time gets the same answer as a missing id.
    bob = {"Authorization": f"Bearer {developer_keys['bob']}"}
    answers = []
    for container in (owned.container, MISSING):
        url = server.base_url.replace("http://", "ws://") + f"/api/events?containerId={container}"
        async with websockets.connect(url, additional_headers=bob) as socket:
            message = json.loads(await asyncio.wait_for(socket.recv(), 10))
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                await asyncio.wait_for(socket.recv(), 10)
            answers.append((message["type"], message["status"], message["field"], socket.close_code))
    assert answers == [("error", 404, "containerId", 4404)] * 2


async def test_events_subscription_to_other_users_container(server: RunningServer, developer_keys: dict[str, str], owned: Owned):
    url = server.base_url.replace("http://", "ws://") + "/api/events?types=container"
    bob = {"Authorization": f"Bearer {developer_keys['bob']}"}
    async with websockets.connect(url, additional_headers=bob) as socket:
        assert json.loads(await asyncio.wait_for(socket.recv(), 10))["type"] == "subscribed"
        await socket.send(json.dumps({"action": "subscribe", "containerIds": [owned.container]}))
        refused = json.loads(await asyncio.wait_for(socket.recv(), 10))
        assert (refused["type"], refused["status"], refused["field"]) == ("error", 404, "containerIds")
        # The connection stays open with the earlier choice, as after any invalid choice.
        await socket.send(json.dumps({"action": "subscribe", "types": ["container.started"]}))
        accepted = json.loads(await asyncio.wait_for(socket.recv(), 10))
        assert accepted["type"] == "subscribed"
