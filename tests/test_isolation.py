"""Tenant networks and isolation levels on the real engine.

Reachability is tested from inside real containers: one listens with `nc`, others try to connect.
Sandboxed containers need the engine to have gVisor's runsc registered (scripts/services.sh install
does it as root).
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import time

import aiodocker
import httpx
import pytest
from aiodocker.networks import DockerNetwork

from api_support import RUN_ID, RUN_LABEL, remove_server_containers, server_fixture, start_body, toolbox_template_env
from corebase import db
from corebase.auth.keys import create_key
from corebase.errors import EngineError
from corebase.settings import load_settings
from corebase_docker.networks import SubnetPool
from corebase_docker.runtime import DockerRuntime
from support.server import TEST_NETWORK_PREFIX, RunningServer
from support.services import require_service

pytestmark = pytest.mark.engine

# Serves "hello" to every connection on port 8080, one connection at a time.
LISTENER = ["sh", "-c", "while true; do echo hello | nc -l -p 8080; done"]
SLEEPER = ["sleep", "600"]


@pytest.fixture(scope="module")
def net_server(tmp_path_factory, docker_available) -> RunningServer:
    yield from server_fixture(tmp_path_factory)


async def user_client(server: RunningServer, user: str) -> httpx.AsyncClient:
    """Store a developer key for `user` in the server's database and return a client that uses it."""
    settings = load_settings(environ={}, overrides={"server": {"data_dir": str(server.data_dir)}})
    engine = await db.connect(settings)
    try:
        _, secret = await create_key(f"{user}-key", user, "developer")
    finally:
        await db.disconnect(engine)
    return server.async_client(secret)


async def start(client: httpx.AsyncClient, image: str, **fields) -> dict:
    response = await client.post("/api/runtime/start", json=start_body(image, **fields))
    assert response.status_code == 201, response.text
    return response.json()


async def remove(client: httpx.AsyncClient, container_id: str) -> None:
    response = await client.post("/api/runtime/remove", json={"containerId": container_id, "force": True})
    assert response.status_code == 200, response.text


async def exec_in(client: httpx.AsyncClient, container_id: str, command: list[str]) -> dict:
    response = await client.post("/api/runtime/exec", json={"containerId": container_id, "command": command, "timeout": 20})
    assert response.status_code == 200, response.text
    return response.json()


async def address_on(docker: aiodocker.Docker, engine_id: str, network: str) -> str:
    details = await docker.containers.container(engine_id).show()
    return details["NetworkSettings"]["Networks"][network]["IPAddress"]


async def fetch(client: httpx.AsyncClient, container_id: str, address: str) -> dict:
    """Connect from inside a container to address:8080 and read what the listener sends."""
    return await exec_in(client, container_id, ["nc", "-w", "3", address, "8080"])


async def test_tenants_cannot_reach_each_other(net_server, docker, test_image):
    alice_name = "alice-" + secrets.token_hex(3)
    bob_name = "bob-" + secrets.token_hex(3)
    alice = await user_client(net_server, alice_name)
    bob = await user_client(net_server, bob_name)
    started: list[tuple[httpx.AsyncClient, str]] = []
    try:
        listener = await start(alice, test_image, command=LISTENER)
        started.append((alice, listener["id"]))
        neighbour = await start(alice, test_image, command=SLEEPER)
        started.append((alice, neighbour["id"]))
        stranger = await start(bob, test_image, command=SLEEPER)
        started.append((bob, stranger["id"]))
        offline = await start(alice, test_image, command=SLEEPER, network="none")
        started.append((alice, offline["id"]))

        assert listener["network"] == neighbour["network"]
        assert stranger["network"] != listener["network"]
        assert offline["network"] == "none"

        network = await docker.networks.get(listener["network"])
        labels = (await network.show())["Labels"]
        assert labels["corebase.managed"] == "true"
        assert labels["corebase.owner"] == alice_name
        address = await address_on(docker, listener["dockerId"], listener["network"])
        # Give the listener's shell a moment to open the port.
        await asyncio.sleep(0.5)

        same_tenant = await fetch(alice, neighbour["id"], address)
        assert same_tenant["exitCode"] == 0, same_tenant
        assert same_tenant["stdout"].strip() == "hello"

        other_tenant = await fetch(bob, stranger["id"], address)
        assert other_tenant["exitCode"] != 0, other_tenant
        assert "hello" not in other_tenant["stdout"]

        no_network = await fetch(alice, offline["id"], address)
        assert no_network["exitCode"] != 0, no_network
        assert "hello" not in no_network["stdout"]

        # The listener still replies to its owner's container after the rejected attempts.
        again = await fetch(alice, neighbour["id"], address)
        assert again["stdout"].strip() == "hello"
    finally:
        for client, container_id in started:
            await remove(client, container_id)
        await alice.aclose()
        await bob.aclose()


