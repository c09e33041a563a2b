"""Monitoring on the real engine: samples, history, totals, live events and followed logs."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from datetime import datetime

import aiodocker
import httpx
import pytest
import websockets

from api_support import remove_server_containers, server_fixture, start_body
from events_support import collect, event_socket, next_message, subscribe
from support.proxy import EngineProxy
from support.server import RunningServer, run_server

pytestmark = pytest.mark.engine

MONITOR_ENV = {"COREBASE_MONITORING_INTERVAL": "1"}
BURNER = ["sh", "-c", "while :; do :; done"]
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def monitored(tmp_path_factory, docker_available) -> RunningServer:
    yield from server_fixture(tmp_path_factory, MONITOR_ENV)


@pytest.fixture
async def api(monitored) -> httpx.AsyncClient:
    async with monitored.async_client() as client:
        yield client


async def start(client: httpx.AsyncClient, image: str, **fields) -> dict:
    response = await client.post("/api/runtime/start", json=start_body(image, **fields))
    assert response.status_code == 201, response.text
    return response.json()


async def remove(client: httpx.AsyncClient, container_id: str) -> None:
    await client.post("/api/runtime/remove", json={"containerId": container_id, "force": True})


async def sample_after(client: httpx.AsyncClient, container_id: str, moment: float, limit: float = 30.0) -> dict:
    """The first stored sample read after `moment` (Unix seconds) with a CPU figure."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        response = await client.get("/api/runtime/stats", params={"containerId": container_id})
        assert response.status_code == 200, response.text
        record = response.json()
        read_at = datetime.fromisoformat(record["readAt"].replace("Z", "+00:00")).timestamp()
        if record["source"] == "sample" and read_at > moment and record["cpuPercent"] is not None:
            return record
        await asyncio.sleep(0.3)
    raise AssertionError(f"no sample of {container_id} after {moment}")


async def test_cpu_bound_container_reads_near_its_limit(api, test_image):
    record = await start(api, test_image, command=BURNER, cpus=0.5)
    try:
        readings = []
        moment = time.time()
        for _ in range(3):
            sample = await sample_after(api, record["id"], moment)
            moment = datetime.fromisoformat(sample["readAt"].replace("Z", "+00:00")).timestamp()
            readings.append(sample["cpuPercent"])
        # 0.5 CPU is 50 percent of one CPU; the scheduler's quota keeps it close to that.
        assert all(35 <= reading <= 60 for reading in readings), readings
    finally:
        await remove(api, record["id"])


async def test_new_container_stats_have_cpu(api, test_image):
    record = await start(api, test_image, command=BURNER, cpus=0.5)
    sources = set()
    try:
        # The collector's first sample of the container, which has no CPU percent, lands within
        # these reads. A live reading replaces it until a sample with a percent is stored.
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            response = await api.get("/api/runtime/stats", params={"containerId": record["id"]})
            assert response.status_code == 200, response.text
            assert response.json()["cpuPercent"] is not None, response.json()
            sources.add(response.json()["source"])
    finally:
        await remove(api, record["id"])
    assert "sample" in sources


async def test_memory_counts_tmpfs_but_not_page_cache(api, test_image):
    record = await start(api, test_image, command=["sleep", "600"], memory="256m")
    container_id = record["id"]

    async def exec_and_read(command: str) -> int:
        result = await api.post("/api/runtime/exec", json={"containerId": container_id, "command": ["sh", "-c", command]})
        assert result.json()["exitCode"] == 0, result.text
        return (await sample_after(api, container_id, time.time()))["memoryBytes"]

    try:
        baseline = (await sample_after(api, container_id, 0))["memoryBytes"]
        # 100 MiB written to the container's filesystem lands in the page cache, which the kernel can reclaim.
        with_cache = await exec_and_read("dd if=/dev/zero of=/cache-file bs=1M count=100 && sync")
        assert with_cache < baseline + 20 * MiB, (baseline, with_cache)
        # 50 MiB in tmpfs stays in the container's memory until the file is deleted.
        with_tmpfs = await exec_and_read("dd if=/dev/zero of=/dev/shm/held bs=1M count=50")
        assert with_tmpfs >= baseline + 45 * MiB, (baseline, with_tmpfs)
    finally:
        await remove(api, container_id)


