"""Streamed output end to end: exec and logs of containers with and without a TTY, on the real engine.

The NDJSON helpers are also tested alone, on output cut inside characters, because the engine
decides where its pieces end and seldom cuts a log inside a character.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from api_support import server_fixture, start_body
from corebase.api.streams import ndjson_exec, ndjson_output
from corebase.errors import EngineUnavailable
from corebase.runtime.types import ExecExit, LogChunk
from support.server import RunningServer

# Each printf is one write, and an exec's output reaches CoreBase one write at a time, so é, ✓
# and 😀 arrive cut in two pieces. \377 is not UTF-8 and must become U+FFFD without ending the output.
CUT_CHARACTERS = "; ".join(
    [
        r"printf 'caf\303'",
        "sleep 0.2",
        r"printf '\251\n'",
        r"printf 'check \342\234' >&2",
        "sleep 0.2",
        r"printf '\223\n' >&2",
        r"printf 'bad \377 emoji \360\237'",
        "sleep 0.2",
        r"printf '\230\200 end\n'",
    ]
)
CUT_STDOUT = "café\nbad \ufffd emoji 😀 end\n"
CUT_STDERR = "check ✓\n"

SLEEPER = ["sleep", "600"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, docker_available) -> RunningServer:
    yield from server_fixture(tmp_path_factory, {"COREBASE_EXEC_MAX_TIMEOUT": "120"})


@pytest.fixture
async def api(server) -> AsyncIterator[httpx.AsyncClient]:
    async with server.async_client() as client:
        yield client


@pytest.fixture
async def started(api, test_image) -> AsyncIterator:
    """Start containers through the API with `await started(**fields)`; each is removed afterwards."""
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


async def exec_stream_lines(api: httpx.AsyncClient, container_id: str, command: list[str], **fields) -> list[dict]:
    body = {"containerId": container_id, "command": command, **fields}
    async with api.stream("POST", "/api/runtime/exec/stream", json=body) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) async for line in response.aiter_lines() if line]


def joined_text(lines: list[dict], stream: str) -> str:
    return "".join(line["text"] for line in lines if line.get("stream") == stream)


async def wait_exited(api: httpx.AsyncClient, container_id: str) -> None:
    async with asyncio.timeout(60):
        while (await api.get(f"/api/runtime/containers/{container_id}")).json()["status"] != "exited":
            await asyncio.sleep(0.2)


# --- NDJSON bodies, without an engine ----------------------------------------------------------


async def iterate(*items):
    for item in items:
        yield item


async def collect(body: AsyncIterator[bytes]) -> list[dict]:
    return [json.loads(line) async for line in body]


async def test_ndjson_output_joins_cut_characters() -> None:
    chunks = iterate(
        LogChunk(stream="stdout", data=b"caf\xc3"),
        LogChunk(stream="stderr", data=b"\xe2"),
        LogChunk(stream="stdout", data=b"\xa9 \xff"),
        LogChunk(stream="stderr", data=b"\x9c\x93"),
        LogChunk(stream="stdout", data=b" end \xf0\x9f"),
    )

    lines = await collect(ndjson_output(chunks))

    assert lines == [
        {"stream": "stdout", "text": "caf"},
        {"stream": "stdout", "text": "é \ufffd"},
        {"stream": "stderr", "text": "✓"},
        {"stream": "stdout", "text": " end "},
        {"stream": "stdout", "text": "\ufffd"},
    ]


async def test_ndjson_exec_ends_with_exit_line() -> None:
    items = iterate(LogChunk(stream="stdout", data=b"out\n"), LogChunk(stream="stderr", data=b"err\n"), ExecExit(exit_code=3))

    lines = await collect(ndjson_exec(items, started=0.0))

    assert lines[:2] == [{"stream": "stdout", "text": "out\n"}, {"stream": "stderr", "text": "err\n"}]
    assert lines[2]["exitCode"] == 3
    assert lines[2]["timedOut"] is False
    assert lines[2]["error"] is None
    assert len(lines) == 3


async def test_ndjson_exec_reports_broken_output() -> None:
    async def broken():
        yield LogChunk(stream="stdout", data=b"partial \xc3")
        raise EngineUnavailable("the engine went away")

    lines = await collect(ndjson_exec(broken(), started=0.0))

    assert [line.get("text") for line in lines[:-1]] == ["partial ", "\ufffd"]
    assert lines[-1]["exitCode"] is None
    assert lines[-1]["error"]["status"] == 503
    assert lines[-1]["error"]["detail"] == "the engine went away"


# --- the runtime -------------------------------------------------------------------------------


@pytest.mark.engine
async def test_runtime_passes_cut_pieces_on(runtime, started) -> None:
    record = await started(command=SLEEPER)
    pieces: list[LogChunk] = []
    ends: list[ExecExit] = []

    async with asyncio.timeout(60):
        async for item in runtime.exec_stream(record["dockerId"], ["sh", "-c", CUT_CHARACTERS]):
            (ends if isinstance(item, ExecExit) else pieces).append(item)

    # The runtime passes pieces on as the engine framed them, é cut after its first byte.
    assert LogChunk(stream="stdout", data=b"caf\xc3") in pieces
    assert b"".join(piece.data for piece in pieces if piece.stream == "stderr") == b"check \xe2\x9c\x93\n"
    assert ends == [ExecExit(exit_code=0)]


async def assert_gone(runtime, engine_id: str, command: str) -> None:
    """Wait until `command` is no longer in the container's process list.

    The kill is sent before the stream's aclose() returns, but the process may take a moment to go.
    """
    async with asyncio.timeout(10):
        while command in (await runtime.exec(engine_id, ["ps", "-o", "args"])).stdout:
            await asyncio.sleep(0.2)


@pytest.mark.engine
async def test_runtime_stream_closed_early_kills_command(runtime, started) -> None:
    record = await started(command=SLEEPER)
    stream = runtime.exec_stream(record["dockerId"], ["sh", "-c", "sleep 433 & echo ready; exec sleep 432"])

    first = await anext(stream)
    await stream.aclose()

    assert first == LogChunk(stream="stdout", data=b"ready\n")
    # The child that kept the command's environment goes too.
    await assert_gone(runtime, record["dockerId"], "sleep 432")
    await assert_gone(runtime, record["dockerId"], "sleep 433")


@pytest.mark.engine
async def test_runtime_stream_closed_at_once_kills_command(runtime, started) -> None:
    # Engine 20.10 reports a running exec with no PID for a moment after its output begins, so a
    # kill sent at once must still find the command.
    record = await started(command=SLEEPER)
    for attempt in range(5):
        stream = runtime.exec_stream(record["dockerId"], ["sh", "-c", f"echo ready; exec sleep {440 + attempt}"])
        assert await anext(stream) == LogChunk(stream="stdout", data=b"ready\n")
        await stream.aclose()

    for attempt in range(5):
        await assert_gone(runtime, record["dockerId"], f"sleep {440 + attempt}")


@pytest.mark.engine
async def test_runtime_timeout_kills_command_without_shell(runtime, started) -> None:
    # Without a shell in the container the kill script cannot run, so the command's main process
    # is killed through its host PID, which the tests' engine shares with them.
    record = await started(command=SLEEPER)
    removed = await runtime.exec(record["dockerId"], ["rm", "/bin/sh"])
    assert removed.exit_code == 0, removed.stderr

    items = [item async for item in runtime.exec_stream(record["dockerId"], ["sleep", "434"], timeout=1.0)]

    assert items == [ExecExit(exit_code=None, timed_out=True)]
    await assert_gone(runtime, record["dockerId"], "sleep 434")


@pytest.mark.engine
async def test_runtime_stream_timeout(runtime, started) -> None:
    record = await started(command=SLEEPER)

    items = [item async for item in runtime.exec_stream(record["dockerId"], ["sh", "-c", "echo started; exec sleep 321"], timeout=1.5)]

    assert items == [LogChunk(stream="stdout", data=b"started\n"), ExecExit(exit_code=None, timed_out=True)]
    processes = await runtime.exec(record["dockerId"], ["ps", "-o", "args"])
    assert "sleep 321" not in processes.stdout


@pytest.mark.engine
async def test_runtime_stream_missing_command(runtime, started) -> None:
    record = await started(command=SLEEPER)

    items = [item async for item in runtime.exec_stream(record["dockerId"], ["/no/such/command"])]

    end = items[-1]
    assert isinstance(end, ExecExit)
    assert end.exit_code in (126, 127)
    assert {item.stream for item in items[:-1]} == {"stderr"}
    assert b"/no/such/command" in b"".join(item.data for item in items[:-1])


# --- exec through the API ----------------------------------------------------------------------


@pytest.mark.engine
@pytest.mark.parametrize("tty", [False, True], ids=["no-tty", "tty"])
async def test_exec_stream_decodes_cut_characters(api, started, tty) -> None:
    # An exec has no TTY of its own, so its output is multiplexed even in a TTY container.
    record = await started(command=SLEEPER, tty=tty)

    lines = await exec_stream_lines(api, record["id"], ["sh", "-c", CUT_CHARACTERS + "; exit 4"])

    assert joined_text(lines, "stdout") == CUT_STDOUT
    assert joined_text(lines, "stderr") == CUT_STDERR
    assert lines[-1]["exitCode"] == 4
    assert lines[-1]["timedOut"] is False
    assert lines[-1]["durationMs"] > 0
    # é arrived in two pieces and its first byte alone gave no line, so the only U+FFFD is the invalid byte's.
    assert sum(line.get("text", "").count("\ufffd") for line in lines) == 1


@pytest.mark.engine
@pytest.mark.parametrize("tty", [False, True], ids=["no-tty", "tty"])
async def test_buffered_exec_decodes_cut_characters(api, started, tty) -> None:
    record = await started(command=SLEEPER, tty=tty)

    response = await api.post("/api/runtime/exec", json={"containerId": record["id"], "command": ["sh", "-c", CUT_CHARACTERS]})

    assert response.status_code == 200, response.text
    assert response.json()["stdout"] == CUT_STDOUT
    assert response.json()["stderr"] == CUT_STDERR
    assert response.json()["exitCode"] == 0


@pytest.mark.engine
async def test_exec_stream_sends_output_before_the_end(api, started) -> None:
    record = await started(command=SLEEPER)
    body = {"containerId": record["id"], "command": ["sh", "-c", "echo first; sleep 600"], "timeout": 60}

    async with asyncio.timeout(30):
        async with api.stream("POST", "/api/runtime/exec/stream", json=body) as response:
            first = json.loads(await anext(response.aiter_lines()))

    # The command still runs, so the line came through while the exec went on.
    assert first == {"stream": "stdout", "text": "first\n"}


@pytest.mark.engine
async def test_exec_stream_timeout_line(api, started) -> None:
    record = await started(command=SLEEPER)

    lines = await exec_stream_lines(api, record["id"], ["sh", "-c", "echo started; exec sleep 321"], timeout=1)

    assert lines[0] == {"stream": "stdout", "text": "started\n"}
    assert lines[-1]["timedOut"] is True
    assert lines[-1]["exitCode"] is None


@pytest.mark.engine
async def test_exec_stream_rejections(api, started) -> None:
    stopped = await started(command=["true"])
    await wait_exited(api, stopped["id"])

    not_running = await api.post("/api/runtime/exec/stream", json={"containerId": stopped["id"], "command": ["true"]})
    unknown = await api.post("/api/runtime/exec/stream", json={"containerId": "ctr_0000000000000000", "command": ["true"]})
    too_long = await api.post(
        "/api/runtime/exec/stream", json={"containerId": stopped["id"], "command": ["true"], "timeout": 999999}
    )
    no_command = await api.post("/api/runtime/exec/stream", json={"containerId": stopped["id"], "command": []})

    assert not_running.status_code == 409
    assert not_running.headers["content-type"] == "application/problem+json"
    assert not_running.json()["containerId"] == stopped["id"]
    assert unknown.status_code == 404
    assert too_long.status_code == 422
    assert too_long.json()["field"] == "timeout"
    assert no_command.status_code == 400
    assert no_command.json()["field"] == "command"


# --- logs through the API ----------------------------------------------------------------------


@pytest.mark.engine
async def test_logs_of_cut_characters(api, started) -> None:
    # The json-file log driver joins a line's writes before it stores the line, so a log keeps
    # é whole even though the container wrote it in two pieces; \377 it stores as U+FFFD.
    record = await started(command=["sh", "-c", CUT_CHARACTERS])
    await wait_exited(api, record["id"])

    text = await api.get("/api/runtime/logs", params={"containerId": record["id"], "stderr": "false"})
    lines = (await api.get("/api/runtime/logs", params={"containerId": record["id"], "format": "ndjson"})).text

    assert text.text == CUT_STDOUT
    assert joined_text([json.loads(line) for line in lines.splitlines()], "stdout") == CUT_STDOUT
    assert joined_text([json.loads(line) for line in lines.splitlines()], "stderr") == CUT_STDERR


@pytest.mark.engine
@pytest.mark.parametrize("follow", [False, True], ids=["read", "follow"])
async def test_logs_with_tty(api, started, follow) -> None:
    # A TTY sends raw bytes, not frames: both streams arrive as stdout, with "\n" turned into "\r\n".
    record = await started(command=["sh", "-c", CUT_CHARACTERS], tty=True)
    if not follow:
        await wait_exited(api, record["id"])
    params = {"containerId": record["id"], "follow": str(follow).lower()}

    async with asyncio.timeout(60):
        text = (await api.get("/api/runtime/logs", params=params)).text
        lines = [json.loads(line) for line in (await api.get("/api/runtime/logs", params={**params, "format": "ndjson"})).text.splitlines()]

    expected = "café\r\ncheck ✓\r\nbad \ufffd emoji 😀 end\r\n"
    assert text == expected
    assert joined_text(lines, "stdout") == expected
    assert joined_text(lines, "stderr") == ""


@pytest.mark.engine
async def test_logs_follow_without_tty_keeps_streams_apart(api, started) -> None:
    record = await started(command=["sh", "-c", CUT_CHARACTERS])
    params = {"containerId": record["id"], "follow": "true", "format": "ndjson"}

    async with asyncio.timeout(60):
        async with api.stream("GET", "/api/runtime/logs", params=params) as response:
            lines = [json.loads(line) async for line in response.aiter_lines() if line]

    assert joined_text(lines, "stdout") == CUT_STDOUT
    assert joined_text(lines, "stderr") == CUT_STDERR
