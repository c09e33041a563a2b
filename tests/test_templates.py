"""Templates through the API: the built-ins, one-click starts, credentials, and custom templates."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest

from api_support import (
    BUILTIN_TEMPLATE_NAMES,
    remove_server_containers,
    server_fixture,
    start_body,
    toolbox_template_env,
)
from support.server import RunningServer, run_server

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def server(tmp_path_factory, docker_available, toolbox_image) -> RunningServer:
    for running in server_fixture(tmp_path_factory, toolbox_template_env(toolbox_image)):
        yield running
        asyncio.run(remove_server_containers(running.data_dir))




def custom_template(**fields) -> dict:
    return {
        "name": "cbtest-" + secrets.token_hex(4),
        "image": "corebase-test/toolbox:2",
        "category": "runtime",
        "description": "test template",
        "command": ["sleep", "infinity"],
        "env": {"GREETING": "hello"},
        "ports": [8080],
        "memory": "64m",
        "cpus": 0.5,
        "maxMemory": "128m",
        "maxCpus": 1.0,
        "healthcheck": {"test": ["sh", "-c", "exit 0"], "interval": 0.5, "retries": 3},
        **fields,
    }


async def wait_for_health(docker, docker_id: str, limit: float = 60.0) -> str | None:
    deadline = time.monotonic() + limit
    while True:
        health = ((await docker.containers.get(docker_id))["State"].get("Health") or {}).get("Status")
        if health != "starting" or time.monotonic() > deadline:
            return health
        await asyncio.sleep(0.5)


# --- built-ins -------------------------------------------------------------------------------


async def test_builtins_are_listed_with_their_details(api):
    templates = {item["name"]: item for item in (await api.get("/api/runtime/templates")).json()}
    assert set(BUILTIN_TEMPLATE_NAMES) <= set(templates)
    categories = {name: templates[name]["category"] for name in BUILTIN_TEMPLATE_NAMES}
    assert categories == {
        "node": "runtime",
        "python": "runtime",
        "postgres": "database",
        "redis": "database",
        "nginx": "static",
        "ubuntu": "system",
    }
    for name in BUILTIN_TEMPLATE_NAMES:
        template = templates[name]
        assert template["builtin"] is True
        assert template["description"]
        assert template["healthcheck"]["test"]
        assert template["memory"] > 0
        # The test server points every built-in at the local toolbox image.
        assert template["image"] == "corebase-test/toolbox:2"

    databases = (await api.get("/api/runtime/templates", params={"category": "database"})).json()
    assert {item["name"] for item in databases} == {"postgres", "redis"}


def test_builtin_images_are_pinned():
    from corebase_templates.builtin import BUILTIN_TEMPLATES

    for template in BUILTIN_TEMPLATES:
        repository, _, tag = template.image.rpartition(":")
        assert repository
        assert tag
        assert tag != "latest"


async def test_unknown_template(api):
    response = await api.get("/api/runtime/templates/no-such-template")
    assert response.status_code == 404
    assert response.json()["template"] == "no-such-template"
    start = await api.post("/api/runtime/start", json={"template": "no-such-template"})
    assert start.status_code == 404


@pytest.mark.parametrize("name", BUILTIN_TEMPLATE_NAMES)
async def test_every_builtin_starts_and_gets_healthy(api, docker, name):
    response = await api.post("/api/runtime/start", json=start_body(None, template=name) | {"image": None})
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["template"] == name
    assert record["templateVersion"] == 1
    assert record["source"] == "cold"
    assert record["status"] == "running"
    assert await wait_for_health(docker, record["dockerId"]) == "healthy"
    labels = (await docker.containers.get(record["dockerId"]))["Config"]["Labels"]
    assert labels["corebase.template"] == name
    await api.post("/api/runtime/remove", json={"containerId": record["id"], "force": True})


async def test_database_credentials_are_returned_once(server, api, docker):
    response = await api.post("/api/runtime/start", json=start_body(None, template="postgres") | {"image": None})
    record = response.json()
    password = record["credentials"]["POSTGRES_PASSWORD"]
    assert len(password) >= 24

    env = (await docker.containers.get(record["dockerId"]))["Config"]["Env"]
    assert f"POSTGRES_PASSWORD={password}" in env
    assert "POSTGRES_USER=app" in env

    again = (await api.get(f"/api/runtime/containers/{record['id']}")).json()
    assert again["credentials"] is None
    assert password not in server.log()

    second = (await api.post("/api/runtime/start", json=start_body(None, template="postgres") | {"image": None})).json()
    assert second["credentials"]["POSTGRES_PASSWORD"] != password
    for item in (record, second):
        await api.post("/api/runtime/remove", json={"containerId": item["id"], "force": True})


async def test_own_password_replaces_the_generated_one(api, docker):
    body = start_body(None, template="postgres", env={"POSTGRES_PASSWORD": "chosen-by-caller"}) | {"image": None}
    record = (await api.post("/api/runtime/start", json=body)).json()
    assert record["credentials"] is None
    env = (await docker.containers.get(record["dockerId"]))["Config"]["Env"]
    assert "POSTGRES_PASSWORD=chosen-by-caller" in env
    await api.post("/api/runtime/remove", json={"containerId": record["id"], "force": True})


async def test_overrides_within_template_limits(api, docker):
    body = start_body(None, template="redis", env={"EXTRA": "1"}, memory="1g", cpus=1.5) | {"image": None}
    record = (await api.post("/api/runtime/start", json=body)).json()
    host = (await docker.containers.get(record["dockerId"]))["HostConfig"]
    assert host["Memory"] == 1024**3
    assert host["NanoCpus"] == 1_500_000_000
    env = (await docker.containers.get(record["dockerId"]))["Config"]["Env"]
    assert "EXTRA=1" in env
    await api.post("/api/runtime/remove", json={"containerId": record["id"], "force": True})

    # The redis template allows at most 2 CPUs.
    too_many = await api.post("/api/runtime/start", json={"template": "redis", "cpus": 2.5})
    assert too_many.status_code == 422
    assert too_many.json()["field"] == "cpus"
    both = await api.post("/api/runtime/start", json={"template": "redis", "image": "corebase-test/toolbox:2"})
    assert both.status_code == 422
    assert both.json()["field"] == "image"


# --- custom templates ------------------------------------------------------------------------


async def test_custom_template_lifecycle(api, docker):
    body = custom_template()
    name = body["name"]
    created = await api.post("/api/runtime/templates", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["version"] == 1
    assert created.json()["owner"] == "admin"
    assert created.json()["builtin"] is False
    assert created.json()["memory"] == 64 * 1024**2

    duplicate = await api.post("/api/runtime/templates", json=body)
    assert duplicate.status_code == 409
    assert duplicate.json()["field"] == "name"
    empty = await api.post("/api/runtime/templates", content=b"", headers={"content-type": "application/json"})
    assert empty.status_code == 400
    assert "body is missing" in empty.json()["detail"]

    record = (await api.post("/api/runtime/start", json=start_body(None, template=name) | {"image": None})).json()
    assert record["templateVersion"] == 1
    env = (await docker.containers.get(record["dockerId"]))["Config"]["Env"]
    assert "GREETING=hello" in env

    updated = await api.put(f"/api/runtime/templates/{name}", json={k: v for k, v in body.items() if k != "name"} | {"env": {"GREETING": "v2"}})
    assert updated.status_code == 200, updated.text
    assert updated.json()["version"] == 2
    assert updated.json()["versions"] == [1, 2]
    first = (await api.get(f"/api/runtime/templates/{name}", params={"version": 1})).json()
    assert first["env"] == {"GREETING": "hello"}
    latest = (await api.get(f"/api/runtime/templates/{name}")).json()
    assert latest["env"] == {"GREETING": "v2"}

    newer = (await api.post("/api/runtime/start", json=start_body(None, template=name) | {"image": None})).json()
    assert newer["templateVersion"] == 2

    in_use = await api.delete(f"/api/runtime/templates/{name}")
    assert in_use.status_code == 409
    assert in_use.json()["usedBy"] == ["2 container(s)"]

    forced = await api.delete(f"/api/runtime/templates/{name}", params={"force": "true"})
    assert forced.status_code == 204
    assert (await api.get(f"/api/runtime/templates/{name}")).status_code == 404
    # Containers made from a deleted template keep their record of it.
    kept = (await api.get(f"/api/runtime/containers/{newer['id']}")).json()
    assert (kept["template"], kept["templateVersion"]) == (name, 2)
    for item in (record, newer):
        await api.post("/api/runtime/remove", json={"containerId": item["id"], "force": True})

    recreated = await api.post("/api/runtime/templates", json=body)
    assert recreated.json()["version"] == 3


async def test_unused_template_deletes_without_force(api):
    body = custom_template()
    assert (await api.post("/api/runtime/templates", json=body)).status_code == 201
    assert (await api.delete(f"/api/runtime/templates/{body['name']}")).status_code == 204


BAD_TEMPLATES = [
    ({"name": "Has Spaces"}, 422, "name"),
    ({"name": ""}, 422, "name"),
    ({"image": "corebase-test/toolbox:latest"}, 422, "image"),
    ({"image": "corebase-test/toolbox"}, 422, "image"),
    ({"image": "NOT VALID"}, 422, "image"),
    ({"category": "games"}, 400, "category"),
    ({"command": []}, 422, "command"),
    ({"env": {"A=B": "1"}}, 422, "env.A=B"),
    ({"ports": [0]}, 422, "ports[0]"),
    ({"ports": [80, 80]}, 422, "ports"),
    ({"memory": "1m"}, 422, "memory"),
    ({"memory": "lots"}, 422, "memory"),
    ({"memory": "256m", "maxMemory": "128m"}, 422, "maxMemory"),
    ({"cpus": 0}, 422, "cpus"),
    ({"cpus": 1.0, "maxCpus": 0.5}, 422, "maxCpus"),
    ({"generatedEnv": ["GREETING"]}, 422, "generatedEnv[0]"),
    ({"healthcheck": {"test": []}}, 422, "healthcheck.test"),
    ({"healthcheck": {"test": ["true"], "retries": 0}}, 422, "healthcheck.retries"),
    ({"workdir": "relative"}, 422, "workdir"),
    ({"description": "x" * 3000}, 422, "description"),
    ({"unexpected": True}, 400, "unexpected"),
]


@pytest.mark.parametrize(("fields", "status", "field"), BAD_TEMPLATES)
async def test_bad_template_names_the_field(api, fields, status, field):
    body = custom_template(**fields)
    response = await api.post("/api/runtime/templates", json=body)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    if body["name"]:
        assert (await api.get(f"/api/runtime/templates/{body['name']}")).status_code == 404


async def test_builtins_are_read_only(api):
    update = await api.put("/api/runtime/templates/python", json={"image": "corebase-test/toolbox:2"})
    assert update.status_code == 409
    assert "templates.images" in update.json()["detail"]
    assert (await api.delete("/api/runtime/templates/python")).status_code == 409
    clash = await api.post("/api/runtime/templates", json=custom_template(name="python"))
    assert clash.status_code == 409


async def test_unknown_image_override_stops_start_up(tmp_path, docker_available):
    env = {"COREBASE_TEMPLATES_IMAGES": "pyhton=corebase-test/toolbox:2"}
    with pytest.raises(RuntimeError) as caught:
        with run_server(tmp_path / "data", env=env):
            pass
    assert "no built-in template is named pyhton" in str(caught.value)