async def test_history_steps_and_totals(api, test_image):
    project = "proj-" + secrets.token_hex(4)
    record = await start(api, test_image, command=BURNER, cpus=0.25, projectId=project)
    container_id = record["id"]
    try:
        await sample_after(api, container_id, time.time() + 3)

        history = (await api.get("/api/runtime/stats", params={"containerId": container_id, "step": 1})).json()
        assert history["resolution"] == 0
        assert history["step"] == 1
        busy = [point for point in history["points"] if point["cpuPercent"] is not None]
        assert len(busy) >= 2, history["points"]
        assert all(point["cpuPercentMax"] >= point["cpuPercent"] for point in busy)

        coarse = (await api.get("/api/runtime/stats", params={"containerId": container_id, "step": 3600})).json()
        assert len(coarse["points"]) <= 2
        assert sum(point["samples"] for point in coarse["points"]) >= sum(point["samples"] for point in history["points"])

        totals = (await api.get("/api/runtime/stats/totals", params={"groupBy": "project"})).json()
        mine = [group for group in totals["groups"] if group["key"] == project]
        assert len(mine) == 1
        assert mine[0]["containers"] == 1
        assert mine[0]["memoryBytes"] > 0
        owners = (await api.get("/api/runtime/stats/totals", params={"groupBy": "owner"})).json()
        assert any(group["key"] == "admin" and group["containers"] >= 1 for group in owners["groups"])
        unknown = await api.get("/api/runtime/stats/totals", params={"groupBy": "planet"})
        assert unknown.status_code == 400
        assert unknown.json()["field"] == "groupBy"
    finally:
        await remove(api, container_id)


# A malformed value is a 400; well-formed values that select no history are a 422.
@pytest.mark.parametrize(
    "params, field, status",
    [
        ({"from": "yesterday"}, "from", 400),
        ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "to", 422),
        ({"from": "0", "to": "100000000", "step": "1"}, "step", 422),
        ({"step": "0"}, "step", 400),
        ({"step": "5.5"}, "step", 400),
        ({"step": "9999999"}, "step", 422),
        ({"from": "nan"}, "from", 400),
        ({"to": "inf"}, "to", 400),
        ({"from": "-99999999999999"}, "from", 400),
        ({"to": "1e20"}, "to", 400),
        ({"to": "2026-02-30T00:00:00Z"}, "to", 422),
    ],
)
async def test_bad_history_queries_name_the_field(api, test_image, params, field, status):
    record = await start(api, test_image, command=["sleep", "600"])
    try:
        response = await api.get("/api/runtime/stats", params={"containerId": record["id"], **params})
        assert response.status_code == status, response.text
        assert response.json()["field"] == field
        if params.get("step") == "1" and status == 422:
            assert response.json()["detail"].startswith("step 1 gives more than"), response.text
            assert "the smallest step allowed is 10000" in response.json()["detail"], response.text
    finally:
        await remove(api, record["id"])


async def test_stopped_container_answers_at_once_and_keeps_history(api, test_image):
    record = await start(api, test_image, command=["sleep", "600"])
    container_id = record["id"]
    try:
        await sample_after(api, container_id, 0)
        await api.post("/api/runtime/stop", json={"containerId": container_id, "timeout": 0})

        started = time.monotonic()
        response = await api.get("/api/runtime/stats", params={"containerId": container_id})
        assert response.status_code == 409
        assert "history" in response.json()["detail"]
        assert time.monotonic() - started < 10

        history = await api.get("/api/runtime/stats", params={"containerId": container_id, "step": 1})
        assert history.status_code == 200
        assert history.json()["points"]
    finally:
        await remove(api, container_id)


async def test_lifecycle_events_reach_a_websocket_client(monitored, api, test_image):
    project = "proj-" + secrets.token_hex(4)
    other_project = "proj-" + secrets.token_hex(4)
    # Repeated and comma-separated values combine.
    query = f"types=container.created,container.started&types=container.died&types=container.removed&projectId={project}"
    async with event_socket(monitored, query) as socket:
        other = await start(api, test_image, command=["true"], projectId=other_project)
        record = await start(api, test_image, command=["sh", "-c", "sleep 1; exit 3"], projectId=project)
        container_id = record["id"]

        created = await next_message(socket, lambda message: message["type"] == "container.created")
        assert created["containerId"] == container_id
        assert created["projectId"] == project
        await next_message(socket, lambda message: message["type"] == "container.started")
        died = await next_message(socket, lambda message: message["type"] == "container.died")
        assert died["data"]["exitCode"] == 3
        assert died["data"]["oomKilled"] is False
        assert died["data"]["requested"] is False

        await remove(api, container_id)
        removed = await next_message(socket, lambda message: message["type"] == "container.removed")
        assert removed["containerId"] == container_id
        await remove(api, other["id"])
        assert all(message.get("projectId") != other_project for message in await collect(socket, 1.5))


