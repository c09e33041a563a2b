"""A graceful stop of `corebase serve` on SIGTERM: requests in flight finish, loops stop, exit code 0."""

from __future__ import annotations

import asyncio
import secrets
import signal

import httpx
import pytest
import websockets

from api_support import remove_server_containers, start_body
from events_support import event_socket
from support.server import run_server

pytestmark = [pytest.mark.engine, pytest.mark.redis]

# Hang detector for each step of the stop; uvicorn itself gives requests up to 30 s.
STEP_LIMIT = 60.0
# Lines a clean stop never writes: tracebacks, and asyncio's complaints about tasks left behind.
UNCLEAN_MARKERS = (
    "Traceback",
    "Task was destroyed but it is pending",
    "Task exception was never retrieved",
    "was never awaited",
    "timeout graceful shutdown exceeded",
)


async def follow_logs(client: httpx.AsyncClient, container_id: str, first_chunk: asyncio.Event) -> bytes:
    """Follow a container's logs until the server ends the response; return what arrived."""
    received = b""
    params = {"containerId": container_id, "follow": "true"}
    async with client.stream("GET", "/api/runtime/logs", params=params) as response:
        assert response.status_code == 200
        async for chunk in response.aiter_bytes():
            received += chunk
            first_chunk.set()
    return received


async def read_until_closed(socket) -> websockets.frames.Close:
    """Read events until the server closes the WebSocket; return its close frame."""
    try:
        while True:
            await socket.recv()
    except websockets.ConnectionClosed as exc:
        return exc.rcvd


async def test_sigterm_drains_requests_and_exits_zero(tmp_path, redis_url, test_image):
    env = {
        # Redis, monitoring and a pool give every background loop work to stop.
        "COREBASE_REDIS_URL": redis_url,
        "COREBASE_REDIS_KEY_PREFIX": "corebase-test-" + secrets.token_hex(4),
        "COREBASE_MONITORING_INTERVAL": "1",
        "COREBASE_POOL_INTERVAL": "0.5",
    }
    data_dir = tmp_path / "data"
    try:
        with run_server(data_dir, env=env) as server:
            async with server.async_client(timeout=STEP_LIMIT) as client, event_socket(server) as socket:
                template = {"name": "cbstop-" + secrets.token_hex(4), "image": test_image, "command": ["sleep", "600"]}
                assert (await client.post("/api/runtime/templates", json=template)).status_code == 201
                pool = await client.put(f"/api/runtime/pools/{template['name']}", json={"minIdle": 1, "maxIdle": 1, "maxTotal": 2})
                assert pool.status_code == 200, pool.text
                talker = {"command": ["sh", "-c", "while :; do echo tick; sleep 0.2; done"]}
                started = await client.post("/api/runtime/start", json=start_body(test_image, **talker))
                assert started.status_code == 201, started.text
                container_id = started.json()["id"]

                first_chunk = asyncio.Event()
                following = asyncio.create_task(follow_logs(client, container_id, first_chunk))
                await asyncio.wait_for(first_chunk.wait(), STEP_LIMIT)
                exec_body = {"containerId": container_id, "command": ["sleep", "2"]}
                executing = asyncio.create_task(client.post("/api/runtime/exec", json=exec_body))
                await asyncio.sleep(0.5)
                server.process.send_signal(signal.SIGTERM)

                executed = await asyncio.wait_for(executing, STEP_LIMIT)
                assert executed.status_code == 200, executed.text
                assert executed.json()["exitCode"] == 0
                followed = await asyncio.wait_for(following, STEP_LIMIT)
                assert b"tick" in followed
                closed = await asyncio.wait_for(read_until_closed(socket), STEP_LIMIT)
                # 1012: the server is restarting, which uvicorn sends to WebSockets when it shuts down.
                assert closed.code == 1012
                exit_code = await asyncio.to_thread(server.process.wait, STEP_LIMIT)

        assert exit_code == 0, server.log()
        log = server.log()
        assert "Application shutdown complete" in log
        for marker in UNCLEAN_MARKERS:
            assert marker not in log, log
    finally:
        await remove_server_containers(data_dir)
