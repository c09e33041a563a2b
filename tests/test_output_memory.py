"""200 MB of container output through exec and logs, with the server's memory measured as it passes.

The server is a real `corebase serve` process, and its peak resident memory (VmHWM in
/proc/<pid>/status, reset through /proc/<pid>/clear_refs before each transfer) must grow by less
than MEMORY_BOUND while the client reads everything. Pauses in the reading show that a slow client
blocks the command or stops the log reader, instead of the server buffering what the client has
not read yet.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from api_support import server_fixture, start_body
from support.server import RunningServer

pytestmark = pytest.mark.engine

MiB = 1024 * 1024
OUTPUT_SIZE = 200 * MiB
MEMORY_BOUND = 100 * MiB
# Lines of 1023 x's and a newline, 200 MiB in all.
WRITE_OUTPUT = ["sh", "-c", f"yes $(head -c 1023 /dev/zero | tr '\\0' x) | head -c {OUTPUT_SIZE}"]
# The output a client reads before it pauses, and how long it pauses.
READ_BEFORE_PAUSE = 4 * MiB
PAUSE_SECONDS = 5.0
# A hang detector for one whole transfer, generous for a loaded machine.
TRANSFER_LIMIT = 600.0
SERVER_ENV = {
    "COREBASE_EXEC_MAX_OUTPUT": "1m",
    "COREBASE_EXEC_MAX_TIMEOUT": str(TRANSFER_LIMIT),
    # The engine must keep the whole log, JSON wrapping included, in one file.
    "COREBASE_CONTAINERS_LOG_MAX_SIZE": "512m",
    "COREBASE_CONTAINERS_LOG_MAX_FILES": "1",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, docker_available) -> RunningServer:
    yield from server_fixture(tmp_path_factory, SERVER_ENV)


@pytest.fixture
async def api(server) -> AsyncIterator[httpx.AsyncClient]:
    async with server.async_client(timeout=120.0) as client:
        yield client


@pytest.fixture
async def container(api, test_image) -> AsyncIterator:
    """Start a container through the API with `await container(**fields)`; each is removed afterwards."""
    ids: list[str] = []

    async def start(**fields) -> dict:
        response = await api.post("/api/runtime/start", json=start_body(test_image, **fields))
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
        return response.json()

    try:
        yield start
    finally:
        for container_id in ids:
            await api.post("/api/runtime/remove", json={"containerId": container_id, "force": True})


class ServerMemory:
    """Resident memory of the server process, from /proc/<pid>/status, in bytes."""

    def __init__(self, pid: int) -> None:
        self.status = Path(f"/proc/{pid}/status")
        self.clear_refs = Path(f"/proc/{pid}/clear_refs")
        self.baseline = 0

    def read(self, field: str) -> int:
        for line in self.status.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"{self.status} has no {field}")

    def start(self) -> None:
        """Take the current resident memory as the baseline and reset the peak to it (Linux 4.0 and later)."""
        self.clear_refs.write_text("5")
        self.baseline = self.read("VmRSS")

    def growth(self) -> int:
        """Return how far the peak rose above the baseline since `start`."""
        return self.read("VmHWM") - self.baseline


@pytest.fixture
def memory(server) -> ServerMemory:
    return ServerMemory(server.process.pid)


async def read_ndjson(response: httpx.Response, pause_after: int | None = None) -> tuple[dict[str, int], list[dict]]:
    """Count the characters of each stream in an NDJSON body, keeping only the lines without text.

    With `pause_after`, stop reading for PAUSE_SECONDS once that many characters have arrived.
    """
    sizes = {"stdout": 0, "stderr": 0}
    others = []
    paused = pause_after is None
    async for line in response.aiter_lines():
        if not line:
            continue
        item = json.loads(line)
        if "stream" not in item:
            others.append(item)
            continue
        sizes[item["stream"]] += len(item["text"])
        if not paused and sizes["stdout"] >= pause_after:
            paused = True
            await asyncio.sleep(PAUSE_SECONDS)
    return sizes, others


async def read_raw(response: httpx.Response, pause_after: int | None = None) -> tuple[int, int]:
    """Return the body's size and its number of x's, pausing like `read_ndjson`."""
    size = 0
    x_count = 0
    paused = pause_after is None
    async for chunk in response.aiter_raw():
        size += len(chunk)
        x_count += chunk.count(b"x")
        if not paused and size >= pause_after:
            paused = True
            await asyncio.sleep(PAUSE_SECONDS)
    return size, x_count


async def bytes_written(api: httpx.AsyncClient, container_id: str, program: str) -> int:
    """Return how many bytes the running `program` in the container has written so far (wchar in /proc/<pid>/io)."""
    command = ["sh", "-c", f"cat /proc/$(pidof {program})/io"]
    response = await api.post("/api/runtime/exec", json={"containerId": container_id, "command": command})
    for line in response.json()["stdout"].splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError(f"no wchar for {program}: {response.text}")


async def test_exec_stream_of_200_mb(api, container, memory) -> None:
    record = await container(command=["sleep", "3600"])
    body = {"containerId": record["id"], "command": WRITE_OUTPUT, "timeout": TRANSFER_LIMIT}
    memory.start()

    async with asyncio.timeout(TRANSFER_LIMIT):
        async with api.stream("POST", "/api/runtime/exec/stream", json=body) as response:
            assert response.status_code == 200
            reading = asyncio.ensure_future(read_ndjson(response, pause_after=READ_BEFORE_PAUSE))
            # While the client pauses, the command is blocked on its full pipe, so it writes nothing.
            await asyncio.sleep(PAUSE_SECONDS / 2)
            written_before = await bytes_written(api, record["id"], "head")
            await asyncio.sleep(1.0)
            written_after = await bytes_written(api, record["id"], "head")
            sizes, others = await reading

    assert written_after == written_before
    assert written_before < OUTPUT_SIZE / 2
    assert sizes == {"stdout": OUTPUT_SIZE, "stderr": 0}
    assert others[-1]["exitCode"] == 0
    assert len(others) == 1
    assert memory.growth() < MEMORY_BOUND


async def test_buffered_exec_of_200_mb(api, container, memory) -> None:
    record = await container(command=["sleep", "3600"])
    body = {"containerId": record["id"], "command": WRITE_OUTPUT, "timeout": TRANSFER_LIMIT}
    memory.start()

    async with asyncio.timeout(TRANSFER_LIMIT):
        response = await api.post("/api/runtime/exec", json=body)

    assert response.status_code == 200
    assert response.json()["exitCode"] == 0
    assert response.json()["truncated"] is True
    assert len(response.json()["stdout"]) == MiB
    assert set(response.json()["stdout"]) == {"x", "\n"}
    assert memory.growth() < MEMORY_BOUND


async def test_logs_of_200_mb(api, container, memory, docker) -> None:
    record = await container(command=WRITE_OUTPUT)
    log_config = (await docker.containers.get(record["dockerId"]))["HostConfig"]["LogConfig"]
    params = {"containerId": record["id"], "follow": "true"}
    memory.start()

    # Followed while the container writes, by a client that pauses.
    async with asyncio.timeout(TRANSFER_LIMIT):
        async with api.stream("GET", "/api/runtime/logs", params=params) as response:
            assert response.status_code == 200
            followed_size, followed_x = await read_raw(response, pause_after=READ_BEFORE_PAUSE)
    followed_growth = memory.growth()

    # Read again after the exit, in both formats.
    memory.start()
    async with asyncio.timeout(TRANSFER_LIMIT):
        async with api.stream("GET", "/api/runtime/logs", params={"containerId": record["id"]}) as response:
            read_size, read_x = await read_raw(response)
        async with api.stream(
            "GET", "/api/runtime/logs", params={"containerId": record["id"], "format": "ndjson"}
        ) as response:
            sizes, others = await read_ndjson(response)
    read_growth = memory.growth()

    assert log_config == {"Type": "json-file", "Config": {"max-size": str(512 * MiB), "max-file": "1"}}
    # NOTE: Docker Engine 20.10 can end a followed log early when the CPUs are saturated, as its
    # own follow stream does without CoreBase, so the followed read is checked as whole lines of
    # the output that go on past the pause. The reads after the exit carry all 200 MiB.
    assert READ_BEFORE_PAUSE < followed_size <= OUTPUT_SIZE
    assert followed_size % 1024 == 0
    assert followed_x == followed_size // 1024 * 1023
    assert read_size == OUTPUT_SIZE
    assert read_x == OUTPUT_SIZE // 1024 * 1023
    assert sizes == {"stdout": OUTPUT_SIZE, "stderr": 0}
    assert others == []
    assert followed_growth < MEMORY_BOUND
    assert read_growth < MEMORY_BOUND
