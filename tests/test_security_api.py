"""Security policies through the API: bypass attempts, the dry run, and per-role settings.

Every rejected request is checked twice: the status and reasons it returns, and that neither the
engine nor the database contains a container for it afterwards.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import aiodocker
import httpx
import pytest

from api_support import RUN_ID, RUN_LABEL, server_fixture, start_body
from corebase import db
from corebase.auth.keys import create_key
from corebase.settings import load_settings
from support.server import RunningServer

pytestmark = pytest.mark.engine

CASE_LABEL = "corebase-test.case"
# The developer role may not ask for sandboxed containers, and admins are exempt from no-devices,
# so the tests can tell role-specific verdicts apart.
SERVER_CONFIG = """
[security.roles.developer]
isolation = ["standard"]

[security.roles.admin]
exempt_policies = ["no-devices"]
"""


@pytest.fixture(scope="module")
def secured_server(tmp_path_factory, docker_available) -> RunningServer:
    config = tmp_path_factory.mktemp("security-config") / "corebase.toml"
    config.write_text(SERVER_CONFIG)
    yield from server_fixture(tmp_path_factory, {"COREBASE_CONFIG": str(config)})


async def developer_key(server: RunningServer, user: str) -> str:
    """Store a developer key for `user` in the server's SQLite database, as an admin tool would."""
    settings = load_settings(environ={}, overrides={"server": {"data_dir": str(server.data_dir)}})
    engine = await db.connect(settings)
    try:
        _, secret = await create_key(f"{user}-key", user, "developer")
    finally:
        await db.disconnect(engine)
    return secret


@pytest.fixture(scope="module")
async def developer(secured_server) -> httpx.AsyncClient:
    key = await developer_key(secured_server, "dev-" + secrets.token_hex(4))
    async with secured_server.async_client(key) as client:
        yield client


def case_body(image: str, case: str, **fields) -> dict:
    """A start body labelled with a case id, so a container made for it can be found in the engine."""
    labels = {RUN_LABEL: RUN_ID, CASE_LABEL: case}
    return {"image": image, "labels": labels, **fields}


async def engine_containers(case: str) -> list[dict]:
    docker = aiodocker.Docker()
    try:
        containers = await docker.containers.list(all=True, filters={"label": [f"{CASE_LABEL}={case}"]})
        return [container._container for container in containers]
    finally:
        await docker.close()


async def assert_nothing_created(client: httpx.AsyncClient, case: str) -> None:
    assert await engine_containers(case) == []
    for status in ("creating", "running", "failed", "removed"):
        page = (await client.get("/api/runtime/containers", params={"status": status, "limit": 500})).json()
        assert [item for item in page["items"] if item["labels"].get(CASE_LABEL) == case] == []


# Other spellings of dangerous fields. JSON names are camelCase and unknown fields are rejected,
# so a different spelling fails validation (400) and is never ignored.
UNKNOWN_SPELLINGS = [
    {"Privileged": True},
    {"PRIVILEGED": True},
    {"privileged ": True},
    {"network_mode": "host"},
    {"NetworkMode": "host"},
    {"networkmode": "host"},
    {"NETWORK_MODE": "host"},
    {"pid_mode": "host"},
    {"PidMode": "host"},
    {"Volumes": ["/var/run/docker.sock:/x"]},
    {"binds": ["/var/run/docker.sock:/x"]},
    {"Binds": ["/var/run/docker.sock:/x"]},
    {"HostConfig": {"Binds": ["/var/run/docker.sock:/x"]}},
    {"hostConfig": {"Privileged": True}},
    {"Mounts": [{"type": "bind", "source": "/var/run/docker.sock", "target": "/x"}]},
    {"mounts": [{"Type": "bind", "Source": "/var/run/docker.sock", "Target": "/x"}]},
    {"mounts": [{"type": "bind", "src": "/var/run/docker.sock", "target": "/x"}]},
    {"mounts": [{"type": "bind", "source": "/var/run/docker.sock", "destination": "/x"}]},
    {"mounts": [{"type": "BIND", "source": "/var/run/docker.sock", "target": "/x"}]},
    {"mounts": [{"type": "Bind", "source": "/var/run/docker.sock", "target": "/x"}]},
    {"devices ": ["/dev/fuse"]},
    {"Devices": ["/dev/fuse"]},
    {"capAdd": ["SYS_ADMIN"]},
    {"cap_add": ["SYS_ADMIN"]},
    {"securityOpt": ["seccomp=unconfined"]},
    {"runtime": "runc"},
    {"isolation": "SANDBOXED"},
    {"isolation": "gvisor"},
    {"network": "host"},
    {"network": "NONE"},
]

