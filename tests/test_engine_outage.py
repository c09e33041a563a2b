"""Engine outages, graceful shutdown and the request body limit, on real servers and the real engine.

The outage tests point a server at an EngineProxy and cut, refuse or stall it while several
clients start containers, read stats and logs and run execs. Every response must be a 503 or a
sensible 2xx or 4xx, and arrive quickly. The rest of the API keeps serving, and once the proxy
accepts again, starts, engine events, collected samples and pool refills work without a restart.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import aiodocker
import httpx
import pytest

from api_support import RUN_ID, RUN_LABEL, remove_containers, remove_server_containers, start_body
from corebase.errors import EngineTimeout, EngineUnavailable
from corebase.runtime.guard import EngineGuard
from corebase.runtime.types import LogOptions
from corebase_docker import DockerRuntime
from events_support import event_socket, next_message
from support.images import TEST_LABEL
from support.proxy import EngineProxy
from support.server import RunningServer, run_server

pytestmark = pytest.mark.engine

OUTAGE_ENV = {
    "COREBASE_DOCKER_PROBE_INTERVAL": "0.5",
    "COREBASE_DOCKER_PROBE_TIMEOUT": "2",
    "COREBASE_MONITORING_INTERVAL": "1",
    "COREBASE_EVENTS_RECONNECT_DELAY": "0.5",
    "COREBASE_POOL_INTERVAL": "0.5",
}
# Hang detector for one response during an outage. Without the guard, a request to a hung engine
# waits for docker.timeout (30 s by default). With it, a probe gives up after 2 s here.
ANSWER_LIMIT = 20.0
# Bound for each recovery step (health, events, samples, pool refill) after the proxy accepts again.
RECOVERY_LIMIT = 60.0
LOAD_SECONDS = 4.0
CLIENTS = 6
# Start attempts per client during an outage. A cut lets some of them through, and each creates a container.
MAX_STARTS = 2
# Statuses a request may get during an outage besides 503: it ran before or between failures (2xx),
# or the engine lost track of a container while its connection was cut (404, 409).
ACCEPTED_STATUSES = {200, 201, 404, 409, 503}


@dataclass
class OutageServer:
    server: RunningServer
    proxy: EngineProxy
    template: str


@dataclass
class Outcome:
    operation: str
    seconds: float
    status: int | None = None
    body: dict | None = None
    retry_after: str | None = None
    error: str | None = None


@pytest.fixture(scope="module")
async def outage(tmp_path_factory, docker_available, test_image) -> OutageServer:
    """A server whose engine connection runs through a proxy, with a custom template that has a pool."""
    directory = tmp_path_factory.mktemp("outage")
    proxy = EngineProxy(directory / "engine.sock").start()
    template = "cboutage-" + secrets.token_hex(4)
    try:
        with run_server(directory / "data", env={**OUTAGE_ENV, "COREBASE_DOCKER_URL": proxy.url}) as server:
            async with server.async_client() as client:
                body = {"name": template, "image": test_image, "command": ["sleep", "600"], "memory": "32m", "cpus": 0.25}
                created = await client.post("/api/runtime/templates", json=body)
                assert created.status_code == 201, created.text
                pool = {"minIdle": 1, "maxIdle": 1, "maxTotal": 2, "idleTtl": 600}
                configured = await client.put(f"/api/runtime/pools/{template}", json=pool)
                assert configured.status_code == 200, configured.text
            yield OutageServer(server, proxy, template)
    finally:
        proxy.accept()
        proxy.stop()
        await remove_server_containers(directory / "data")
        # Pool members whose rows went away while their create response was cut carry only CoreBase's labels.
        await remove_containers(f"corebase.template={template}")


async def wait_for(check: Callable[[], Awaitable[bool]], description: str, limit: float = RECOVERY_LIMIT) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit:g} s waiting for {description}")
        await asyncio.sleep(0.2)


async def engine_healthy(client: httpx.AsyncClient) -> bool:
    return (await client.get("/health")).status_code == 200


async def engine_down(client: httpx.AsyncClient) -> bool:
    return not await engine_healthy(client)


async def pool_has_idle(client: httpx.AsyncClient, template: str) -> bool:
    response = await client.get(f"/api/runtime/pools/{template}")
    assert response.status_code == 200, response.text
    return response.json()["idle"] >= 1


async def start(client: httpx.AsyncClient, image: str, **fields) -> dict:
    response = await client.post("/api/runtime/start", json=start_body(image, **fields))
    assert response.status_code == 201, response.text
    return response.json()


async def timed(operation: str, request: Awaitable[httpx.Response]) -> Outcome:
    began = time.monotonic()
    try:
        response = await request
    except httpx.HTTPError as exc:
        return Outcome(operation, time.monotonic() - began, error=f"{type(exc).__name__}: {exc}")
    body = response.json() if response.headers.get("content-type", "").startswith("application/problem+json") else None
    return Outcome(operation, time.monotonic() - began, response.status_code, body, response.headers.get("retry-after"))


async def load(client: httpx.AsyncClient, image: str, container_id: str, until: float) -> list[Outcome]:
    """Cycle through start, stats, logs and exec until `until` (monotonic), recording every response."""
    outcomes = []
    starts = 0
    operations = ["stats", "logs", "exec", "start"]
    index = secrets.randbelow(len(operations))
    while time.monotonic() < until:
        operation = operations[index % len(operations)]
        index += 1
        if operation == "start":
            if starts >= MAX_STARTS:
                continue
            starts += 1
            request = client.post("/api/runtime/start", json=start_body(image, command=["sleep", "600"]))
        elif operation == "stats":
            request = client.get("/api/runtime/stats", params={"containerId": container_id})
        elif operation == "logs":
            request = client.get("/api/runtime/logs", params={"containerId": container_id, "tail": "5"})
        else:
            request = client.post("/api/runtime/exec", json={"containerId": container_id, "command": ["echo", "hi"]})
        outcomes.append(await timed(operation, request))
        await asyncio.sleep(0.05)
    return outcomes


async def keep_cutting(proxy: EngineProxy, until: float) -> None:
    """Close every open engine connection a few times a second, so requests lose theirs mid-way."""
    while time.monotonic() < until:
        await asyncio.to_thread(proxy.cut)
        await asyncio.sleep(0.3)


def describe(outcomes: list[Outcome]) -> str:
    return str(Counter((outcome.operation, outcome.status or outcome.error) for outcome in outcomes))


async def check_serving_without_engine(client: httpx.AsyncClient, steady: dict, expect_down: bool) -> None:
    """Check that routes needing no engine respond as usual, and that /health names the engine as down."""
    health = await client.get("/health")
    if expect_down:
        assert health.status_code == 503
        assert health.json()["engine"]["ok"] is False
        assert health.json()["database"]["ok"] is True

    listed = await client.get("/api/runtime/containers")
    assert listed.status_code == 200, listed.text
    assert steady["id"] in [item["id"] for item in listed.json()["items"]]
    for path in ("/api/runtime/templates", "/api/users", "/api/audit", f"/api/runtime/containers/{steady['id']}"):
        response = await client.get(path)
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"


def check_outcomes(outcomes: list[Outcome], expect_503: bool) -> None:
    unexpected = [outcome for outcome in outcomes if outcome.status not in ACCEPTED_STATUSES]
    assert not unexpected, f"{unexpected[:5]} among {describe(outcomes)}"
    slow = [outcome for outcome in outcomes if outcome.seconds >= ANSWER_LIMIT]
    assert not slow, slow[:5]

    unavailable = [outcome for outcome in outcomes if outcome.status == 503]
    if expect_503:
        assert unavailable, describe(outcomes)
    for outcome in unavailable:
        assert outcome.body is not None, outcome
        assert outcome.body["type"].endswith("/engine-unavailable"), outcome.body
        assert outcome.body["dependency"] == "engine", outcome.body
        assert "docker" in outcome.body["detail"].lower(), outcome.body
        assert outcome.retry_after is not None, outcome
        assert int(outcome.retry_after) >= 1, outcome


async def sampled_after(client: httpx.AsyncClient, container_id: str, moment: float) -> bool:
    response = await client.get("/api/runtime/stats", params={"containerId": container_id})
    if response.status_code != 200:
        return False
    record = response.json()
    read_at = datetime.fromisoformat(record["readAt"].replace("Z", "+00:00")).timestamp()
    return record["source"] == "sample" and read_at > moment


@pytest.mark.parametrize("mode", ["cut", "refuse", "stall"])
async def test_outage_answers_503_then_recovers(outage: OutageServer, mode: str, test_image: str) -> None:
    server, proxy, template = outage.server, outage.proxy, outage.template
    async with server.async_client(timeout=ANSWER_LIMIT * 2) as client:
        await wait_for(lambda: engine_healthy(client), "the engine to be healthy before the outage")
        await wait_for(lambda: pool_has_idle(client, template), "the pool to fill before the outage")
        steady = await start(client, test_image, command=["sleep", "600"])

        async with event_socket(server, "types=container") as socket:
            # The claim makes the pool refill, and the outage below hits that refill.
            claimed = await client.post("/api/runtime/start", json={"template": template, "labels": {RUN_LABEL: RUN_ID}})
            assert claimed.status_code == 201, claimed.text
            assert claimed.json()["source"] == "pool"

            until = time.monotonic() + LOAD_SECONDS
            clients = asyncio.gather(*(load(client, test_image, steady["id"], until) for _ in range(CLIENTS)))
            # Requests are in flight when the engine goes away.
            await asyncio.sleep(0.5)
            try:
                if mode == "cut":
                    serving = check_serving_without_engine(client, steady, expect_down=False)
                    await asyncio.gather(keep_cutting(proxy, until), serving)
                else:
                    getattr(proxy, mode)()
                    await wait_for(lambda: engine_down(client), "health to report the engine down", ANSWER_LIMIT)
                    await check_serving_without_engine(client, steady, expect_down=True)
                results = await clients
            finally:
                proxy.accept()
            accepted_at = time.time()

            outcomes = [outcome for result in results for outcome in result]
            check_outcomes(outcomes, expect_503=mode != "cut")

            await wait_for(lambda: engine_healthy(client), "health to report the engine back")
            fresh = await start(client, test_image, command=["sleep", "600"])
            started = await next_message(
                socket,
                lambda message: message["type"] == "container.started" and message.get("containerId") == fresh["id"],
                RECOVERY_LIMIT,
            )
            assert started["containerId"] == fresh["id"]

        executed = await client.post("/api/runtime/exec", json={"containerId": steady["id"], "command": ["echo", "back"]})
        assert executed.status_code == 200, executed.text
        assert executed.json()["stdout"] == "back\n"
        await wait_for(lambda: sampled_after(client, steady["id"], accepted_at), "a sample stored after the outage")
        await wait_for(lambda: pool_has_idle(client, template), "the pool to refill after the outage")

        creating = await client.get("/api/runtime/containers", params={"status": "creating"})
        assert creating.json()["total"] == 0, creating.json()
        monitoring = (await client.get("/api/monitoring")).json()
        assert monitoring["engineEventsConnected"] is True

        for record in (steady, fresh, claimed.json()):
            await client.post("/api/runtime/remove", json={"containerId": record["id"], "force": True})


async def guard_available(guard: EngineGuard) -> bool:
    return guard.available


# --- the guard and engine call timeouts, on a runtime of their own --------------------------------


@pytest.fixture
def proxy(tmp_path, docker_available) -> EngineProxy:
    engine_proxy = EngineProxy(tmp_path / "engine.sock").start()
    try:
        yield engine_proxy
    finally:
        engine_proxy.accept()
        engine_proxy.stop()


@pytest.fixture
async def sleeper(docker: aiodocker.Docker, test_image: str) -> dict[str, str]:
    """A running test container that prints nothing, with a label of its own for event filters."""
    labels = {TEST_LABEL: "true", "cbtest.outage": secrets.token_hex(6)}
    config = {"Image": test_image, "Cmd": ["sleep", "600"], "Labels": labels}
    container = await docker.containers.run(config, name=f"cbtest-{labels['cbtest.outage']}")
    try:
        yield {"id": container.id, "label": labels["cbtest.outage"]}
    finally:
        await container.delete(force=True, v=True)


async def test_engine_calls_time_out_on_a_hung_engine(proxy: EngineProxy, sleeper: dict[str, str]) -> None:
    """Unary calls, exec, the event stream and followed logs give up after docker.timeout."""
    runtime = DockerRuntime(proxy.url, timeout=1)
    try:
        await runtime.ping()
        proxy.stall()
        calls = {
            "ping": lambda: runtime.ping(),
            "info": lambda: runtime.info(),
            "inspect": lambda: runtime.inspect(sleeper["id"]),
            "exec": lambda: runtime.exec(sleeper["id"], ["echo", "hi"], timeout=600),
            "events": lambda: anext(runtime.events({"cbtest.outage": sleeper["label"]})),
            "followed logs": lambda: anext(runtime.logs(sleeper["id"], LogOptions(follow=True, tail=0))),
        }
        for name, call in calls.items():
            with pytest.raises((EngineTimeout, EngineUnavailable)):
                # A TimeoutError from wait_for means the call hung, and fails the test.
                await asyncio.wait_for(call(), ANSWER_LIMIT)
    finally:
        await runtime.close()


async def test_guard_ends_streams_and_fails_fast_while_down(
    proxy: EngineProxy, sleeper: dict[str, str], docker: aiodocker.Docker
) -> None:
    # docker.timeout is long, so only the guard's probe can end the calls below in time.
    guard = EngineGuard(DockerRuntime(proxy.url, timeout=300), probe_interval=0.3, probe_timeout=1)
    guard.start_probe()
    labels = {"cbtest.outage": sleeper["label"]}
    try:
        events = guard.events(labels)
        logs = guard.logs(sleeper["id"], LogOptions(follow=True, tail=0))
        waiting = [asyncio.ensure_future(anext(events)), asyncio.ensure_future(anext(logs))]
        await asyncio.sleep(1)
        assert not any(task.done() for task in waiting)

        proxy.stall()
        for task in waiting:
            with pytest.raises(EngineUnavailable):
                await asyncio.wait_for(task, ANSWER_LIMIT)
        assert guard.available is False
        with pytest.raises(EngineUnavailable) as caught:
            await asyncio.wait_for(guard.inspect(sleeper["id"]), ANSWER_LIMIT)
        assert caught.value.headers["Retry-After"] == "1"
        assert caught.value.extra["dependency"] == "engine"
        assert "health check" in caught.value.detail

        proxy.accept()
        await wait_for(lambda: guard_available(guard), "the guard to see the engine back")
        assert guard.outages == 1
        events = guard.events(labels)
        next_event = asyncio.ensure_future(anext(events))
        await docker.containers.container(sleeper["id"]).kill()
        event = await asyncio.wait_for(next_event, RECOVERY_LIMIT)
        assert event.engine_id == sleeper["id"]
        await events.aclose()
    finally:
        await guard.close()


# --- request body limit ------------------------------------------------------------------------


async def test_oversized_body_is_413_and_never_reaches_engine(outage: OutageServer, test_image: str) -> None:
    marker = secrets.token_hex(6)
    padding = "x" * (2 * 1024 * 1024)
    body = start_body(test_image, command=["sleep", "600"], labels={"cbtest.marker": marker}, env={"PADDING": padding})
    encoded = httpx.Request("POST", "/", json=body).content

    async def chunked():
        for offset in range(0, len(encoded), 65536):
            yield encoded[offset : offset + 65536]

    async with outage.server.async_client() as client:
        before = (await client.get("/api/runtime/containers", params={"status": "failed"})).json()["total"]
        sized = await client.post("/api/runtime/start", json=body)
        # Without Content-Length, Litestar counts the bytes as they arrive.
        streamed = await client.post(
            "/api/runtime/start", content=chunked(), headers={"Content-Type": "application/json"}
        )
        for response in (sized, streamed):
            assert response.status_code == 413, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            problem = response.json()
            assert problem["limit"] == 1024 * 1024
            assert "server.max_request_body" in problem["detail"]
        after = (await client.get("/api/runtime/containers", params={"status": "failed"})).json()["total"]
        assert after == before

    docker = aiodocker.Docker()
    try:
        assert await docker.containers.list(all=True, filters={"label": [f"cbtest.marker={marker}"]}) == []
    finally:
        await docker.close()
