"""The container API end to end: a real server process, the real engine, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import aiodocker
import httpx
import pytest

from api_support import (
    postgres_server,
    server_fixture,
    start_body,
    wait_until_ended,
)
from support.server import RunningServer

pytestmark = pytest.mark.engine

SERVER_ENV = {"COREBASE_EXEC_MAX_OUTPUT": "64k", "COREBASE_STATS_SAMPLE_INTERVAL": "0.2"}
# stdout and stderr are separate pipes, so the pause keeps their order in the log predictable.
SLEEPER = ["sh", "-c", "echo ready; sleep 0.2; echo oops >&2; exec sleep 600"]


@pytest.fixture(scope="session")
def sqlite_server(tmp_path_factory, docker_available) -> RunningServer:
    yield from server_fixture(tmp_path_factory, SERVER_ENV)


@pytest.fixture(scope="session")
async def pg_server(tmp_path_factory, docker_available, postgres_url) -> RunningServer:
    async for server in postgres_server(tmp_path_factory, postgres_url, SERVER_ENV):
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def server(request) -> RunningServer:
    return request.getfixturevalue("sqlite_server" if request.param == "sqlite" else "pg_server")


@pytest.fixture
async def api(sqlite_server) -> httpx.AsyncClient:
    async with sqlite_server.async_client() as client:
        yield client



async def start(client: httpx.AsyncClient, image: str, **fields) -> dict:
    response = await client.post("/api/runtime/start", json=start_body(image, **fields))
    assert response.status_code == 201, response.text
    return response.json()


async def test_session_on_each_database(server, test_image, docker):
    async with server.async_client() as client:
        record = await start(client, test_image, command=SLEEPER, projectId="proj-a", ports={"8080": None})
        container_id = record["id"]
        assert container_id.startswith("ctr_")
        assert record["status"] == "running"
        assert record["projectId"] == "proj-a"
        assert record["owner"] == "admin"
        assert record["resources"] == {"memory": 512 * 1024**2, "cpus": 1.0, "pidsLimit": 512}
        assert record["ports"][0]["containerPort"] == 8080
        assert record["ports"][0]["hostIp"] == "127.0.0.1"
        assert record["ports"][0]["hostPort"] > 0
        assert record["startedAt"] is not None

        engine_view = await docker.containers.get(record["dockerId"])
        labels = engine_view["Config"]["Labels"]
        assert labels["corebase.id"] == container_id
        assert labels["corebase.managed"] == "true"
        assert labels["corebase.owner"] == "admin"

        listed = (await client.get("/api/runtime/containers", params={"projectId": "proj-a"})).json()
        assert container_id in [item["id"] for item in listed["items"]]
        other = (await client.get("/api/runtime/containers", params={"projectId": "nobody"})).json()
        assert other["items"] == []
        assert other["total"] == 0

        fetched = (await client.get(f"/api/runtime/containers/{container_id}")).json()
        assert fetched["dockerId"] == record["dockerId"]

        executed = (
            await client.post(
                "/api/runtime/exec",
                json={"containerId": container_id, "command": ["sh", "-c", "echo out; echo err >&2; exit 3"]},
            )
        ).json()
        assert executed["exitCode"] == 3
        assert executed["stdout"] == "out\n"
        assert executed["stderr"] == "err\n"
        assert executed["truncated"] is False

        await asyncio.sleep(0.3)
        logs = await client.get("/api/runtime/logs", params={"containerId": container_id})
        assert logs.status_code == 200
        assert logs.text == "ready\noops\n"

        stats = (await client.get("/api/runtime/stats", params={"containerId": container_id})).json()
        assert stats["memoryBytes"] > 0
        assert stats["pids"] >= 1

        stopped = (await client.post("/api/runtime/stop", json={"containerId": container_id, "timeout": 1})).json()
        assert stopped["status"] == "exited"
        assert stopped["exitCode"] == 137 or stopped["exitCode"] == 143
        assert stopped["oomKilled"] is False

        restarted = (await client.post("/api/runtime/restart", json={"containerId": container_id})).json()
        assert restarted["status"] == "running"
        assert restarted["exitCode"] is None

        removed = (await client.post("/api/runtime/remove", json={"containerId": container_id, "force": True})).json()
        assert removed["status"] == "removed"
        with pytest.raises(aiodocker.DockerError):
            await docker.containers.get(record["dockerId"])

        listed = (await client.get("/api/runtime/containers")).json()
        assert container_id not in [item["id"] for item in listed["items"]]
        history = (await client.get(f"/api/runtime/containers/{container_id}")).json()
        assert history["status"] == "removed"


async def test_name_can_address_a_container(api, test_image):
    record = await start(api, test_image, command=SLEEPER, name="cbtest-by-name-" + str(time.time_ns()))
    response = await api.post("/api/runtime/exec", json={"containerId": record["name"], "command": ["true"]})
    assert response.json()["exitCode"] == 0
    await api.post("/api/runtime/remove", json={"containerId": record["id"], "force": True})


async def test_hardened_defaults_on_the_engine(api, test_image, docker):
    record = await start(api, test_image, command=SLEEPER, ports={"80": 0})
    host = (await docker.containers.get(record["dockerId"]))["HostConfig"]
    assert host["Memory"] == 512 * 1024**2
    assert host["MemorySwap"] == 512 * 1024**2
    assert host["NanoCpus"] == 1_000_000_000
    assert host["PidsLimit"] == 512
    assert host["CapDrop"] == ["ALL"]
    assert sorted(host["CapAdd"]) == sorted(
        ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "NET_BIND_SERVICE", "SETGID", "SETUID"]
    )
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["Privileged"] is False
    assert host["PortBindings"]["80/tcp"][0]["HostIp"] == "127.0.0.1"

    # The process really runs without the dropped capabilities: NET_RAW is gone.
    status = await api.post(
        "/api/runtime/exec", json={"containerId": record["id"], "command": ["sh", "-c", "grep CapEff /proc/self/status"]}
    )
    effective = int(status.json()["stdout"].split()[1], 16)
    net_raw = 1 << 13
    assert effective & net_raw == 0
    await api.post("/api/runtime/remove", json={"containerId": record["id"], "force": True})


async def test_requested_limits_reach_the_engine(api, test_image, docker):
    record = await start(api, test_image, command=SLEEPER, memory="64m", cpus=0.5)
    host = (await docker.containers.get(record["dockerId"]))["HostConfig"]
    assert host["Memory"] == 64 * 1024**2
    assert host["NanoCpus"] == 500_000_000
    assert record["resources"]["memory"] == 64 * 1024**2
    assert record["resources"]["cpus"] == 0.5
    await api.post("/api/runtime/remove", json={"containerId": record["id"], "force": True})


async def test_exec_edge_cases(api, test_image):
    record = await start(api, test_image, command=SLEEPER)
    container_id = record["id"]

    missing = (await api.post("/api/runtime/exec", json={"containerId": container_id, "command": ["no-such-tool"]})).json()
    assert missing["exitCode"] not in (0, None)
    assert "no-such-tool" in missing["stderr"]

    big = (
        await api.post(
            "/api/runtime/exec",
            json={"containerId": container_id, "command": ["sh", "-c", "head -c 200000 /dev/zero | tr '\\0' x"]},
        )
    ).json()
    assert big["truncated"] is True
    assert big["exitCode"] == 0
    assert len(big["stdout"]) == 64 * 1024

    slow = (
        await api.post("/api/runtime/exec", json={"containerId": container_id, "command": ["sleep", "30"], "timeout": 1})
    ).json()
    assert slow["timedOut"] is True
    assert slow["exitCode"] is None

    env = (
        await api.post(
            "/api/runtime/exec",
            json={"containerId": container_id, "command": ["sh", "-c", "echo $GREETING; pwd"], "env": {"GREETING": "hi"}, "workdir": "/bin"},
        )
    ).json()
    assert env["stdout"] == "hi\n/bin\n"

    too_long = await api.post(
        "/api/runtime/exec", json={"containerId": container_id, "command": ["true"], "timeout": 999999}
    )
    assert too_long.status_code == 422
    assert too_long.json()["field"] == "timeout"
    await api.post("/api/runtime/remove", json={"containerId": container_id, "force": True})


async def test_logs_options_and_tty(api, test_image):
    plain = await start(
        api, test_image, command=["sh", "-c", "printf 'a\\nb\\n'; sleep 0.2; printf 'e1\\n' >&2; sleep 0.2; printf 'c\\xc3\\xa9\\n'"]
    )
    tty = await start(api, test_image, command=["sh", "-c", "printf 'tty-line\\n'"], tty=True)
    await asyncio.sleep(1.0)

    async def logs(container_id, **params):
        response = await api.get("/api/runtime/logs", params={"containerId": container_id, **params})
        assert response.status_code == 200, response.text
        return response

    assert (await logs(plain["id"])).text == "a\nb\ne1\ncé\n"
    assert (await logs(plain["id"], stderr="false")).text == "a\nb\ncé\n"
    assert (await logs(plain["id"], stdout="false")).text == "e1\n"
    assert (await logs(plain["id"], tail="1")).text.endswith("cé\n")
    stamped = (await logs(plain["id"], timestamps="true")).text.splitlines()
    assert stamped[0].endswith(" a")
    assert stamped[0][:4].isdigit()
    lines = (await logs(plain["id"], format="ndjson")).text.splitlines()
    assert '{"stream":"stderr","text":"e1\\n"}' in lines
    # With a TTY the engine turns "\n" into "\r\n"; CoreBase passes the bytes through unchanged.
    assert (await logs(tty["id"])).text == "tty-line\r\n"

    bad_tail = await api.get("/api/runtime/logs", params={"containerId": plain["id"], "tail": "ten"})
    assert bad_tail.status_code == 400
    assert bad_tail.json()["field"] == "tail"
    bad_since = await api.get("/api/runtime/logs", params={"containerId": plain["id"], "since": "yesterday"})
    assert bad_since.json()["field"] == "since"
    for value in ("nan", "-inf", "1e300"):
        out_of_range = await api.get("/api/runtime/logs", params={"containerId": plain["id"], "until": value})
        assert out_of_range.status_code == 400, value
        assert out_of_range.json()["field"] == "until"
    for record in (plain, tty):
        await api.post("/api/runtime/remove", json={"containerId": record["id"], "force": True})


async def test_logs_follow_streams_until_exit(api, test_image):
    record = await start(
        api, test_image, command=["sh", "-c", "for i in 1 2 3; do echo line-$i; sleep 0.5; done"]
    )
    received = []
    started = time.monotonic()
    async with api.stream(
        "GET", "/api/runtime/logs", params={"containerId": record["id"], "follow": "true"}
    ) as response:
        assert response.status_code == 200
        async for chunk in response.aiter_text():
            received.append((time.monotonic() - started, chunk))
    text = "".join(chunk for _, chunk in received)
    assert text == "line-1\nline-2\nline-3\n"
    # The stream delivered output as it was written, not all at the end.
    assert len(received) >= 2
    final = (await api.get(f"/api/runtime/containers/{record['id']}")).json()
    assert final["status"] == "exited"
    assert final["exitCode"] == 0
    await api.post("/api/runtime/remove", json={"containerId": record["id"]})


async def test_stats_computes_cpu_from_two_readings(api, test_image):
    record = await start(api, test_image, command=["sh", "-c", "while :; do :; done"], cpus=0.5)
    first = (await api.get("/api/runtime/stats", params={"containerId": record["id"]})).json()
    second = (await api.get("/api/runtime/stats", params={"containerId": record["id"]})).json()
    for reading in (first, second):
        assert reading["cpuPercent"] is not None
        # A reading from the collector's stored sample has no onlineCpus, so the ceiling is checked below.
        assert reading["cpuPercent"] >= 0
        assert reading["memoryLimitBytes"] == 512 * 1024**2
        assert 0 < reading["memoryPercent"] < 100
    # A busy loop limited to half a CPU reads at most about 50 percent of one CPU. How close it comes
    # depends on what else the machine runs, so the lower bound only checks that it is busy.
    assert second["cpuPercent"] > 0
    assert second["cpuPercent"] <= 75
    await api.post("/api/runtime/remove", json={"containerId": record["id"], "force": True})


async def test_exit_information(api, test_image):
    # PID 1 ignores SIGKILL sent from inside its namespace, so a child shell kills itself and
    # PID 1 exits with the child's status, 137, without any memory pressure.
    killed = await start(api, test_image, command=["sh", "-c", "sh -c 'kill -9 $$'; exit $?"])
    oom = await start(
        api, test_image, memory="8m", command=["sh", "-c", "head -c 100000000 /dev/zero | tail > /dev/null"]
    )
    clean = await start(api, test_image, command=["sh", "-c", "exit 7"])

    killed_state = await wait_until_ended(api, killed["id"])
    assert killed_state["status"] == "exited"
    assert killed_state["exitCode"] == 137
    assert killed_state["oomKilled"] is False

    oom_state = await wait_until_ended(api, oom["id"])
    assert oom_state["status"] == "exited"
    assert oom_state["oomKilled"] is True

    clean_state = await wait_until_ended(api, clean["id"])
    assert clean_state["exitCode"] == 7
    assert clean_state["finishedAt"] is not None
    for record in (killed, oom, clean):
        await api.post("/api/runtime/remove", json={"containerId": record["id"]})


async def test_stop_grace_beyond_engine_timeout(tmp_path_factory, test_image):
    # The engine call timeout is 2 s here; a 4 s grace period must still complete, with SIGKILL at the end.
    for server in server_fixture(tmp_path_factory, {"COREBASE_DOCKER_TIMEOUT": "2"}):
        async with server.async_client() as client:
            record = await start(client, test_image, command=["sh", "-c", "trap '' TERM; while :; do sleep 1; done"])
            began = time.monotonic()
            response = await client.post("/api/runtime/stop", json={"containerId": record["id"], "timeout": 4})
            elapsed = time.monotonic() - began
            assert response.status_code == 200, response.text
            assert elapsed >= 3.5
            assert response.json()["exitCode"] == 137
            assert response.json()["oomKilled"] is False
            await client.post("/api/runtime/remove", json={"containerId": record["id"]})