async def test_other_tenant_network_is_denied(net_server, test_image):
    alice = await user_client(net_server, "alice-" + secrets.token_hex(3))
    bob = await user_client(net_server, "bob-" + secrets.token_hex(3))
    try:
        mine = await start(alice, test_image, command=SLEEPER)
        try:
            response = await bob.post(
                "/api/runtime/start", json=start_body(test_image, command=SLEEPER, networkMode=mine["network"])
            )
            assert response.status_code == 403, response.text
            assert response.json()["reasons"][0]["policy"] == "owner-network-only"
        finally:
            await remove(alice, mine["id"])
    finally:
        await alice.aclose()
        await bob.aclose()


async def test_published_ports_bind_to_loopback(net_server, docker, test_image):
    async with net_server.async_client() as admin:
        record = await start(admin, test_image, command=LISTENER, ports={"8080": None})
        try:
            assert [port["hostIp"] for port in record["ports"]] == ["127.0.0.1"]
            details = await docker.containers.container(record["dockerId"]).show()
            bindings = details["HostConfig"]["PortBindings"]["8080/tcp"]
            assert [binding["HostIp"] for binding in bindings] == ["127.0.0.1"]
        finally:
            await remove(admin, record["id"])


async def test_sandboxed_container_runs_in_runsc(net_server, docker, test_image):
    info = await docker.system.info()
    if "runsc" not in (info.get("Runtimes") or {}):
        require_service("gVisor's runsc", "the engine has no runtime named runsc; run scripts/services.sh install as root")
    async with net_server.async_client() as admin:
        record = await start(admin, test_image, command=SLEEPER, isolation="sandboxed")
        try:
            assert record["isolation"] == "sandboxed"
            details = await docker.containers.container(record["dockerId"]).show()
            assert details["HostConfig"]["Runtime"] == "runsc"
            # gVisor's kernel writes its own boot messages, which no host kernel does.
            kernel = await exec_in(admin, record["id"], ["dmesg"])
            assert "gVisor" in kernel["stdout"], kernel

            listed = (await admin.get(f"/api/runtime/containers/{record['id']}")).json()
            assert listed["isolation"] == "sandboxed"
        finally:
            await remove(admin, record["id"])


async def test_standard_container_runs_in_runc(net_server, docker, test_image):
    async with net_server.async_client() as admin:
        record = await start(admin, test_image, command=SLEEPER)
        try:
            assert record["isolation"] == "standard"
            details = await docker.containers.container(record["dockerId"]).show()
            assert details["HostConfig"]["Runtime"] == "runc"
        finally:
            await remove(admin, record["id"])


@pytest.fixture(scope="module")
def runtime_missing_server(tmp_path_factory, docker_available) -> RunningServer:
    yield from server_fixture(tmp_path_factory, {"COREBASE_SECURITY_SANDBOX_RUNTIME": "cbtest-no-such-runtime"})


async def test_missing_sandbox_runtime_is_422(runtime_missing_server, test_image):
    name = "cbtest-sandbox-" + secrets.token_hex(4)
    async with runtime_missing_server.async_client() as admin:
        response = await admin.post(
            "/api/runtime/start", json=start_body(test_image, command=SLEEPER, isolation="sandboxed", name=name)
        )
        assert response.status_code == 422, response.text
        problem = response.json()
        assert problem["field"] == "isolation"
        assert "cbtest-no-such-runtime" in problem["detail"]
        assert "standard" in problem["detail"]

        missing = await admin.get(f"/api/runtime/containers/{name}")
        assert missing.status_code == 404
        docker = aiodocker.Docker()
        try:
            assert await docker.containers.list(all=True, filters={"name": [name]}) == []
        finally:
            await docker.close()


# Developers may take images only from a loopback registry here, so a pool member of a template
# whose image is on docker.io must be denied to them like a cold start would be.
POOL_SERVER_CONFIG = """
[security.roles.developer]
allowed_registries = ["127.0.0.1"]
"""


