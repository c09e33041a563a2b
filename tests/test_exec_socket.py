"""The interactive exec WebSocket on a real server and engine: TTY, stdin, resize, signals, exit codes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import websockets

from api_support import remove_server_containers, server_fixture, start_body
from support.server import RunningServer

pytestmark = pytest.mark.engine

# Seconds a read may wait for output before the test fails instead of hanging.
WAIT = 30.0
SLEEPER = ["sleep", "600"]


@pytest.fixture(scope="module")
async def server(tmp_path_factory, docker_available) -> AsyncIterator[RunningServer]:
    for running in server_fixture(tmp_path_factory):
        try:
            yield running
        finally:
            await remove_server_containers(running.data_dir)


@pytest.fixture(scope="module")
def keys(server: RunningServer) -> dict[str, str]:
    """Keys of a developer, a second developer and a viewer."""
    with server.client() as admin:
        secrets = {}
        for user, role in (("erin", "developer"), ("frank", "developer"), ("gail", "viewer")):
            assert admin.post("/api/users", json={"name": user, "role": role}).status_code == 201
            created = admin.post("/api/keys", json={"name": user, "user": user})
            assert created.status_code == 201, created.text
            secrets[user] = created.json()["secret"]
        return secrets


@pytest.fixture(scope="module")
async def container(server: RunningServer, keys: dict[str, str], test_image: str) -> AsyncIterator[str]:
    """A running container of erin's, removed after the module."""
    async with server.async_client(keys["erin"]) as erin:
        started = await erin.post("/api/runtime/start", json=start_body(test_image, command=SLEEPER))
        assert started.status_code == 201, started.text
        container_id = started.json()["id"]
        try:
            yield container_id
        finally:
            await erin.post("/api/runtime/remove", json={"containerId": container_id, "force": True})


def socket_url(server: RunningServer, container_id: str, **query) -> str:
    params = httpx.QueryParams({"containerId": container_id, **query})
    return server.base_url.replace("http://", "ws://") + f"/api/runtime/exec/ws?{params}"


def connect(server: RunningServer, key: str, container_id: str, **query):
    return websockets.connect(
        socket_url(server, container_id, **query), additional_headers={"Authorization": f"Bearer {key}"}
    )


async def receive(socket) -> dict:
    """Return the next message, passing over the one that says the command started."""
    while (message := json.loads(await asyncio.wait_for(socket.recv(), WAIT)))["type"] == "started":
        pass
    return message


async def read_until(socket, text: str) -> str:
    """Collect output messages until their text contains `text`; return all of it."""
    seen = ""
    deadline = time.monotonic() + WAIT
    while text not in seen:
        assert time.monotonic() < deadline, f"no {text!r} within {WAIT} s; output so far: {seen!r}"
        message = await receive(socket)
        assert message["type"] == "output", message
        seen += message["data"]
    return seen


async def wait_for_process(server: RunningServer, key: str, container_id: str, command: str) -> None:
    """Wait until `ps` in the container lists `command`, so a signal reaches it and not the shell that starts it."""
    async with server.async_client(key) as client:
        deadline = time.monotonic() + WAIT
        while True:
            listing = (await client.post("/api/runtime/exec", json={"containerId": container_id, "command": ["ps"]})).json()
            if command in listing["stdout"]:
                return
            assert time.monotonic() < deadline, f"{command!r} did not start within {WAIT} s: {listing['stdout']}"
            await asyncio.sleep(0.2)


async def wait_until_gone(client: httpx.AsyncClient, container_id: str, command: str) -> None:
    """Wait until `ps` in the container no longer lists `command`."""
    deadline = time.monotonic() + WAIT
    while True:
        listing = (await client.post("/api/runtime/exec", json={"containerId": container_id, "command": ["ps"]})).json()
        if command not in listing["stdout"]:
            return
        assert time.monotonic() < deadline, f"{command!r} still runs: {listing['stdout']}"
        await asyncio.sleep(0.5)


async def read_to_exit(socket) -> tuple[dict[str, str], dict]:
    """Collect the output of each stream until the exit message; return both."""
    output = {"stdout": "", "stderr": ""}
    while True:
        message = await receive(socket)
        if message["type"] == "exit":
            return output, message
        assert message["type"] == "output", message
        output[message["stream"]] += message["data"]


async def test_tty_shell_session(server: RunningServer, keys: dict[str, str], container: str):
    async with connect(server, keys["erin"], container) as socket:
        await socket.send(json.dumps({"type": "start", "command": ["sh"], "tty": True, "cols": 80, "rows": 24}))
        assert json.loads(await asyncio.wait_for(socket.recv(), WAIT)) == {"type": "started", "tty": True}
        await socket.send(json.dumps({"type": "stdin", "data": "echo hi\n"}))
        assert "hi\r\n" in await read_until(socket, "hi\r\n")

        await socket.send(json.dumps({"type": "resize", "cols": 132, "rows": 43}))
        await socket.send(json.dumps({"type": "stdin", "data": "stty size\n"}))
        await read_until(socket, "43 132")

        await socket.send(b"sleep 100\n")
        await wait_for_process(server, keys["erin"], container, "sleep 100")
        await socket.send(json.dumps({"type": "signal", "name": "INT"}))
        await socket.send(json.dumps({"type": "stdin", "data": "echo status=$?\n"}))
        await read_until(socket, "status=130")

        await socket.send(json.dumps({"type": "stdin", "data": "exit 3\n"}))
        _, end = await read_to_exit(socket)
        assert end == {"type": "exit", "exitCode": 3}
        with pytest.raises(websockets.exceptions.ConnectionClosedOK):
            await asyncio.wait_for(socket.recv(), WAIT)
    assert socket.close_code == 1000


