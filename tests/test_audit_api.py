"""Audit records written by the API for changes and denials, and GET /api/audit, on both databases."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import msgspec
import pytest
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import AsyncTestClient

from api_support import create_postgres_database, drop_postgres_database, start_body
from corebase.app import create_app
from corebase.audit.log import verify_chain
from corebase.audit.tables import AuditRecord
from corebase.auth.keys import create_key
from support.server import TEST_NETWORK_PREFIX, run_server

ADMIN_KEY = "cbk_audit_admin_" + "a" * 16
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def app_settings(settings):
    """`settings` with a known admin key, no background sampling, and the test run's network prefix."""
    return msgspec.structs.replace(
        settings,
        auth=msgspec.structs.replace(settings.auth, admin_api_key=ADMIN_KEY),
        monitoring=msgspec.structs.replace(settings.monitoring, enabled=False),
        # The session clean-up removes the owner networks that carry this prefix.
        networks=msgspec.structs.replace(settings.networks, prefix=TEST_NETWORK_PREFIX),
    )


@pytest.fixture
async def client(database_settings):
    async with AsyncTestClient(create_app(app_settings(database_settings))) as test_client:
        yield test_client


async def in_app(client, function, *args):
    """Await `function(*args)` on the app's event loop, which owns the database connections."""
    return await asyncio.to_thread(client.blocking_portal.call, function, *args)


async def developer(client, name: str = "dev") -> dict[str, str]:
    _, secret = await in_app(client, create_key, f"{name}-key", name, "developer")
    return {"Authorization": f"Bearer {secret}"}


