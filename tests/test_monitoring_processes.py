"""Two `corebase serve` processes on one PostgreSQL database and one Redis: shared events, one collector.

A WebSocket client of one process receives the events caused through the other, and exactly one process
leads monitoring; when the leader is killed, the survivor takes over sampling and publishing.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from api_support import create_postgres_database, drop_postgres_database, remove_database_containers, start_body
from events_support import event_socket, next_message
from support.server import RunningServer, free_port, run_server
from support.services import require_service

pytestmark = [pytest.mark.engine, pytest.mark.postgres, pytest.mark.redis]

# Upper bound in seconds for waiting on leadership; the lease lasts three sampling intervals.
LEADERSHIP_WAIT = 60.0


@pytest.fixture
async def pair(tmp_path, postgres_url, redis_url, docker_available) -> AsyncIterator[list[RunningServer]]:
    database_url = await create_postgres_database(postgres_url)
    env = {
        "COREBASE_DATABASE_URL": database_url,
        "COREBASE_REDIS_URL": redis_url,
        # A prefix of its own keeps this test's events apart from any other server on the same Redis.
        "COREBASE_REDIS_KEY_PREFIX": "corebase-test-" + secrets.token_hex(4),
        "COREBASE_MONITORING_INTERVAL": "1",
    }
    admin_key = "cbk_test_" + secrets.token_urlsafe(24)
    try:
        with contextlib.ExitStack() as stack:
            # run_server returns once a process responds, so the two never migrate the database at once.
            yield [stack.enter_context(run_server(tmp_path / name, env=env, admin_key=admin_key)) for name in ("a", "b")]
    finally:
        try:
            await remove_database_containers(database_url)
        finally:
            await drop_postgres_database(postgres_url, database_url)


async def monitoring(server: RunningServer) -> dict:
    async with server.async_client() as client:
        response = await client.get("/api/monitoring")
    assert response.status_code == 200, response.text
    return response.json()


async def wait_for_leader(servers: list[RunningServer]) -> RunningServer:
    deadline = time.monotonic() + LEADERSHIP_WAIT
    while time.monotonic() < deadline:
        states = [await monitoring(server) for server in servers]
        leaders = [server for server, state in zip(servers, states) if state["leader"]]
        assert len(leaders) <= 1, states
        if leaders:
            return leaders[0]
        await asyncio.sleep(0.5)
    raise AssertionError("no process took the monitor lease")


async def test_events_cross_processes_and_leadership_moves_on(pair, test_image):
    first, second = pair
    assert (await monitoring(first))["bus"] == "redis"
    project = "proj-" + secrets.token_hex(4)

    async with event_socket(second, f"types=container&projectId={project}") as socket, first.async_client() as client:
        response = await client.post("/api/runtime/start", json=start_body(test_image, command=["sleep", "600"], projectId=project))
        assert response.status_code == 201, response.text
        container_id = response.json()["id"]
        started = await next_message(socket, lambda message: message["type"] == "container.started")
        assert started["containerId"] == container_id

    leader = await wait_for_leader(pair)
    follower = second if leader is first else first
    assert (await monitoring(follower))["rounds"] == 0
    assert (await monitoring(follower))["leaderProcess"] == (await monitoring(leader))["process"]

    # Samples taken by the leader reach a client of the follower.
    async with event_socket(follower, f"types=metric&containerId={container_id}") as socket:
        sample = await next_message(socket, lambda message: message["type"] == "metric.sample")
        assert sample["data"]["memoryBytes"] > 0

    leader.process.send_signal(signal.SIGKILL)
    leader.process.wait()
    assert await wait_for_leader([follower]) is follower
    rounds = (await monitoring(follower))["rounds"]
    deadline = time.monotonic() + LEADERSHIP_WAIT
    while (await monitoring(follower))["rounds"] <= rounds + 1:
        assert time.monotonic() < deadline, "the new leader does not sample"
        await asyncio.sleep(0.5)

    # The survivor now publishes engine events too.
    async with event_socket(follower, f"types=container.died&containerId={container_id}") as socket, follower.async_client() as client:
        await client.post("/api/runtime/stop", json={"containerId": container_id, "timeout": 0})
        died = await next_message(socket, lambda message: message["type"] == "container.died")
        assert died["data"]["requested"] is True


class OwnRedis:
    """A redis-server this test starts, stops and starts again on the same loopback port."""

    def __init__(self, directory: Path) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            require_service("redis-server", "the redis-server program is not installed; run scripts/services.sh install")
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


async def test_events_survive_a_redis_restart(tmp_path, postgres_url, docker_available, test_image):
    redis = OwnRedis(tmp_path / "redis")
    redis.start()
    database_url = await create_postgres_database(postgres_url)
    env = {
        "COREBASE_DATABASE_URL": database_url,
        "COREBASE_REDIS_URL": redis.url,
        "COREBASE_EVENTS_RECONNECT_DELAY": "0.5",
    }
    admin_key = "cbk_test_" + secrets.token_urlsafe(24)
    project = "proj-" + secrets.token_hex(4)
    try:
        with contextlib.ExitStack() as stack:
            first, second = [stack.enter_context(run_server(tmp_path / name, env=env, admin_key=admin_key)) for name in ("a", "b")]
            async with first.async_client() as client:
                redis.stop()
                # Without Redis the API goes on serving; the events of this start are lost.
                response = await client.post("/api/runtime/start", json=start_body(test_image, command=["sleep", "600"], projectId=project))
                assert response.status_code == 201, response.text
                assert (await client.get("/api/runtime/containers", params={"projectId": project})).status_code == 200

                redis.start()
                deadline = time.monotonic() + LEADERSHIP_WAIT
                while not all([(await monitoring(server))["busConnected"] for server in (first, second)]):
                    assert time.monotonic() < deadline, "the servers did not reconnect to Redis"
                    await asyncio.sleep(0.3)

                async with event_socket(second, f"types=container.started&projectId={project}") as socket:
                    response = await client.post("/api/runtime/start", json=start_body(test_image, command=["sleep", "600"], projectId=project))
                    assert response.status_code == 201, response.text
                    started = await next_message(socket, lambda message: message["type"] == "container.started")
                    assert started["containerId"] == response.json()["id"]
    finally:
        redis.stop()
        try:
            await remove_database_containers(database_url)
        finally:
            await drop_postgres_database(postgres_url, database_url)