async def test_tty_command_that_ends_at_once(server: RunningServer, keys: dict[str, str], container: str):
    # The start's resize can reach the engine after the command ended; the session still reports it.
    for _ in range(3):
        async with connect(server, keys["erin"], container) as socket:
            await socket.send(json.dumps({"type": "start", "command": ["true"], "tty": True, "cols": 100, "rows": 30}))
            _, end = await read_to_exit(socket)
        assert end == {"type": "exit", "exitCode": 0}


async def test_tty_output_after_eof(server: RunningServer, keys: dict[str, str], container: str):
    command = ["sh", "-c", "sleep 1; echo late; exit 4"]
    async with connect(server, keys["erin"], container) as socket:
        await socket.send(json.dumps({"type": "start", "command": command, "tty": True, "cols": 80, "rows": 24}))
        await socket.send(json.dumps({"type": "eof"}))
        output, end = await read_to_exit(socket)
    assert "late" in output["stdout"]
    assert end == {"type": "exit", "exitCode": 4}


async def test_stdin_piped_to_cat(server: RunningServer, keys: dict[str, str], container: str):
    async with connect(server, keys["erin"], container, command="cat") as socket:
        await socket.send(json.dumps({"type": "stdin", "data": "first line\n"}))
        await socket.send("second line é\n".encode())
        await socket.send(json.dumps({"type": "eof"}))
        output, end = await read_to_exit(socket)
    assert output == {"stdout": "first line\nsecond line é\n", "stderr": ""}
    assert end["exitCode"] == 0


async def test_streams_stay_apart_without_tty(server: RunningServer, keys: dict[str, str], container: str):
    command = ["sh", "-c", "echo out; echo err >&2; exit 5"]
    async with connect(server, keys["erin"], container) as socket:
        await socket.send(json.dumps({"type": "start", "command": command, "env": {"GREETING": "x"}}))
        output, end = await read_to_exit(socket)
    assert output == {"stdout": "out\n", "stderr": "err\n"}
    assert end["exitCode"] == 5


async def test_signal_without_tty(server: RunningServer, keys: dict[str, str], container: str):
    async with connect(server, keys["erin"], container, command=["sh", "-c", "echo started; exec sleep 100"]) as socket:
        await read_until(socket, "started")
        await socket.send(json.dumps({"type": "signal", "name": "SIGTERM"}))
        _, end = await read_to_exit(socket)
    # A process killed by signal 15 exits with 128 + 15.
    assert end["exitCode"] == 143


async def test_query_parameters_start_session(server: RunningServer, keys: dict[str, str], container: str):
    query = {"command": ["sh", "-c", "echo $GREETING from $(pwd)"], "env": "GREETING=hello", "workdir": "/bin"}
    async with connect(server, keys["erin"], container, **query) as socket:
        output, end = await read_to_exit(socket)
    assert output["stdout"] == "hello from /bin\n"
    assert end["exitCode"] == 0


async def test_invalid_messages_keep_session(server: RunningServer, keys: dict[str, str], container: str):
    async with connect(server, keys["erin"], container, command="cat") as socket:
        await socket.send("not json")
        assert (await receive(socket))["type"] == "error"
        await socket.send(json.dumps({"type": "dance"}))
        unknown = await receive(socket)
        assert (unknown["type"], unknown["field"]) == ("error", "type")
        await socket.send(json.dumps({"type": "signal", "name": "NOPE"}))
        signal = await receive(socket)
        assert signal["field"] == "name"
        assert "INT" in signal["detail"]
        await socket.send(json.dumps({"type": "resize", "cols": 80, "rows": 24}))
        resize = await receive(socket)
        assert "tty" in resize["detail"]

        await socket.send(json.dumps({"type": "stdin", "data": "still here\n"}))
        await socket.send(json.dumps({"type": "eof"}))
        await socket.send(json.dumps({"type": "stdin", "data": "too late\n"}))
        output, end = await read_to_exit_ignoring_errors(socket)
    assert output["stdout"] == "still here\n"
    assert end["exitCode"] == 0


async def read_to_exit_ignoring_errors(socket) -> tuple[dict[str, str], dict]:
    output = {"stdout": "", "stderr": ""}
    while (message := await receive(socket))["type"] != "exit":
        if message["type"] == "output":
            output[message["stream"]] += message["data"]
    return output, message