async def audit(client, **params) -> list[dict]:
    response = await client.get("/api/audit", params=params, headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def by_request_id(client, request_id: str) -> dict:
    rows = [row for row in await audit(client, limit=1000) if row["requestId"] == request_id]
    assert len(rows) == 1, rows
    return rows[0]


# --- denials -----------------------------------------------------------------------------------


async def test_missing_key_is_recorded(client):
    response = await client.get("/api/runtime/containers", headers={"X-Request-ID": "missing-key-1"})
    assert response.status_code == 401
    assert response.headers["X-Request-ID"] == "missing-key-1"

    row = await by_request_id(client, "missing-key-1")
    assert row["outcome"] == "denied"
    assert row["status"] == 401
    assert row["action"] == "runtime.containers"
    assert row["actor"] is None
    assert "missing API key" in row["reason"]
    assert row["source"] != ""
    assert row["details"]["method"] == "GET"


async def test_rejected_key_secret_not_stored(client):
    secret = "cbk_not_a_real_key_0123456789"
    response = await client.post("/api/runtime/stop", json={"containerId": "x"},
                                 headers={"Authorization": f"Bearer {secret}", "X-Request-ID": "bad-key"})
    assert response.status_code == 401

    row = await by_request_id(client, "bad-key")
    assert row["outcome"] == "denied"
    assert row["action"] == "runtime.stop"
    assert secret not in json.dumps(row)


async def test_developer_reading_audit_is_denied(client):
    headers = {**await developer(client, "dora"), "X-Request-ID": "dora-audit"}
    response = await client.get("/api/audit", headers=headers)
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"

    row = await by_request_id(client, "dora-audit")
    assert row["outcome"] == "denied"
    assert row["actor"] == "dora"
    assert row["role"] == "developer"
    assert row["keyId"].startswith("key_")
    assert row["action"] == "audit"


async def test_refused_websocket_is_recorded(client):
    with pytest.raises(WebSocketDisconnect):
        session = await client.websocket_connect("/api/events", headers={"X-Request-ID": "ws-no-key"})
        with session:
            session.receive_text()

    row = await by_request_id(client, "ws-no-key")
    assert row["outcome"] == "denied"
    assert row["status"] == 401
    assert row["action"] == "events"
    assert row["details"]["method"] == "WS"


async def test_websocket_closed_as_not_found_is_recorded(client):
    headers = {**await developer(client, "wes"), "X-Request-ID": "ws-missing"}
    session = await client.websocket_connect("/api/runtime/logs/ws?containerId=ctr_0000000000000000", headers=headers)
    with session:
        message = json.loads(session.receive_text())
        assert message["status"] == 404
        with pytest.raises(WebSocketDisconnect):
            session.receive_text()

    row = await by_request_id(client, "ws-missing")
    assert row["outcome"] == "denied"
    assert row["status"] == 404
    assert row["actor"] == "wes"
    assert row["action"] == "runtime.logs.ws"


async def test_accepted_websocket_is_not_recorded(client):
    headers = {**await developer(client, "wanda"), "X-Request-ID": "ws-fine"}
    session = await client.websocket_connect("/api/events", headers=headers)
    with session:
        assert json.loads(session.receive_text())["type"] == "subscribed"
    assert [row for row in await audit(client, limit=1000) if row["requestId"] == "ws-fine"] == []


async def test_unknown_rule_is_recorded_as_denied(client):
    headers = {**await developer(client), "X-Request-ID": "no-rule"}
    response = await client.delete("/api/alerts/rules/rule_missing", headers=headers)
    assert response.status_code == 404

    row = await by_request_id(client, "no-rule")
    assert row["outcome"] == "denied"
    assert row["action"] == "alerts.rules.delete"
    assert row["targetType"] == "alert_rule"
    assert row["targetId"] == "rule_missing"


async def test_policy_denial_keeps_reasons(client):
    headers = {**await developer(client, "pia"), "X-Request-ID": "privileged-start"}
    response = await client.post(
        "/api/runtime/start", json=start_body("corebase-test/busybox:1", privileged=True), headers=headers
    )
    assert response.status_code == 403, response.text

    row = await by_request_id(client, "privileged-start")
    assert row["outcome"] == "denied"
    assert row["action"] == "runtime.start"
    assert row["details"]["problemType"].endswith("/policy-denied")
    assert row["details"]["problem"]["reasons"] == response.json()["reasons"]
    assert "privileged" in row["reason"]


# --- changes -----------------------------------------------------------------------------------


async def test_rule_changes_are_recorded(client):
    headers = await developer(client, "rita")
    body = {"name": "busy", "metric": "cpu_percent", "comparator": ">", "threshold": 90}
    created = await client.post("/api/alerts/rules", json=body, headers={**headers, "X-Request-ID": "rule-create"})
    assert created.status_code == 201, created.text
    rule_id = created.json()["id"]
    removed = await client.delete(f"/api/alerts/rules/{rule_id}", headers={**headers, "X-Request-ID": "rule-delete"})
    assert removed.status_code == 204

    create_row = await by_request_id(client, "rule-create")
    assert create_row["action"] == "alerts.rules.create"
    assert create_row["outcome"] == "success"
    assert create_row["status"] == 201
    assert create_row["targetId"] == rule_id
    assert create_row["actor"] == "rita"
    delete_row = await by_request_id(client, "rule-delete")
    assert delete_row["action"] == "alerts.rules.delete"
    assert delete_row["targetId"] == rule_id


async def test_reads_are_not_recorded(client):
    response = await client.get("/api/alerts/rules", headers={**ADMIN, "X-Request-ID": "plain-read"})
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "plain-read"

    rows = [row for row in await audit(client, limit=1000) if row["requestId"] == "plain-read"]
    assert rows == []


async def test_generated_request_id_is_returned(client):
    response = await client.post("/api/alerts/rules", json={}, headers={**ADMIN, "X-Request-ID": "bad id with spaces"})
    generated = response.headers["X-Request-ID"]
    assert generated != "bad id with spaces"
    row = await by_request_id(client, generated)
    assert row["outcome"] == "failed"
    assert row["status"] == response.status_code


# --- GET /api/audit filters ---------------------------------------------------------------------


async def test_audit_filters(client):
    await client.get("/api/runtime/containers", headers={"X-Request-ID": "filter-anon"})
    headers = await developer(client, "fran")
    await client.delete("/api/alerts/rules/rule_gone", headers={**headers, "X-Request-ID": "filter-fran"})

    assert {row["requestId"] for row in await audit(client, actor="fran")} == {"filter-fran"}
    assert [row["requestId"] for row in await audit(client, action="alerts.rules.delete")] == ["filter-fran"]
    assert {row["action"] for row in await audit(client, action="alerts.*")} == {"alerts.rules.delete"}
    assert [row["requestId"] for row in await audit(client, target="rule_gone")] == ["filter-fran"]
    assert len(await audit(client, outcome="denied")) == 2
    assert await audit(client, outcome="success") == []
    assert len(await audit(client, **{"from": "2000-01-01T00:00:00Z"})) == 2
    assert await audit(client, to="2000-01-01T00:00:00Z") == []

    window = {"from": "2030-01-01T00:00:00Z", "to": "2020-01-01T00:00:00Z"}
    reversed_window = await client.get("/api/audit", params=window, headers=ADMIN)
    assert (reversed_window.status_code, reversed_window.json()["field"]) == (422, "to")
    assert "earlier than from" in reversed_window.json()["detail"]

    first = await client.get("/api/audit", params={"limit": 1}, headers=ADMIN)
    second = await client.get("/api/audit", params={"limit": 1, "offset": 1}, headers=ADMIN)
    assert first.json()["total"] == 2
    assert first.json()["items"][0]["requestId"] == "filter-fran"
    assert second.json()["items"][0]["requestId"] == "filter-anon"

    invalid = await client.get("/api/audit", params={"outcome": "maybe"}, headers=ADMIN)
    assert (invalid.status_code, invalid.json()["field"]) == (422, "outcome")


async def test_chain_verifies_after_requests(client):
    headers = await developer(client)
    for number in range(5):
        await client.delete(f"/api/alerts/rules/rule_{number}", headers=headers)
        await client.get("/api/runtime/containers")

    count, broken = await in_app(client, verify_chain)
    assert broken is None
    assert count == 10


async def test_concurrent_requests_keep_one_chain(client):
    headers = await developer(client)
    await asyncio.gather(*(client.delete(f"/api/alerts/rules/rule_{n}", headers=headers) for n in range(30)))

    count, broken = await in_app(client, verify_chain)
    assert broken is None
    assert count == 30


# --- containers on the engine ------------------------------------------------------------------


@pytest.mark.engine
async def test_container_lifecycle_is_recorded(client, test_image):
    headers = await developer(client, "cleo")
    secret_value = "s3cret-" + "x" * 20
    started = await client.post(
        "/api/runtime/start",
        json=start_body(test_image, command=["sleep", "300"], env={"DB_PASSWORD": secret_value}),
        headers={**headers, "X-Request-ID": "cleo-start"},
        timeout=120,
    )
    assert started.status_code == 201, started.text
    container_id = started.json()["id"]
    try:
        stopped = await client.post("/api/runtime/stop", json={"containerId": container_id, "timeout": 0},
                                    headers={**headers, "X-Request-ID": "cleo-stop"}, timeout=120)
        assert stopped.status_code == 200, stopped.text
        other = await developer(client, "otto")
        foreign = await client.post("/api/runtime/remove", json={"containerId": container_id},
                                    headers={**other, "X-Request-ID": "otto-remove"})
        assert foreign.status_code == 404
    finally:
        removed = await client.post("/api/runtime/remove", json={"containerId": container_id, "force": True},
                                    headers={**headers, "X-Request-ID": "cleo-remove"}, timeout=120)
        assert removed.status_code == 200, removed.text

    start_row = await by_request_id(client, "cleo-start")
    assert start_row["action"] == "runtime.start"
    assert start_row["targetType"] == "container"
    assert start_row["targetId"] == container_id
    assert start_row["outcome"] == "success"
    stop_row = await by_request_id(client, "cleo-stop")
    assert stop_row["action"] == "runtime.stop"
    assert stop_row["targetId"] == container_id
    foreign_row = await by_request_id(client, "otto-remove")
    assert foreign_row["outcome"] == "denied"
    assert foreign_row["actor"] == "otto"
    assert foreign_row["targetId"] == container_id
    remove_row = await by_request_id(client, "cleo-remove")
    assert remove_row["action"] == "runtime.remove"

    stored = json.dumps(await in_app(client, _all_records), default=str)
    assert secret_value not in stored


async def _all_records() -> list[dict]:
    return await AuditRecord.select()


@pytest.mark.postgres
async def test_two_servers_keep_one_chain(tmp_path, postgres_url):
    database_url = await create_postgres_database(postgres_url)
    env = {"COREBASE_DATABASE_URL": database_url, "COREBASE_MONITORING_ENABLED": "false"}
    try:
        with run_server(tmp_path / "one", env=env, admin_key=ADMIN_KEY) as first, \
                run_server(tmp_path / "two", env=env, admin_key=ADMIN_KEY) as second:
            async with first.async_client() as client_one, second.async_client() as client_two:
                requests = [
                    client.delete(f"/api/alerts/rules/rule_{number}")
                    for number in range(150)
                    for client in (client_one, client_two)
                ]
                responses = await asyncio.gather(*requests)
                assert {response.status_code for response in responses} == {404}
                page = (await client_one.get("/api/audit", params={"limit": 1})).json()
            assert page["total"] == 300

            result = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "corebase", "audit", "verify"],
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "COREBASE_DATABASE_URL": database_url},
                capture_output=True,
                text=True,
                timeout=60,
            )
        assert result.returncode == 0, result.stderr
        assert "300 records" in result.stdout
    finally:
        await drop_postgres_database(postgres_url, database_url)