@pytest.fixture(scope="module")
def pool_server(tmp_path_factory, docker_available, toolbox_image) -> RunningServer:
    config = tmp_path_factory.mktemp("pool-config") / "corebase.toml"
    config.write_text(POOL_SERVER_CONFIG)
    env = {**toolbox_template_env(toolbox_image), "COREBASE_POOL_INTERVAL": "0.2", "COREBASE_CONFIG": str(config)}
    for running in server_fixture(tmp_path_factory, env):
        yield running
        asyncio.run(remove_server_containers(running.data_dir))


async def idle_members(client: httpx.AsyncClient, template: str) -> int:
    response = await client.get(f"/api/runtime/pools/{template}")
    assert response.status_code == 200, response.text
    return response.json()["idle"]


async def wait_for_idle(client: httpx.AsyncClient, template: str, count: int, limit: float = 90.0) -> None:
    deadline = time.monotonic() + limit
    while await idle_members(client, template) != count:
        assert time.monotonic() < deadline, f"pool {template} did not reach {count} idle members"
        await asyncio.sleep(0.2)


async def test_pool_claim_moves_to_owner_network(pool_server, docker):
    body = {"template": "ubuntu", "labels": {RUN_LABEL: RUN_ID}}
    async with pool_server.async_client() as admin:
        response = await admin.put("/api/runtime/pools/ubuntu", json={"minIdle": 1, "maxIdle": 1, "maxTotal": 2})
        assert response.status_code in (200, 201), response.text
        try:
            await wait_for_idle(admin, "ubuntu", 1)
            developer = await user_client(pool_server, "dev-" + secrets.token_hex(3))
            async with developer:
                denied = await developer.post("/api/runtime/start", json=body)
            assert denied.status_code == 403, denied.text
            assert denied.json()["reasons"][0]["policy"] == "registry-allowlist"
            assert await idle_members(admin, "ubuntu") == 1

            pool_network = await docker.networks.get(f"{pool_server.network_prefix}-pool-isolated")
            # Idle members cannot reach each other over the pool network.
            assert (await pool_network.show())["Options"]["com.docker.network.bridge.enable_icc"] == "false"

            claimed = await admin.post("/api/runtime/start", json=body)
            assert claimed.status_code == 201, claimed.text
            record = claimed.json()
            try:
                assert record["source"] == "pool"
                # The member is on its owner's network when the claim returns, and leaves the
                # pool network right after.
                details = await docker.containers.container(record["dockerId"]).show()
                assert record["network"] in details["NetworkSettings"]["Networks"]
                async with asyncio.timeout(10):
                    while set(details["NetworkSettings"]["Networks"]) != {record["network"]}:
                        await asyncio.sleep(0.1)
                        details = await docker.containers.container(record["dockerId"]).show()
                network = await docker.networks.get(record["network"])
                assert (await network.show())["Labels"]["corebase.owner"] == record["owner"]
            finally:
                await remove(admin, record["id"])
        finally:
            await admin.delete("/api/runtime/pools/ubuntu")


async def test_template_sets_isolation(net_server, docker, test_image):
    if "runsc" not in ((await docker.system.info()).get("Runtimes") or {}):
        require_service("gVisor's runsc", "the engine has no runtime named runsc; run scripts/services.sh install as root")
    name = "cbsandbox-" + secrets.token_hex(4)
    async with net_server.async_client() as admin:
        body = {"name": name, "image": test_image, "command": SLEEPER, "isolation": "sandboxed"}
        created = await admin.post("/api/runtime/templates", json=body)
        assert created.status_code == 201, created.text
        assert created.json()["isolation"] == "sandboxed"
        try:
            labels = {RUN_LABEL: RUN_ID}
            sandboxed = (await admin.post("/api/runtime/start", json={"template": name, "labels": labels})).json()
            overridden = (
                await admin.post("/api/runtime/start", json={"template": name, "labels": labels, "isolation": "standard"})
            ).json()
            try:
                assert sandboxed["isolation"] == "sandboxed"
                assert overridden["isolation"] == "standard"
                runtimes = [
                    (await docker.containers.container(record["dockerId"]).show())["HostConfig"]["Runtime"]
                    for record in (sandboxed, overridden)
                ]
                assert runtimes == ["runsc", "runc"]
            finally:
                await remove(admin, sandboxed["id"])
                await remove(admin, overridden["id"])
        finally:
            await admin.delete(f"/api/runtime/templates/{name}")


async def named_networks(docker: aiodocker.Docker, name: str) -> list[dict]:
    return [network for network in await docker.networks.list(filters={"name": [name]}) if network["Name"] == name]


