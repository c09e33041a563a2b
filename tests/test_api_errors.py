"""Errors through the API: authentication, bad input, engine failures, and that nothing is left behind."""

from __future__ import annotations

import os
import secrets
import stat
import time

import aiodocker
import httpx
import pytest

from api_support import (
    RUN_ID,
    RUN_LABEL,
    run_containers_in_engine,
    server_fixture,
    start_body,
    wait_until_ended,
)
from support.registry import push_test_image
from support.server import RunningServer, run_server

pytestmark = pytest.mark.engine

RUNTIME_ROUTES = [
    ("POST", "/api/runtime/start"),
    ("POST", "/api/runtime/stop"),
    ("POST", "/api/runtime/restart"),
    ("POST", "/api/runtime/remove"),
    ("POST", "/api/runtime/exec"),
    ("GET", "/api/runtime/containers"),
    ("GET", "/api/runtime/containers/ctr_0000000000000000"),
    ("GET", "/api/runtime/logs?containerId=x"),
    ("GET", "/api/runtime/stats?containerId=x"),
    ("GET", "/api/plugins"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, docker_available) -> RunningServer:
    yield from server_fixture(tmp_path_factory)




async def start(api, default_image, **fields) -> httpx.Response:
    """Start a container; an `image` in `fields` replaces the default one."""
    image = fields.pop("image", default_image)
    return await api.post("/api/runtime/start", json=start_body(image, **fields))


async def snapshot(api) -> tuple[int, set[str]]:
    """Count every row the caller can see, in any status, and the run's containers in the engine."""
    total = 0
    for status in ("creating", "created", "running", "exited", "failed", "removed"):
        total += (await api.get("/api/runtime/containers", params={"status": status})).json()["total"]
    engine_ids = {container["Id"] for container in await run_containers_in_engine()}
    return total, engine_ids


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert body["type"].startswith("https://")
    assert body["title"]
    assert body["detail"]
    if field is not None:
        assert body.get("field") == field, body
    return body


# --- authentication --------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), RUNTIME_ROUTES)
async def test_routes_require_a_key(server, method, path):
    async with httpx.AsyncClient(base_url=server.base_url) as anonymous:
        missing = await anonymous.request(method, path, json={})
        wrong = await anonymous.request(method, path, json={}, headers={"Authorization": "Bearer cbk_wrong"})
        malformed = await anonymous.request(method, path, json={}, headers={"Authorization": "Basic abc"})
    for response in (missing, wrong, malformed):
        assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_health_and_docs_are_public(server):
    async with httpx.AsyncClient(base_url=server.base_url) as anonymous:
        health = await anonymous.get("/health")
        schema = await anonymous.get("/schema/openapi.json")
        docs = await anonymous.get("/schema")
    assert health.status_code == 200
    assert "Retry-After" not in health.headers
    assert health.json()["status"] == "ok"
    assert health.json()["database"]["ok"] is True
    assert health.json()["engine"]["ok"] is True
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in ("/api/runtime/start", "/api/runtime/exec", "/api/runtime/logs", "/api/runtime/stats", "/health"):
        assert path in paths
    assert "projectId" in schema.json()["components"]["schemas"]["StartRequest"]["properties"]
    assert docs.status_code == 200


async def test_plugins_lists_builtins(api):
    plugins = {item["name"]: item for item in (await api.get("/api/plugins")).json()}
    assert plugins["corebase_docker"]["hooks"] == ["corebase_runtime"]
    assert plugins["corebase_policies"]["hooks"] == ["corebase_security_policies"]
    assert plugins["corebase_docker"]["version"]


async def test_generated_admin_key_is_private(tmp_path, docker_available):
    env = {"COREBASE_ADMIN_API_KEY": ""}
    with run_server(tmp_path / "data", env=env) as server:
        key_file = tmp_path / "data" / "admin-api-key"
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
        key = key_file.read_text().strip()
        assert str(key_file) in server.log()
        assert key not in server.log()
        async with server.async_client(key=key) as client:
            assert (await client.get("/api/plugins")).status_code == 200


# --- bad input -------------------------------------------------------------------------------


BAD_STARTS = [
    ({"memory": 512}, 422, "memory"),
    ({"memory": "5m"}, 422, "memory"),
    ({"memory": "lots"}, 422, "memory"),
    ({"memory": [1]}, 400, "memory"),
    ({"cpus": 0}, 422, "cpus"),
    ({"cpus": 64}, 422, "cpus"),
    ({"cpus": "two"}, 400, "cpus"),
    ({"name": "bad name!"}, 422, "name"),
    ({"image": ""}, 422, "image"),
    ({"image": "Not A Reference"}, 422, "image"),
    ({"command": []}, 400, "command"),
    ({"command": "echo hi"}, 400, "command"),
    ({"env": {"A=B": "x"}}, 422, "env.A=B"),
    ({"env": {"A": 1}}, 400, "env"),
    ({"ports": {"web": 80}}, 422, "ports.web"),
    ({"ports": {"80": 99999}}, 422, "ports.80"),
    ({"labels": {"corebase.owner": "someone"}}, 422, "labels.corebase.owner"),
    ({"projectId": "no spaces allowed"}, 422, "projectId"),
    ({"unknownField": 1}, 400, "unknownField"),
    ({"mounts": [{"type": "tmpfs", "target": "relative"}]}, 422, "mounts[0].target"),
    ({"command": ["no-such-binary-in-image"]}, 422, "command"),
    ({"user": "no-such-user"}, 422, "user"),
    ({"workdir": "relative/dir"}, 422, "workdir"),
    ({"name": "ctr_0123456789abcdef"}, 422, "name"),
    ({"image": None}, 422, "image"),
    ({"image": "corebase-test/busybox:1", "template": "python"}, 422, "image"),
]


@pytest.mark.parametrize(("fields", "status", "field"), BAD_STARTS)
async def test_bad_start_names_the_field_and_leaves_nothing(api, test_image, fields, status, field):
    before = await snapshot(api)
    response = await start(api, test_image, **fields)
    assert_problem(response, status, field)
    assert await snapshot(api) == before


BAD_EXECS = [
    ({"env": {"": ""}}, "env."),
    ({"env": {"A=B": "x"}}, "env.A=B"),
    ({"workdir": "x"}, "workdir"),
    ({"user": "nobody:x:y"}, "user"),
]


async def test_bad_exec_is_refused_like_a_bad_start(api, test_image):
    container_id = (await start(api, test_image, command=["sleep", "600"])).json()["id"]
    try:
        for route in ("/api/runtime/exec", "/api/runtime/exec/stream"):
            for fields, field in BAD_EXECS:
                response = await api.post(route, json={"containerId": container_id, "command": ["true"], **fields})
                assert_problem(response, 422, field)
    finally:
        await api.post("/api/runtime/remove", json={"containerId": container_id, "force": True})


async def test_bad_user_is_refused_before_the_engine(api, test_image):
    before = await snapshot(api)
    assert_problem(await start(api, test_image, user="nobody:x:y"), 422, "user")
    assert await snapshot(api) == before


@pytest.mark.parametrize(
    ("fields", "policy"),
    [
        ({"privileged": True}, "no-privileged"),
        ({"networkMode": "host"}, "no-host-namespaces"),
        ({"pidMode": "host"}, "no-host-namespaces"),
        ({"ipcMode": "host"}, "no-host-namespaces"),
        ({"volumes": ["/var/run/docker.sock:/var/run/docker.sock"]}, "no-host-mounts"),
        ({"mounts": [{"type": "bind", "source": "/", "target": "/host"}]}, "no-host-mounts"),
    ],
)
async def test_dangerous_start_is_denied_with_the_reason(api, test_image, fields, policy):
    before = await snapshot(api)
    body = assert_problem(await start(api, test_image, **fields), 403)
    assert policy in [reason["policy"] for reason in body["reasons"]]
    assert await snapshot(api) == before


async def test_missing_required_fields_are_named(api):
    assert_problem(await api.post("/api/runtime/stop", json={}), 400, "containerId")
    assert_problem(await api.post("/api/runtime/exec", json={"containerId": "x"}), 400, "command")


async def test_taken_host_port_is_a_conflict(api, test_image):
    first = (await start(api, test_image, command=["sleep", "600"], ports={"80": None})).json()
    taken = first["ports"][0]["hostPort"]
    before = await snapshot(api)
    body = assert_problem(await start(api, test_image, command=["sleep", "600"], ports={"80": taken}), 409, "ports")
    assert str(taken) in body["detail"]
    assert await snapshot(api) == before
    await api.post("/api/runtime/remove", json={"containerId": first["id"], "force": True})


@pytest.mark.parametrize(
    ("path", "params", "field", "hint"),
    [
        ("/api/runtime/logs", {"since": "yesterday"}, "since", "since 'yesterday' is not a time; use RFC 3339"),
        ("/api/runtime/logs", {"tail": "lots"}, "tail", "tail 'lots' is not a line count; use a whole number"),
        ("/api/runtime/stats", {"step": "5.5"}, "step", "step '5.5' is not a step; use whole seconds"),
        ("/api/runtime/stats", {"from": "nan"}, "from", "from 'nan' is not a time"),
        ("/api/audit", {"to": "tomorrow"}, "to", "to 'tomorrow' is not a time"),
        ("/api/runtime/containers/ctr_0000000000000000/files", {"path": "app"}, "path", "path 'app' is not an absolute path"),
    ],
)
async def test_query_pattern_errors_name_the_forms(api, path, params, field, hint):
    params = {"containerId": "ctr_0000000000000000", **params} if "files" not in path else params
    body = assert_problem(await api.get(path, params=params), 400, field)
    assert body["detail"].startswith(hint), body
    assert "regex" not in body["detail"]
    assert body["errors"][0]["message"] == body["detail"]


async def test_log_parameters_that_match_nothing(api, test_image):
    record = (await start(api, test_image, command=["sleep", "600"])).json()
    both_off = await api.get("/api/runtime/logs", params={"containerId": record["id"], "stdout": "false", "stderr": "false"})
    assert_problem(both_off, 422, "stdout")
    reversed_window = await api.get(
        "/api/runtime/logs", params={"containerId": record["id"], "since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}
    )
    assert_problem(reversed_window, 422, "until")
    text = await api.get("/api/runtime/logs", params={"containerId": record["id"]})
    assert text.headers["content-type"] == "text/plain; charset=utf-8"
    await api.post("/api/runtime/remove", json={"containerId": record["id"], "force": True})


async def test_listing_keeps_engine_details(api, test_image):
    record = (await start(api, test_image, command=["sleep", "600"], projectId="keep-details")).json()
    listed = (await api.get("/api/runtime/containers", params={"projectId": "keep-details"})).json()["items"][0]
    assert listed["startedAt"] == record["startedAt"]
    assert listed["updatedAt"] == record["updatedAt"]
    again = (await api.get(f"/api/runtime/containers/{record['id']}")).json()
    assert again["updatedAt"] == record["updatedAt"]
    await api.post("/api/runtime/remove", json={"containerId": record["id"], "force": True})


async def test_malformed_json_and_oversized_body(api):
    malformed = await api.post("/api/runtime/start", content=b"{not json", headers={"content-type": "application/json"})
    assert_problem(malformed, 400)
    huge = await api.post("/api/runtime/start", json={"image": "x", "env": {"BIG": "x" * 2_000_000}})
    assert_problem(huge, 413)


async def test_name_in_use(api, test_image, docker):
    name = "cbtest-dup-" + secrets.token_hex(4)
    first = await start(api, test_image, name=name, command=["sleep", "600"])
    assert first.status_code == 201
    before = await snapshot(api)
    body = assert_problem(await start(api, test_image, name=name), 409)
    assert body["name"] == name
    assert await snapshot(api) == before

    # A container CoreBase does not manage has the name, and the engine's conflict is reported the same way.
    foreign_name = "cbtest-foreign-" + secrets.token_hex(4)
    foreign = await docker.containers.create(
        {"Image": test_image, "Cmd": ["sleep", "600"], "Labels": {RUN_LABEL: RUN_ID}}, name=foreign_name
    )
    try:
        before = await snapshot(api)
        assert_problem(await start(api, test_image, name=foreign_name), 409)
        assert await snapshot(api) == before
    finally:
        await foreign.delete(force=True)


async def test_unknown_container_is_404_everywhere(api):
    unknown = "ctr_" + "0" * 16
    responses = [
        await api.post("/api/runtime/stop", json={"containerId": unknown}),
        await api.post("/api/runtime/restart", json={"containerId": unknown}),
        await api.post("/api/runtime/remove", json={"containerId": unknown}),
        await api.post("/api/runtime/exec", json={"containerId": unknown, "command": ["true"]}),
        await api.get("/api/runtime/logs", params={"containerId": unknown}),
        await api.get("/api/runtime/stats", params={"containerId": unknown}),
        await api.get(f"/api/runtime/containers/{unknown}"),
    ]
    for response in responses:
        body = assert_problem(response, 404)
        assert body["containerId"] == unknown


async def test_operations_on_a_stopped_container(api, test_image):
    record = (await start(api, test_image, command=["sh", "-c", "exit 0"])).json()
    container_id = record["id"]
    assert (await wait_until_ended(api, container_id))["status"] == "exited"
    for response in (
        await api.post("/api/runtime/exec", json={"containerId": container_id, "command": ["true"]}),
        await api.post("/api/runtime/stop", json={"containerId": container_id}),
        await api.get("/api/runtime/stats", params={"containerId": container_id}),
    ):
        body = assert_problem(response, 409)
        assert body["containerId"] == container_id
    # The logs of an exited container stay readable.
    assert (await api.get("/api/runtime/logs", params={"containerId": container_id})).status_code == 200
    assert (await api.post("/api/runtime/remove", json={"containerId": container_id})).status_code == 200


async def test_remove_running_needs_force(api, test_image):
    record = (await start(api, test_image, command=["sleep", "600"])).json()
    assert_problem(await api.post("/api/runtime/remove", json={"containerId": record["id"]}), 409)
    still = (await api.get(f"/api/runtime/containers/{record['id']}")).json()
    assert still["status"] == "running"
    removed = await api.post("/api/runtime/remove", json={"containerId": record["id"], "force": True})
    assert removed.json()["status"] == "removed"
    # A removed container is gone for every operation but reading its record.
    assert_problem(await api.post("/api/runtime/stop", json={"containerId": record["id"]}), 404)


@pytest.mark.parametrize(
    ("field", "value"),
    [("timeout", -1), ("timeout", "soon"), ("containerId", 5), ("force", "yes")],
)
async def test_bad_lifecycle_fields(api, field, value):
    body = {"containerId": "ctr_" + "0" * 16, field: value}
    path = "/api/runtime/remove" if field == "force" else "/api/runtime/stop"
    assert_problem(await api.post(path, json=body), 400, field)


async def test_bad_list_parameters(api):
    assert_problem(await api.get("/api/runtime/containers", params={"limit": 0}), 400, "limit")
    assert_problem(await api.get("/api/runtime/containers", params={"status": "sleeping"}), 400, "status")
    assert_problem(await api.get("/api/runtime/logs"), 400, "containerId")


# --- images ----------------------------------------------------------------------------------


@pytest.mark.registry
async def test_start_pulls_from_a_local_registry(api, test_image, registry, docker):
    reference = await push_test_image(registry, test_image)
    try:
        response = await start(api, reference, command=["sleep", "600"])
        assert response.status_code == 201, response.text
        assert response.json()["image"] == reference
        assert response.json()["status"] == "running"
        await api.post("/api/runtime/remove", json={"containerId": response.json()["id"], "force": True})
    finally:
        try:
            await docker.images.delete(reference, noprune=True)
        except aiodocker.DockerError:
            pass


@pytest.mark.registry
async def test_image_missing_from_registry_is_404(api, registry):
    reference = f"{registry}/corebase-test/absent:{secrets.token_hex(4)}"
    before = await snapshot(api)
    body = assert_problem(await start(api, reference), 404)
    assert body["image"] == reference
    assert reference in body["detail"]
    assert await snapshot(api) == before


async def test_unreachable_registry_is_a_named_pull_failure(api):
    # Nothing listens on this loopback port, so the pull fails without leaving the machine.
    reference = "127.0.0.1:9/corebase-test/absent:1"
    before = await snapshot(api)
    body = assert_problem(await start(api, reference), 502)
    assert body["image"] == reference
    assert await snapshot(api) == before


# --- engine outage ---------------------------------------------------------------------------


async def test_unreachable_engine_is_503_with_a_hint(tmp_path, docker_available):
    env = {"COREBASE_DOCKER_URL": f"unix://{tmp_path}/no-engine.sock"}
    with run_server(tmp_path / "data", env=env) as server:
        async with server.async_client() as client:
            health = await client.get("/health")
            assert health.status_code == 503
            assert int(health.headers["Retry-After"]) >= 1
            assert health.json()["engine"]["ok"] is False
            assert health.json()["database"]["ok"] is True

            began = time.monotonic()
            body = assert_problem(await client.post("/api/runtime/start", json={"image": "corebase-test/busybox:1"}), 503)
            assert time.monotonic() - began < 10
            assert "docker" in body["detail"].lower()
            assert (await client.get("/api/runtime/containers")).status_code == 200
            failed = (await client.get("/api/runtime/containers", params={"status": "failed"})).json()
            assert failed["total"] == 0