# Spellings that pass validation; a policy must deny each.
DENIED_SPELLINGS = [
    ({"privileged": True}, "no-privileged"),
    ({"networkMode": "host"}, "no-host-namespaces"),
    ({"networkMode": "HOST"}, "no-host-namespaces"),
    ({"networkMode": " Host "}, "no-host-namespaces"),
    ({"networkMode": "bridge"}, "owner-network-only"),
    ({"networkMode": "Bridge"}, "owner-network-only"),
    ({"networkMode": "None"}, "owner-network-only"),
    ({"pidMode": "HOST"}, "no-host-namespaces"),
    ({"ipcMode": "host"}, "no-host-namespaces"),
    ({"volumes": ["/var/run/docker.sock:/x"]}, "no-host-mounts"),
    ({"volumes": ["/var/run/docker.sock:/var/run/docker.sock:ro"]}, "no-host-mounts"),
    ({"volumes": ["//var/run/docker.sock:/x"]}, "no-host-mounts"),
    ({"volumes": ["/var/run//docker.sock:/x"]}, "no-host-mounts"),
    ({"volumes": ["/var/run/docker.sock/:/x"]}, "no-host-mounts"),
    ({"volumes": ["/var/run/./docker.sock:/x"]}, "no-host-mounts"),
    ({"volumes": ["/var/lib/../run/docker.sock:/x"]}, "no-host-mounts"),
    ({"volumes": ["/run/docker.sock:/x:rw"]}, "no-host-mounts"),
    ({"volumes": ["/VAR/RUN/DOCKER.SOCK:/x"]}, "no-host-mounts"),
    ({"volumes": ["var/run/docker.sock:/x"]}, "no-host-mounts"),
    ({"volumes": ["./docker.sock:/x"]}, "no-host-mounts"),
    ({"volumes": ["~/docker.sock:/x"]}, "no-host-mounts"),
    ({"volumes": ["/:/host"]}, "no-host-mounts"),
    ({"mounts": [{"type": "bind", "source": "/var/run/docker.sock", "target": "/x"}]}, "no-host-mounts"),
    ({"mounts": [{"type": "bind", "source": "/var/run/docker.sock/", "target": "/x", "readOnly": True}]}, "no-host-mounts"),
    ({"mounts": [{"type": "bind", "source": "//run//docker.sock", "target": "/x"}]}, "no-host-mounts"),
    ({"mounts": [{"type": "bind", "source": "/etc", "target": "/etc"}]}, "no-host-mounts"),
    ({"devices": ["/dev/fuse"]}, "no-devices"),
    ({"devices": ["/dev/sda:/dev/xvda:rwm"]}, "no-devices"),
    ({"image": "quay.io/corebase-test/busybox:1"}, "registry-allowlist"),
    ({"image": "docker.io.example.com/corebase-test/busybox:1"}, "registry-allowlist"),
    ({"isolation": "sandboxed"}, "isolation-by-role"),
]

# Mount syntax the spec builder cannot read as a safe mount; each is an invalid field (422).
INVALID_SPELLINGS = [
    {"volumes": ["type=bind,source=/var/run/docker.sock,target=/x"]},
    {"volumes": ["type=bind,src=/var/run/docker.sock,dst=/x"]},
    {"volumes": ["/var/run/docker.sock:x"]},
    {"volumes": [":/x"]},
    {"volumes": ["/a:/b:ro:extra"]},
    {"mounts": [{"type": "volume", "source": "/var/run/docker.sock", "target": "/x"}]},
    {"mounts": [{"type": "volume", "source": "../../var/run/docker.sock", "target": "/x"}]},
    {"mounts": [{"type": "bind", "target": "/x"}]},
    {"labels": {"corebase.owner": "someone-else"}},
    {"labels": {"CoreBase.Owner": "someone-else"}},
    {"network": "none", "ports": {"8080": None}},
    {"network": "none", "networkMode": "host"},
]


@pytest.mark.parametrize("fields", UNKNOWN_SPELLINGS)
async def test_unknown_spellings_are_rejected(developer, test_image, fields):
    case = secrets.token_hex(6)
    response = await developer.post("/api/runtime/start", json=case_body(test_image, case, **fields))
    assert response.status_code == 400, response.text
    await assert_nothing_created(developer, case)


@pytest.mark.parametrize("value", ["true", "True", 1, "1", "yes"])
async def test_privileged_written_as_other_types(developer, test_image, value):
    case = secrets.token_hex(6)
    response = await developer.post("/api/runtime/start", json=case_body(test_image, case, privileged=value))
    # The body decoder may read a string or number as a boolean; then the policy denies it.
    assert response.status_code in (400, 403), response.text
    if response.status_code == 403:
        assert response.json()["reasons"][0]["policy"] == "no-privileged"
    await assert_nothing_created(developer, case)


@pytest.mark.parametrize(("fields", "policy"), DENIED_SPELLINGS)
async def test_dangerous_spellings_are_denied(developer, test_image, fields, policy):
    case = secrets.token_hex(6)
    body = case_body(fields.pop("image", test_image), case, **fields)
    response = await developer.post("/api/runtime/start", json=body)
    assert response.status_code == 403, response.text
    problem = response.json()
    assert problem["type"].endswith("/policy-denied")
    assert policy in {reason["policy"] for reason in problem["reasons"]}
    assert all(reason["reason"] for reason in problem["reasons"])
    await assert_nothing_created(developer, case)