async def test_stop_request_is_marked_as_requested(monitored, api, test_image):
    record = await start(api, test_image, command=["sleep", "600"])
    async with event_socket(monitored, f"types=container.died&containerId={record['id']}") as socket:
        await api.post("/api/runtime/stop", json={"containerId": record["id"], "timeout": 1})
        died = await next_message(socket, lambda message: message["type"] == "container.died")
        assert died["data"]["requested"] is True
    await remove(api, record["id"])


async def test_container_killed_for_memory_produces_the_event(monitored, api, test_image):
    project = "proj-" + secrets.token_hex(4)
    async with event_socket(monitored, f"types=container&projectId={project}") as socket:
        record = await start(api, test_image, command=["tail", "/dev/zero"], memory="8m", projectId=project)
        oom = await next_message(socket, lambda message: message["type"] == "container.oom")
        died = await next_message(socket, lambda message: message["type"] == "container.died")
        assert oom["containerId"] == died["containerId"] == record["id"]
        assert died["data"]["oomKilled"] is True
        assert died["data"]["exitCode"] == 137

    record = (await api.get(f"/api/runtime/containers/{record['id']}")).json()
    assert record["oomKilled"] is True
    await remove(api, record["id"])


async def test_metric_samples_need_a_container_filter(monitored, api, test_image):
    record = await start(api, test_image, command=["sleep", "600"])
    try:
        async with event_socket(monitored, "types=metric") as unnamed:
            async with event_socket(monitored, f"types=metric&containerId={record['id']}") as named:
                sample = await next_message(named, lambda message: message["type"] == "metric.sample")
                assert sample["containerId"] == record["id"]
                assert sample["data"]["memoryBytes"] > 0
            assert [message for message in await collect(unnamed, 1.5) if message["type"] == "metric.sample"] == []

            answer = await subscribe(unnamed, types=["metric.sample"], containerIds=[record["id"]])
            assert answer["type"] == "subscribed"
            await next_message(unnamed, lambda message: message["type"] == "metric.sample")
    finally:
        await remove(api, record["id"])


async def test_bad_filters_are_refused_with_the_field(monitored):
    url = monitored.base_url.replace("http://", "ws://") + "/api/events?types=container.exploded"
    headers = {"Authorization": f"Bearer {monitored.admin_key}"}
    async with websockets.connect(url, additional_headers=headers) as socket:
        error = json.loads(await socket.recv())
        assert error["type"] == "error"
        assert error["field"] == "types"
        assert "container.started" in error["detail"]
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await socket.recv()
        assert closed.value.rcvd.code == 4400

    async with event_socket(monitored) as socket:
        answer = await subscribe(socket, types=["nope"])
        assert answer["type"] == "error"
        assert answer["field"] == "types"
        answer = await subscribe(socket, containerIds=[5])
        assert answer["type"] == "error"
        assert answer["field"] == "containerIds"
        await socket.send("not json")
        answer = await next_message(socket, lambda message: message["type"] == "error")
        assert "JSON" in answer["detail"]


async def test_events_need_an_api_key(monitored):
    url = monitored.base_url.replace("http://", "ws://") + "/api/events"
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url):
            pass
    assert refused.value.response.status_code in (401, 403)


async def test_logs_follow_over_websocket(monitored, api, test_image):
    script = "echo 'first line'; printf 'caf\\303\\251 \\342\\202\\254\\n'; echo 'to stderr' >&2; sleep 1; echo last"
    record = await start(api, test_image, command=["sh", "-c", script])
    url = monitored.base_url.replace("http://", "ws://") + f"/api/runtime/logs/ws?containerId={record['id']}"
    headers = {"Authorization": f"Bearer {monitored.admin_key}"}
    messages = []
    async with websockets.connect(url, additional_headers=headers) as socket:
        async for raw in socket:
            messages.append(json.loads(raw))
    assert messages[-1] == {"type": "end"}
    stdout = "".join(message["data"] for message in messages if message.get("stream") == "stdout")
    stderr = "".join(message["data"] for message in messages if message.get("stream") == "stderr")
    assert stdout == "first line\ncafé €\nlast\n"
    assert stderr == "to stderr\n"
    await remove(api, record["id"])

    missing = monitored.base_url.replace("http://", "ws://") + "/api/runtime/logs/ws?containerId=ctr_0000000000000000"
    async with websockets.connect(missing, additional_headers=headers) as socket:
        error = json.loads(await socket.recv())
        assert error["status"] == 404
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await socket.recv()
        assert closed.value.rcvd.code == 4404