async def test_duplicate_owner_networks_are_merged(docker):
    name = f"{TEST_NETWORK_PREFIX}-dup-{secrets.token_hex(3)}"
    labels = {"corebase.managed": "true", "corebase.owner": "dup"}
    runtime = DockerRuntime()
    try:
        # Two networks of one name, as racing creators can leave them.
        for _ in range(2):
            await docker.networks.create({"Name": name, "Driver": "bridge", "CheckDuplicate": False, "Labels": labels})
        before = await named_networks(docker, name)
        assert len(before) == 2
        oldest = min(before, key=lambda network: (network["Created"], network["Id"]))

        await runtime.ensure_network(name, labels)
        after = await named_networks(docker, name)
        assert [network["Id"] for network in after] == [oldest["Id"]]

        # The name is unambiguous again, so a second call finds it with one inspect.
        await runtime.ensure_network(name, labels)
        assert len(await named_networks(docker, name)) == 1
    finally:
        await runtime.close()
        for network in await named_networks(docker, name):
            await DockerNetwork(docker, network["Id"]).delete()


async def test_foreign_network_name_is_rejected(docker):
    name = f"{TEST_NETWORK_PREFIX}-foreign-{secrets.token_hex(3)}"
    runtime = DockerRuntime()
    try:
        await docker.networks.create({"Name": name, "Driver": "bridge", "Labels": {"corebase-test.other": "1"}})
        with pytest.raises(EngineError, match="did not create"):
            await runtime.ensure_network(name, {"corebase.managed": "true", "corebase.owner": "someone"})
    finally:
        await runtime.close()
        for network in await named_networks(docker, name):
            await DockerNetwork(docker, network["Id"]).delete()


async def reaches(docker: aiodocker.Docker, network: str, test_image: str) -> bool:
    """Start two containers on `network` and tell whether the first can ping the second."""
    containers = []
    try:
        for _ in range(2):
            config = {
                "Image": test_image,
                "Cmd": ["sleep", "60"],
                "Labels": {RUN_LABEL: RUN_ID},
                "HostConfig": {"NetworkMode": network},
            }
            containers.append(await docker.containers.run(config))
        target = (await containers[1].show())["NetworkSettings"]["Networks"][network]["IPAddress"]
        ping = await containers[0].exec(["ping", "-c", "1", "-W", "2", target])
        async with ping.start(detach=False) as output:
            while await output.read_out() is not None:
                pass
        while (result := await ping.inspect())["Running"]:
            await asyncio.sleep(0.1)
        return result["ExitCode"] == 0
    finally:
        for container in containers:
            await container.delete(force=True)


async def test_isolated_network_blocks_traffic(docker, test_image):
    runtime = DockerRuntime()
    names = [f"{TEST_NETWORK_PREFIX}-icc{index}-{secrets.token_hex(3)}" for index in range(2)]
    labels = {"corebase.managed": "true", "corebase.owner": "pooled"}
    try:
        await runtime.ensure_network(names[0], labels, isolated=True)
        await runtime.ensure_network(names[1], labels)

        assert not await reaches(docker, names[0], test_image)
        assert await reaches(docker, names[1], test_image)
    finally:
        await runtime.close()
        for name in names:
            for network in await named_networks(docker, name):
                await DockerNetwork(docker, network["Id"]).delete()


async def test_owner_networks_take_subnets_from_the_pool(docker):
    # A /28 pool split into /29 subnets holds two networks; a random one keeps parallel runs apart.
    base = ipaddress.IPv4Network(f"10.213.{secrets.randbelow(56) + 200}.{secrets.randbelow(16) * 16}/28")
    runtime = DockerRuntime(subnet_pool=SubnetPool(base, 29))
    names = [f"{TEST_NETWORK_PREFIX}-pool{index}-{secrets.token_hex(3)}" for index in range(3)]
    labels = {"corebase.managed": "true", "corebase.owner": "pooled"}
    try:
        for name in names[:2]:
            await runtime.ensure_network(name, labels)
        subnets = []
        for name in names[:2]:
            (network,) = await named_networks(docker, name)
            subnets.append(ipaddress.IPv4Network(network["IPAM"]["Config"][0]["Subnet"]))
        assert sorted(subnets) == list(base.subnets(new_prefix=29))

        with pytest.raises(EngineError, match="networks.subnet_pool"):
            await runtime.ensure_network(names[2], labels)
        assert await named_networks(docker, names[2]) == []
    finally:
        await runtime.close()
        for name in names:
            for network in await named_networks(docker, name):
                await DockerNetwork(docker, network["Id"]).delete()