@pytest.mark.parametrize("fields", INVALID_SPELLINGS)
async def test_unreadable_mounts_are_invalid(developer, test_image, fields):
    case = secrets.token_hex(6)
    labels = fields.pop("labels", {})
    body = case_body(test_image, case, **fields)
    body["labels"].update(labels)
    response = await developer.post("/api/runtime/start", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"]
    await assert_nothing_created(developer, case)


async def test_symlinked_docker_socket_is_denied(developer, test_image, tmp_path: Path):
    link = tmp_path / "harmless-looking"
    link.symlink_to("/var/run/docker.sock")
    case = secrets.token_hex(6)
    for fields in (
        {"volumes": [f"{link}:/x"]},
        {"mounts": [{"type": "bind", "source": str(link), "target": "/x"}]},
    ):
        response = await developer.post("/api/runtime/start", json=case_body(test_image, case, **fields))
        assert response.status_code == 403, response.text
        reason = response.json()["reasons"][0]
        assert reason["policy"] == "no-host-mounts"
        assert "Docker socket" in reason["reason"]
    await assert_nothing_created(developer, case)


async def test_every_reason_reaches_the_caller(developer, test_image):
    case = secrets.token_hex(6)
    body = case_body(
        "quay.io/corebase-test/busybox:1",
        case,
        privileged=True,
        networkMode="host",
        volumes=["/var/run/docker.sock:/x"],
        devices=["/dev/fuse"],
        isolation="sandboxed",
    )
    response = await developer.post("/api/runtime/start", json=body)
    assert response.status_code == 403, response.text
    policies = {reason["policy"] for reason in response.json()["reasons"]}
    assert policies == {
        "no-privileged",
        "no-host-namespaces",
        "no-host-mounts",
        "no-devices",
        "registry-allowlist",
        "isolation-by-role",
    }
    await assert_nothing_created(developer, case)


async def test_evaluate_returns_each_verdict(developer, test_image):
    case = secrets.token_hex(6)
    body = case_body(test_image, case, privileged=True, devices=["/dev/fuse"], command=["sleep", "600"])
    response = await developer.post("/api/policies/evaluate", json=body)
    assert response.status_code == 200, response.text
    evaluation = response.json()
    assert evaluation["allowed"] is False
    verdicts = {verdict["policy"]: verdict for verdict in evaluation["verdicts"]}
    assert {"no-privileged", "no-devices", "no-host-mounts", "registry-allowlist", "require-limits"} <= set(verdicts)
    assert verdicts["no-privileged"]["allowed"] is False
    assert verdicts["no-privileged"]["reasons"]
    assert verdicts["no-devices"]["allowed"] is False
    assert verdicts["no-devices"]["exempt"] is False
    assert verdicts["no-host-mounts"] == {"policy": "no-host-mounts", "allowed": True, "reasons": [], "exempt": False}
    await assert_nothing_created(developer, case)


async def test_evaluate_allows_a_plain_request(developer, test_image):
    case = secrets.token_hex(6)
    response = await developer.post("/api/policies/evaluate", json=case_body(test_image, case))
    assert response.status_code == 200, response.text
    assert response.json()["allowed"] is True
    assert all(verdict["allowed"] for verdict in response.json()["verdicts"])
    await assert_nothing_created(developer, case)


async def test_evaluate_rejects_an_invalid_body(developer, test_image):
    response = await developer.post("/api/policies/evaluate", json=case_body(test_image, "x", Privileged=True))
    assert response.status_code == 400
    response = await developer.post("/api/policies/evaluate", json=case_body(test_image, "x", memory="lots"))
    assert response.status_code == 422
    assert response.json()["field"] == "memory"


async def test_exempt_role_sees_exempt_verdict(secured_server, test_image):
    case = secrets.token_hex(6)
    async with secured_server.async_client() as admin:
        response = await admin.post("/api/policies/evaluate", json=case_body(test_image, case, devices=["/dev/fuse"]))
        assert response.status_code == 200, response.text
        evaluation = response.json()
        verdicts = {verdict["policy"]: verdict for verdict in evaluation["verdicts"]}
        assert verdicts["no-devices"]["allowed"] is False
        assert verdicts["no-devices"]["exempt"] is True
        assert evaluation["allowed"] is True

        # The developer, who is not exempt, is denied the same body.
        key = await developer_key(secured_server, "dev-" + secrets.token_hex(4))
        async with secured_server.async_client(key) as developer:
            response = await developer.post(
                "/api/policies/evaluate", json=case_body(test_image, case, devices=["/dev/fuse"])
            )
            assert response.json()["allowed"] is False
        await assert_nothing_created(admin, case)


async def test_plain_start_still_works(developer, test_image):
    response = await developer.post("/api/runtime/start", json=start_body(test_image, command=["sleep", "600"]))
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["isolation"] == "standard"
    assert record["network"].startswith("cbtest-")
    await developer.post("/api/runtime/remove", json={"containerId": record["id"], "force": True})