async def test_engine_stream_resumes_after_a_drop_without_duplicates(tmp_path, docker_available, test_image):
    """Events that happen while the connection to the engine is cut arrive once it is back, each once."""
    proxy = EngineProxy(tmp_path / "engine.sock").start()
    data_dir = tmp_path / "data"
    try:
        with run_server(data_dir, env={**MONITOR_ENV, "COREBASE_DOCKER_URL": proxy.url, "COREBASE_EVENTS_RECONNECT_DELAY": "0.5"}) as server:
            async with server.async_client() as client, event_socket(server, "types=container") as socket:
                record = await start(client, test_image, command=["sleep", "600"])
                await next_message(socket, lambda message: message["type"] == "container.started")

                proxy.refuse()
                docker = aiodocker.Docker()
                try:
                    # Stopped behind CoreBase's back while its event stream is down.
                    await docker.containers.container(record["dockerId"]).stop(t=0)
                finally:
                    await docker.close()
                await asyncio.sleep(2)
                proxy.accept()

                messages = await collect(socket, 6)
                types = [message["type"] for message in messages if message.get("containerId") == record["id"]]
                assert types.count("container.died") == 1, types
                assert types.count("container.stopped") == 1, types
                assert "container.started" not in types, types
                assert "container.created" not in types, types
                status = (await client.get("/api/monitoring")).json()
                assert status["engineEventsReconnects"] >= 1 and status["engineEventsConnected"] is True
                await client.post("/api/runtime/remove", json={"containerId": record["id"], "force": True})
    finally:
        proxy.stop()
        await remove_server_containers(data_dir)


async def developer_key(server: RunningServer, user: str) -> str:
    """Store a developer key for `user` in the server's SQLite database, as an admin tool would."""
    from corebase import db
    from corebase.auth.keys import create_key
    from corebase.settings import load_settings

    settings = load_settings(environ={}, overrides={"server": {"data_dir": str(server.data_dir)}})
    engine = await db.connect(settings)
    try:
        _, secret = await create_key(f"{user}-key", user, "developer")
    finally:
        await db.disconnect(engine)
    return secret


async def test_non_admins_see_only_their_own_events(monitored, api, test_image):
    alice_key = await developer_key(monitored, "alice")
    project = "proj-" + secrets.token_hex(4)
    async with monitored.async_client(alice_key) as alice:
        async with event_socket(monitored, f"types=container.started&projectId={project}", key=alice_key) as alice_socket:
            async with event_socket(monitored, f"types=container.started&projectId={project}") as admin_socket:
                theirs = await start(api, test_image, command=["sleep", "600"], projectId=project)
                mine = await start(alice, test_image, command=["sleep", "600"], projectId=project)

                seen_by_alice = await next_message(alice_socket, lambda message: message["type"] == "container.started")
                assert seen_by_alice["containerId"] == mine["id"]
                seen_by_admin = {
                    (await next_message(admin_socket, lambda message: message["type"] == "container.started"))["containerId"]
                    for _ in range(2)
                }
                assert seen_by_admin == {mine["id"], theirs["id"]}

        await remove(alice, mine["id"])
    await remove(api, theirs["id"])


async def test_health_changes_become_events(monitored, api, test_image):
    template = {
        "name": "cbtest-health-" + secrets.token_hex(4),
        "image": test_image,
        "category": "runtime",
        "description": "a container that turns unhealthy when /healthy is removed",
        "command": ["sh", "-c", "touch /healthy; exec sleep 600"],
        "healthcheck": {"test": ["test", "-e", "/healthy"], "interval": 0.5, "retries": 1},
    }
    created = await api.post("/api/runtime/templates", json=template)
    assert created.status_code == 201, created.text
    project = "proj-" + secrets.token_hex(4)
    body = start_body(test_image, template=template["name"], projectId=project)
    body.pop("image")
    record = None
    try:
        async with event_socket(monitored, f"types=container.health&projectId={project}") as socket:
            response = await api.post("/api/runtime/start", json=body)
            assert response.status_code == 201, response.text
            record = response.json()
            healthy = await next_message(socket, lambda message: message["data"]["status"] == "healthy")
            assert healthy["containerId"] == record["id"]
            assert healthy["template"] == template["name"]
            await api.post("/api/runtime/exec", json={"containerId": record["id"], "command": ["rm", "/healthy"]})
            await next_message(socket, lambda message: message["data"]["status"] == "unhealthy")
    finally:
        if record is not None:
            await remove(api, record["id"])
        await api.delete(f"/api/runtime/templates/{template['name']}")