async def test_bad_start_is_refused(server: RunningServer, keys: dict[str, str], container: str):
    async with connect(server, keys["erin"], container) as socket:
        await socket.send(json.dumps({"type": "start", "command": []}))
        refused = await receive(socket)
        assert (refused["type"], refused["field"]) == ("error", "command")
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await asyncio.wait_for(socket.recv(), WAIT)
    assert socket.close_code == 4400

    async with connect(server, keys["erin"], container, command="true", env="NOEQUALS") as socket:
        refused = await receive(socket)
        assert (refused["field"], refused["status"]) == ("env", 400)
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await asyncio.wait_for(socket.recv(), WAIT)
    assert socket.close_code == 4400

    for start in ({"env": {"": ""}}, {"env": {"A=B": "x"}}, {"workdir": "x"}, {"user": "nobody:x:y"}):
        async with connect(server, keys["erin"], container) as socket:
            await socket.send(json.dumps({"type": "start", "command": ["true"], **start}))
            refused = await receive(socket)
            assert (refused["type"], refused["status"]) == ("error", 422), refused
            assert refused["field"].split(".")[0] == next(iter(start)), refused


async def test_viewer_is_refused(server: RunningServer, keys: dict[str, str], container: str):
    with pytest.raises(websockets.exceptions.InvalidStatus) as rejected:
        async with connect(server, keys["gail"], container, command="true"):
            pass
    assert rejected.value.response.status_code == 403


async def test_other_users_container_not_found(server: RunningServer, keys: dict[str, str], container: str):
    answers = []
    for container_id in (container, "ctr_0000000000000000"):
        async with connect(server, keys["frank"], container_id, command="true") as socket:
            message = await receive(socket)
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                await asyncio.wait_for(socket.recv(), WAIT)
            answers.append((message["type"], message["status"], message["detail"].replace(container_id, "ID"), socket.close_code))
    assert answers[0] == answers[1]
    assert answers[0][1] == 404
    assert answers[0][3] == 4404


async def test_client_leaving_kills_command(server: RunningServer, keys: dict[str, str], container: str):
    marker = f"sleep {int(time.time()) % 1000 + 7000}"
    async with connect(server, keys["erin"], container, command=["sh", "-c", f"echo ready; exec {marker}"]) as socket:
        await read_until(socket, "ready")

    async with server.async_client(keys["erin"]) as erin:
        await wait_until_gone(erin, container, marker)


async def test_signals_reach_command_without_shell(server: RunningServer, keys: dict[str, str], test_image: str):
    # Without a shell the signal script cannot run, so the command's main process gets the signal
    # through its host PID, which the tests' engine shares with them.
    async with server.async_client(keys["erin"]) as erin:
        started = await erin.post("/api/runtime/start", json=start_body(test_image, command=SLEEPER))
        assert started.status_code == 201, started.text
        container_id = started.json()["id"]
        try:
            removed = await erin.post("/api/runtime/exec", json={"containerId": container_id, "command": ["rm", "/bin/sh"]})
            assert removed.json()["exitCode"] == 0, removed.text

            async with connect(server, keys["erin"], container_id, command=["sleep", "606"]) as socket:
                await wait_for_process(server, keys["erin"], container_id, "sleep 606")
                await socket.send(json.dumps({"type": "signal", "name": "TERM"}))
                _, end = await read_to_exit(socket)
            assert end["exitCode"] == 143

            async with connect(server, keys["erin"], container_id, command=["sleep", "607"]) as socket:
                await wait_for_process(server, keys["erin"], container_id, "sleep 607")
            await wait_until_gone(erin, container_id, "sleep 607")
        finally:
            await erin.post("/api/runtime/remove", json={"containerId": container_id, "force": True})


async def test_paused_container_refuses_session(server: RunningServer, keys: dict[str, str], container: str):
    async with server.async_client(keys["erin"]) as erin:
        assert (await erin.post("/api/runtime/pause", json={"containerId": container})).status_code == 200
        try:
            async with connect(server, keys["erin"], container, command="true") as socket:
                message = await receive(socket)
                assert message["status"] == 409
                assert "resume" in message["detail"]
                with pytest.raises(websockets.exceptions.ConnectionClosed):
                    await asyncio.wait_for(socket.recv(), WAIT)
            assert socket.close_code == 4409
        finally:
            assert (await erin.post("/api/runtime/resume", json={"containerId": container})).status_code == 200


async def test_session_is_audited(server: RunningServer, keys: dict[str, str], container: str):
    async with connect(server, keys["erin"], container, command=["sh", "-c", "exit 7"]) as socket:
        _, end = await read_to_exit(socket)
        assert end["exitCode"] == 7

    async with server.async_client() as admin:
        deadline = time.monotonic() + WAIT
        while True:
            records = (await admin.get("/api/audit", params={"action": "runtime.exec.session"})).json()["items"]
            ended = [record for record in records if record["details"].get("exitCode") == 7]
            if ended or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    assert ended, records
    assert ended[0]["actor"] == "erin"
    assert ended[0]["outcome"] == "success"
    assert ended[0]["targetId"] == container
    assert ended[0]["details"]["closeCode"] == 1000
