"""Hostile bodies that once gave 5xx: deep nesting, oversized sizes, overlong image names, and a
log stream that breaks off after its response began."""

from __future__ import annotations

import json

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from corebase.api.streams import ndjson_output, raw_output
from corebase.app import create_app
from corebase.errors import EngineUnavailable
from corebase.runtime.types import LogChunk
from corebase.settings import load_settings
from support.server import TEST_NETWORK_PREFIX

ADMIN_KEY = "cbk_hostile_admin_" + "h" * 16
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
async def client(tmp_path):
    settings = load_settings(environ={}, overrides={"server": {"data_dir": str(tmp_path)}})
    settings = msgspec.structs.replace(
        settings,
        auth=msgspec.structs.replace(settings.auth, admin_api_key=ADMIN_KEY),
        monitoring=msgspec.structs.replace(settings.monitoring, enabled=False),
        networks=msgspec.structs.replace(settings.networks, prefix=TEST_NETWORK_PREFIX),
    )
    async with AsyncTestClient(create_app(settings)) as test_client:
        yield test_client


def nested(depth: int) -> bytes:
    return b'{"labels":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/runtime/start", nested(2000)),
        ("/api/policies/evaluate", nested(5000)),
        ("/api/users", b"[" * 100_000 + b"]" * 100_000),
    ],
)
async def test_deeply_nested_json_is_400(client, path, body):
    response = await client.post(path, content=body, headers={**ADMIN, "Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert "nested too deeply" in response.json()["detail"]
    # The audit record of the refused request is written, not lost.
    records = (await client.get("/api/audit", params={"limit": 100}, headers=ADMIN)).json()["items"]
    assert any(record["details"]["path"] == path and record["status"] == 400 for record in records)


@pytest.mark.parametrize(
    ("field", "value"),
    [("maxMemory", 10**30), ("maxMemory", 2**63), ("maxContainerMemory", "99999999999g")],
)
async def test_oversized_quota_is_refused(client, field, value):
    assert (await client.post("/api/users", json={"name": "dora"}, headers=ADMIN)).status_code == 201
    response = await client.put("/api/quotas/dora", json={field: value}, headers=ADMIN)
    # A size past 2**64 fails JSON decoding (400); others fail the size check (422); both name the field.
    assert response.status_code in (400, 422), response.text
    assert response.json()["field"] == field
    quota = (await client.get("/api/quotas/dora", headers=ADMIN)).json()
    assert quota["overrides"][field] is None


async def test_overlong_image_is_422(client):
    response = await client.post("/api/runtime/start", json={"image": "a" * 300 + ":1"}, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "image"
    assert "too long" in response.json()["detail"]
    listed = (await client.get("/api/runtime/containers", headers=ADMIN)).json()
    assert listed["total"] == 0


async def broken_stream():
    yield LogChunk(stream="stdout", data=b"first \xe2\x82")
    raise EngineUnavailable("the engine went away")


async def test_ndjson_log_ends_with_the_error():
    lines = [json.loads(line) async for line in ndjson_output(broken_stream())]
    assert lines[0] == {"stream": "stdout", "text": "first "}
    assert lines[1] == {"stream": "stdout", "text": "\ufffd"}
    assert lines[-1]["error"]["status"] == 503
    assert "went away" in lines[-1]["error"]["detail"]


async def test_text_log_ends_quietly():
    assert [piece async for piece in raw_output(broken_stream())] == [b"first \xe2\x82"]


@pytest.mark.parametrize(
    "query",
    ["/api/keys?user=a&user=b", "/api/runtime/containers?status=running&status=exited", "/api/audit?from=0&from=1"],
)
async def test_repeated_single_query_parameter_is_400(client, query):
    response = await client.get(query, headers=ADMIN)
    assert response.status_code == 400, response.text
    name = query.split("?")[1].split("=")[0]
    assert response.json()["field"] == name
    assert "give it once" in response.json()["detail"]


async def test_repeated_parameter_without_key_is_still_401(client):
    response = await client.get("/api/keys?user=a&user=b")
    assert response.status_code == 401
