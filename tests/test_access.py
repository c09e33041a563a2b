"""Roles and key scopes on every route, the users and keys API, and key expiry, revocation and disabling.

The role matrix walks the app's own route list, so a new route fails `test_every_route_has_a_role`
until ROUTE_ROLES records which role it needs.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import httpx
import pytest
import websockets
from litestar.routes import HTTPRoute, WebSocketRoute

from api_support import create_postgres_database, drop_postgres_database, postgres_server, server_fixture
from corebase.app import create_app
from corebase.settings import load_settings
from support.server import RunningServer, run_server

# The minimum role each route needs. Routes of other features are listed as soon as they are
# decided; an entry whose route is absent from the app is ignored.
ROUTE_ROLES: dict[tuple[str, str], str] = {
    ("GET", "/api/monitoring"): "viewer",
    ("GET", "/api/plugins"): "viewer",
    ("POST", "/api/runtime/start"): "developer",
    ("POST", "/api/runtime/stop"): "developer",
    ("POST", "/api/runtime/restart"): "developer",
    ("POST", "/api/runtime/remove"): "developer",
    ("POST", "/api/runtime/exec"): "developer",
    ("POST", "/api/runtime/exec/stream"): "developer",
    ("POST", "/api/runtime/pause"): "developer",
    ("POST", "/api/runtime/resume"): "developer",
    ("GET", "/api/runtime/containers/{container_id:str}/files"): "viewer",
    ("PUT", "/api/runtime/containers/{container_id:str}/files"): "developer",
    ("GET", "/api/runtime/containers"): "viewer",
    ("GET", "/api/runtime/containers/{container_id:str}"): "viewer",
    ("GET", "/api/runtime/logs"): "viewer",
    ("GET", "/api/runtime/stats"): "viewer",
    ("GET", "/api/runtime/stats/totals"): "viewer",
    ("GET", "/api/runtime/templates"): "viewer",
    ("POST", "/api/runtime/templates"): "developer",
    ("GET", "/api/runtime/templates/{name:str}"): "viewer",
    ("PUT", "/api/runtime/templates/{name:str}"): "developer",
    ("DELETE", "/api/runtime/templates/{name:str}"): "developer",
    ("GET", "/api/runtime/pools"): "viewer",
    ("GET", "/api/runtime/pools/{template:str}"): "viewer",
    ("PUT", "/api/runtime/pools/{template:str}"): "developer",
    ("DELETE", "/api/runtime/pools/{template:str}"): "developer",
    ("GET", "/api/alerts/rules"): "viewer",
    ("POST", "/api/alerts/rules"): "developer",
    ("GET", "/api/alerts/rules/{rule_id:str}"): "viewer",
    ("PUT", "/api/alerts/rules/{rule_id:str}"): "developer",
    ("DELETE", "/api/alerts/rules/{rule_id:str}"): "developer",
    ("GET", "/api/alerts"): "viewer",
    ("GET", "/api/alerts/{alert_id:str}"): "viewer",
    ("GET", "/api/alerts/{alert_id:str}/deliveries"): "viewer",
    ("GET", "/api/users"): "admin",
    ("POST", "/api/users"): "admin",
    ("GET", "/api/users/{name:str}"): "admin",
    ("PATCH", "/api/users/{name:str}"): "admin",
    # Every role manages its own keys; the service keeps new keys within the caller's scopes.
    ("GET", "/api/keys"): "viewer",
    ("POST", "/api/keys"): "viewer",
    ("GET", "/api/keys/{key_id:str}"): "viewer",
    ("DELETE", "/api/keys/{key_id:str}"): "viewer",
    ("POST", "/api/keys/{key_id:str}/revoke"): "viewer",
    ("GET", "/metrics"): "admin",
    ("GET", "/api/audit"): "admin",
    ("POST", "/api/policies/evaluate"): "developer",
    ("GET", "/api/quotas/me"): "viewer",
    ("GET", "/api/quotas/{user:str}"): "admin",
    ("PUT", "/api/quotas/{user:str}"): "admin",
    ("DELETE", "/api/quotas/{user:str}"): "admin",
    ("GET", "/api/admin/reconcile"): "admin",
    ("POST", "/api/admin/reconcile"): "admin",
    ("WS", "/api/events"): "viewer",
    ("WS", "/api/runtime/logs/ws"): "viewer",
    # An interactive exec changes the container, so it needs write like POST /exec.
    ("WS", "/api/runtime/exec/ws"): "developer",
}
ROLES = ("viewer", "developer", "admin")
RANK = {role: index for index, role in enumerate(ROLES)}
# Paths anyone may call, without a key.
PUBLIC = re.compile(r"^/health$|^/schema")
MISSING_ID = "missing-0123"


def app_routes(tmp_path) -> list[tuple[str, str]]:
    """Every (method, path template) of the app a server builds, with "WS" for WebSocket routes."""
    settings = load_settings(environ={}, overrides={"server": {"data_dir": str(tmp_path)}})
    app = create_app(settings)
    found = []
    for route in app.routes:
        if PUBLIC.match(route.path):
            continue
        if isinstance(route, WebSocketRoute):
            found.append(("WS", route.path))
        elif isinstance(route, HTTPRoute):
            found.extend((method, route.path) for method in route.methods if method not in ("OPTIONS", "HEAD"))
    return sorted(found)


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", MISSING_ID, path)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
async def server(request, tmp_path_factory) -> AsyncIterator[RunningServer]:
    """A server on SQLite, then one on PostgreSQL."""
    if request.param == "sqlite":
        for running in server_fixture(tmp_path_factory):
            yield running
        return
    async for running in postgres_server(tmp_path_factory, request.getfixturevalue("postgres_url")):
        yield running


@pytest.fixture(scope="module")
def keys(server: RunningServer) -> dict[str, str]:
    """One key per role, for the users carol (viewer), dave (developer) and the seeded admin."""
    with server.client() as admin:
        secrets = {"admin": server.admin_key}
        for user, role in (("carol", "viewer"), ("dave", "developer")):
            assert admin.post("/api/users", json={"name": user, "role": role}).status_code == 201
            created = admin.post("/api/keys", json={"name": f"{user} key", "user": user})
            assert created.status_code == 201, created.text
            secrets[role] = created.json()["secret"]
        return secrets


def test_every_route_has_a_role(tmp_path):
    undecided = [route for route in app_routes(tmp_path) if route not in ROUTE_ROLES]
    assert not undecided, f"add these routes to ROUTE_ROLES with the minimum role each needs: {undecided}"


@pytest.mark.parametrize("role", ROLES)
def test_role_matrix_http(server: RunningServer, keys: dict[str, str], role: str, tmp_path):
    routes = [route for route in app_routes(tmp_path) if route[0] != "WS"]
    assert routes
    with server.client(keys[role]) as client:
        for method, path in routes:
            needed = ROUTE_ROLES[(method, path)]
            body = {} if method in ("POST", "PUT", "PATCH") else None
            response = client.request(method, concrete(path), json=body)
            if RANK[role] >= RANK[needed]:
                assert response.status_code not in (401, 403), f"{role} {method} {path}: {response.text}"
            else:
                assert response.status_code == 403, f"{role} {method} {path}: {response.text}"
                problem = response.json()
                assert problem.get("requiredRole") == needed, f"{role} {method} {path}: {problem}"
                assert f"needs the {needed} role" in problem["detail"], f"{role} {method} {path}: {problem}"


def ws_url(server: RunningServer, path: str) -> str:
    return server.base_url.replace("http://", "ws://") + path


@pytest.mark.parametrize("role", ROLES)
async def test_role_matrix_websocket(server: RunningServer, keys: dict[str, str], role: str, tmp_path):
    routes = [path for method, path in app_routes(tmp_path) if method == "WS"]
    assert routes
    for path in routes:
        needed = ROUTE_ROLES[("WS", path)]
        headers = {"Authorization": f"Bearer {keys[role]}"}
        if RANK[role] < RANK[needed]:
            with pytest.raises(websockets.exceptions.InvalidStatus) as rejected:
                async with websockets.connect(ws_url(server, path), additional_headers=headers):
                    pass
            assert rejected.value.response.status_code == 403, f"{role} WS {path}"
            continue
        async with websockets.connect(ws_url(server, path), additional_headers=headers) as socket:
            first = json.loads(await asyncio.wait_for(socket.recv(), 10))
            # The events stream acknowledges; the logs and exec streams name the missing containerId.
            assert first["type"] in ("subscribed", "error"), first
            if first["type"] == "error":
                assert first["field"] == "containerId"


def test_users_api(server: RunningServer):
    with server.client() as admin:
        created = admin.post("/api/users", json={"name": "erin", "role": "viewer"})
        assert created.status_code == 201, created.text
        assert created.json()["role"] == "viewer"
        assert created.json()["disabledAt"] is None
        assert admin.post("/api/users", json={"name": "erin"}).status_code == 409
        assert admin.post("/api/users", json={"name": "bad name!"}).status_code == 422
        reserved = admin.post("/api/users", json={"name": "me"})
        assert reserved.status_code == 422
        assert reserved.json()["field"] == "name"
        assert admin.post("/api/users", json={"name": "x", "role": "root"}).status_code == 400

        names = [user["name"] for user in admin.get("/api/users").json()]
        assert "erin" in names
        assert "admin" in names
        assert admin.get("/api/users/erin").json()["name"] == "erin"
        assert admin.get("/api/users/nobody").status_code == 404

        changed = admin.patch("/api/users/erin", json={"role": "developer"})
        assert changed.status_code == 200, changed.text
        assert changed.json()["role"] == "developer"

        last_admin = admin.patch("/api/users/admin", json={"disabled": True})
        assert last_admin.status_code == 409
        assert "last active admin" in last_admin.json()["detail"]


def test_role_change_reaches_keys_at_once(server: RunningServer):
    with server.client() as admin:
        assert admin.post("/api/users", json={"name": "fred", "role": "viewer"}).status_code == 201
        secret = admin.post("/api/keys", json={"name": "fred", "user": "fred"}).json()["secret"]
        with server.client(secret) as fred:
            assert fred.post("/api/runtime/remove", json={"containerId": MISSING_ID}).status_code == 403
            assert admin.patch("/api/users/fred", json={"role": "developer"}).status_code == 200
            assert fred.post("/api/runtime/remove", json={"containerId": MISSING_ID}).status_code == 404
            assert admin.get("/api/keys", params={"user": "fred"}).json()[0]["role"] == "developer"


def test_keys_api_own_keys(server: RunningServer, keys: dict[str, str]):
    with server.client(keys["developer"]) as dave:
        created = dave.post("/api/keys", json={"name": "ci", "scopes": ["read"]})
        assert created.status_code == 201, created.text
        record = created.json()
        assert record["secret"].startswith(record["prefix"])
        assert record["scopes"] == ["read"]
        assert record["user"] == "dave"
        assert record["lastUsedAt"] is None

        listed = dave.get("/api/keys").json()
        assert {key["user"] for key in listed} == {"dave"}
        assert record["id"] in [key["id"] for key in listed]
        assert all("secret" not in key for key in listed)
        assert "secret" not in dave.get(f"/api/keys/{record['id']}").json()

        with server.client(record["secret"]) as read_only:
            assert read_only.get("/api/runtime/containers").status_code == 200
            assert dave.get(f"/api/keys/{record['id']}").json()["lastUsedAt"] is not None

        assert dave.get("/api/keys", params={"user": "admin"}).status_code == 403
        assert dave.post("/api/keys", json={"name": "x", "user": "carol"}).status_code == 403
        assert dave.post("/api/keys", json={"name": "x", "scopes": ["admin"]}).status_code == 422
        assert dave.post("/api/keys", json={"name": "x", "scopes": ["delete"]}).status_code == 422

    with server.client() as admin:
        everyone = {key["user"] for key in admin.get("/api/keys").json()}
        assert {"admin", "dave", "carol"} <= everyone
        assert {key["user"] for key in admin.get("/api/keys", params={"user": "carol"}).json()} == {"carol"}


def test_key_scopes_narrow_the_role(server: RunningServer, keys: dict[str, str]):
    with server.client(keys["developer"]) as dave:
        read_only = dave.post("/api/keys", json={"name": "read", "scopes": ["read"]}).json()["secret"]
    with server.client(read_only) as client:
        assert client.get("/api/runtime/containers").status_code == 200
        denied = client.post("/api/runtime/stop", json={"containerId": MISSING_ID})
        assert denied.status_code == 403
        assert denied.json()["requiredScopes"] == ["write"]
        assert denied.json()["keyScopes"] == ["read"]
        # A read-only key cannot mint a stronger key.
        assert client.post("/api/keys", json={"name": "wider"}).status_code == 422
        assert client.post("/api/keys", json={"name": "same", "scopes": ["read"]}).status_code == 201

    with server.client() as admin:
        limited = admin.post("/api/keys", json={"name": "audit reader", "scopes": ["read", "admin"]}).json()
    with server.client(limited["secret"]) as client:
        assert client.get("/api/users").status_code == 200
        assert client.post("/api/users", json={"name": "gina"}).status_code == 403
        assert client.get("/metrics").status_code == 200


async def test_write_only_key_cannot_open_websocket(server: RunningServer, keys: dict[str, str]):
    with server.client(keys["developer"]) as dave:
        write_only = dave.post("/api/keys", json={"name": "writer", "scopes": ["write"]}).json()["secret"]
    headers = {"Authorization": f"Bearer {write_only}"}
    with pytest.raises(websockets.exceptions.InvalidStatus) as rejected:
        async with websockets.connect(ws_url(server, "/api/events"), additional_headers=headers):
            pass
    assert rejected.value.response.status_code == 403


def test_expired_key_is_rejected(server: RunningServer, keys: dict[str, str]):
    with server.client(keys["developer"]) as dave:
        past = (datetime.now(timezone.utc) - timedelta(seconds=1)).isoformat()
        assert dave.post("/api/keys", json={"name": "old", "expiresAt": past}).status_code == 422
        soon = dave.post("/api/keys", json={"name": "short", "expiresIn": 1.5})
        assert soon.status_code == 201, soon.text
        secret = soon.json()["secret"]
        assert soon.json()["expiresAt"] is not None

    with server.client(secret) as client:
        assert client.get("/api/runtime/containers").status_code == 200
        expiry = datetime.fromisoformat(soon.json()["expiresAt"])
        time.sleep(max(0.0, (expiry - datetime.now(timezone.utc)).total_seconds()) + 0.1)
        expired = client.get("/api/runtime/containers")
        assert expired.status_code == 401
        assert "expired" in expired.json()["detail"]


def test_short_lived_key_cannot_outlive_itself(server: RunningServer, keys: dict[str, str]):
    with server.client(keys["developer"]) as dave:
        short = dave.post("/api/keys", json={"name": "short", "expiresIn": 600}).json()["secret"]
    with server.client(short) as client:
        forever = client.post("/api/keys", json={"name": "forever"})
        assert forever.status_code == 422
        assert forever.json()["field"] == "expiresAt"
        assert client.post("/api/keys", json={"name": "shorter", "expiresIn": 60}).status_code == 201


@pytest.mark.parametrize("how", ["DELETE", "POST"])
def test_revoked_key_is_rejected_at_once(server: RunningServer, keys: dict[str, str], how: str):
    with server.client(keys["developer"]) as dave:
        created = dave.post("/api/keys", json={"name": "to revoke"}).json()
        with server.client(created["secret"]) as client:
            # A successful request puts the key in the server's cache first.
            assert client.get("/api/runtime/containers").status_code == 200
            if how == "DELETE":
                revoked = dave.delete(f"/api/keys/{created['id']}")
            else:
                revoked = dave.post(f"/api/keys/{created['id']}/revoke")
            assert revoked.status_code == 200, revoked.text
            assert revoked.json()["revokedAt"] is not None
            rejected = client.get("/api/runtime/containers")
            assert rejected.status_code == 401
            assert "revoked" in rejected.json()["detail"]


def test_read_only_key_cannot_revoke_stronger_key(server: RunningServer, keys: dict[str, str]):
    with server.client(keys["developer"]) as dave:
        strong = dave.post("/api/keys", json={"name": "strong"}).json()
        weak = dave.post("/api/keys", json={"name": "weak", "scopes": ["read"]}).json()
    with server.client(weak["secret"]) as client:
        assert client.delete(f"/api/keys/{strong['id']}").status_code == 403
        assert client.delete(f"/api/keys/{weak['id']}").status_code == 200


def test_other_users_key_is_not_found(server: RunningServer, keys: dict[str, str]):
    with server.client(keys["viewer"]) as carol:
        own = carol.post("/api/keys", json={"name": "carol's"}).json()
    with server.client(keys["developer"]) as dave:
        for method, path in (
            ("GET", f"/api/keys/{own['id']}"),
            ("DELETE", f"/api/keys/{own['id']}"),
            ("POST", f"/api/keys/{own['id']}/revoke"),
        ):
            response = dave.request(method, path)
            missing = dave.request(method, path.replace(own["id"], "key_0000000000000000"))
            assert response.status_code == 404, f"{method} {path}"
            assert response.json()["title"] == missing.json()["title"]
    with server.client(own["secret"]) as client:
        assert client.get("/api/runtime/containers").status_code == 200


def test_disabled_user_keys_stop_at_once(server: RunningServer):
    with server.client() as admin:
        assert admin.post("/api/users", json={"name": "hank", "role": "developer"}).status_code == 201
        secret = admin.post("/api/keys", json={"name": "hank", "user": "hank"}).json()["secret"]
        with server.client(secret) as hank:
            assert hank.get("/api/runtime/containers").status_code == 200
            disabled = admin.patch("/api/users/hank", json={"disabled": True})
            assert disabled.json()["disabledAt"] is not None
            rejected = hank.get("/api/runtime/containers")
            assert rejected.status_code == 401
            assert "disabled" in rejected.json()["detail"]
            assert admin.post("/api/keys", json={"name": "again", "user": "hank"}).status_code == 409

            assert admin.patch("/api/users/hank", json={"disabled": False}).json()["disabledAt"] is None
            assert hank.get("/api/runtime/containers").status_code == 200


def test_missing_key_is_unauthorized(server: RunningServer):
    response = httpx.get(server.base_url + "/api/keys")
    assert response.status_code == 401


async def test_revocation_reaches_other_processes(tmp_path_factory, postgres_url):
    """Two more processes on the same database: one that never caches keys, one that caches them for an hour."""
    database_url = await create_postgres_database(postgres_url)
    try:
        shared = {"COREBASE_DATABASE_URL": database_url}
        with (
            run_server(tmp_path_factory.mktemp("first"), env=shared) as first,
            run_server(tmp_path_factory.mktemp("uncached"), env={**shared, "COREBASE_AUTH_KEY_CACHE_SECONDS": "0"}) as uncached,
            run_server(tmp_path_factory.mktemp("cached"), env={**shared, "COREBASE_AUTH_KEY_CACHE_SECONDS": "3600"}) as cached,
        ):
            with first.client() as admin:
                created = admin.post("/api/keys", json={"name": "shared", "user": "ivan"})
                assert created.status_code == 404, "the user must exist before a key is made for it"
                assert admin.post("/api/users", json={"name": "ivan"}).status_code == 201
                created = admin.post("/api/keys", json={"name": "shared", "user": "ivan"})
                assert created.status_code == 201, created.text
                secret = created.json()["secret"]

                for server in (uncached, cached):
                    with server.client(secret) as ivan:
                        assert ivan.get("/api/runtime/containers").status_code == 200

                assert admin.delete(f"/api/keys/{created.json()['id']}").status_code == 200

            with uncached.client(secret) as ivan:
                assert ivan.get("/api/runtime/containers").status_code == 401
            # The documented limit: a process that verified the key before keeps its cached answer.
            with cached.client(secret) as ivan:
                assert ivan.get("/api/runtime/containers").status_code == 200
    finally:
        await drop_postgres_database(postgres_url, database_url)
