"""The SDK's and the CLI's pause, resume, file copies and interactive exec, against a real server and engine."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import secrets
import select
import signal
import struct
import subprocess
import sys
import tarfile
import termios
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from api_support import RUN_ID, RUN_LABEL, remove_server_containers, server_fixture
from corebase.client import AsyncClient, Client, Forbidden, NotFound, TooLarge
from support.server import RunningServer

pytestmark = pytest.mark.engine

MAX_UPLOAD = 256 * 1024
# Seconds a wait may take before the test fails instead of hanging.
WAIT = 60.0


@pytest.fixture(scope="module")
async def server(tmp_path_factory, docker_available) -> AsyncIterator[RunningServer]:
    for running in server_fixture(tmp_path_factory, {"COREBASE_FILES_MAX_UPLOAD": str(MAX_UPLOAD)}):
        try:
            yield running
        finally:
            await remove_server_containers(running.data_dir)


@pytest.fixture
def client(server: RunningServer) -> Iterator[Client]:
    with Client(server.base_url, server.admin_key) as sync_client:
        yield sync_client


@pytest.fixture
def box(client: Client, test_image: str) -> Iterator[str]:
    """A running container, removed after the test."""
    record = client.containers.start(test_image, command=["sleep", "600"], labels={RUN_LABEL: RUN_ID})
    try:
        yield record.id
    finally:
        client.containers.remove(record.id, force=True)


def tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return sorted(archive.getnames())


# --- SDK -----------------------------------------------------------------------------------------


def test_sdk_pause_and_resume(client: Client, box: str):
    assert client.containers.pause(box).status == "paused"
    assert client.containers.resume(box).status == "running"


def test_sdk_start_with_timers(client: Client, test_image: str):
    record = client.containers.start(
        test_image, command=["sleep", "600"], labels={RUN_LABEL: RUN_ID}, ttl="1h", idle_timeout=900, auto_remove=True
    )
    try:
        assert (record.ttl, record.idle_timeout, record.auto_remove) == (3600.0, 900.0, True)
        assert record.expires_at is not None
    finally:
        client.containers.remove(record.id, force=True)


def test_sdk_file_copies(client: Client, box: str, tmp_path: Path):
    uploaded = client.containers.upload(box, "/hello.txt", b"hello\n")
    assert (uploaded.path, uploaded.size) == ("/hello.txt", 6)

    local = tmp_path / "local.bin"
    local.write_bytes(os.urandom(100_000))
    assert client.containers.upload(box, "/local.bin", local).size == 100_000

    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as writer:
        member = tarfile.TarInfo("packed/inner.txt")
        member.size = 5
        writer.addfile(member, io.BytesIO(b"inner"))
    client.containers.upload(box, "/", archive.getvalue(), archive=True)

    stat = client.containers.stat(box, "/local.bin")
    assert (stat.name, stat.size, stat.type) == ("local.bin", 100_000, "file")
    assert client.containers.stat(box, "/packed").type == "directory"
    downloaded = b"".join(client.containers.download(box, "/packed"))
    assert tar_names(downloaded) == ["packed", "packed/inner.txt"]
    with tarfile.open(fileobj=io.BytesIO(b"".join(client.containers.download(box, "/local.bin")))) as copy:
        assert copy.extractfile("local.bin").read() == local.read_bytes()

    with pytest.raises(NotFound) as unknown:
        client.containers.stat(box, "/no/such/path")
    assert unknown.value.problem["field"] == "path"
    assert "/no/such/path" in unknown.value.detail
    with pytest.raises(NotFound) as missing:
        list(client.containers.download(box, "/no/such/path"))
    assert missing.value.problem["field"] == "path"
    with pytest.raises(TooLarge) as too_large:
        client.containers.upload(box, "/big.bin", b"\0" * (MAX_UPLOAD + 1))
    assert too_large.value.limit == MAX_UPLOAD


def test_sdk_session_with_tty(client: Client, box: str):
    with client.containers.session(box, ["sh"], tty=True, cols=100, rows=30) as shell:
        shell.send("stty size\n")
        seen = ""
        while "30 100" not in seen:
            seen += shell.read(timeout=WAIT).data
        shell.resize(120, 40)
        shell.send("stty size; exit 4\n")
        rest = "".join(output.data for output in shell)
    assert "40 120" in rest
    assert shell.exit_code == 4


async def test_async_session_with_stdin(server: RunningServer, box: str):
    async with AsyncClient(server.base_url, server.admin_key) as client:
        async with client.containers.session(box, ["sh", "-c", "cat; echo done >&2"]) as session:
            await session.send(b"piped ")
            await session.send("text\n")
            await session.close_stdin()
            output = {"stdout": "", "stderr": ""}
            async for piece in session:
                output[piece.stream] += piece.data
        assert output == {"stdout": "piped text\n", "stderr": "done\n"}
        assert session.exit_code == 0


def test_sdk_session_refusals(server: RunningServer, client: Client, box: str):
    with pytest.raises(NotFound):
        with client.containers.session("ctr_0000000000000000", ["true"]):
            pass

    client.users.create("vera", role="viewer")
    secret = client.keys.create("vera", user="vera").secret
    with Client(server.base_url, secret) as viewer:
        with pytest.raises(Forbidden) as refused:
            with viewer.containers.session(box, ["true"]):
                pass
    assert refused.value.status == 403
    assert "developer" in refused.value.detail


# --- CLI -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_env(server: RunningServer, tmp_path_factory) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("COREBASE_")}
    env.update(
        XDG_CONFIG_HOME=str(tmp_path_factory.mktemp("cli-config")),
        COREBASE_URL=server.base_url,
        COREBASE_API_KEY=server.admin_key,
    )
    return env


def corebase(*args: str, env: dict[str, str], stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "corebase", *args], env=env, input=stdin, capture_output=True, timeout=120, cwd=cwd
    )


def test_cli_start_pause_resume(cli_env: dict[str, str], test_image: str):
    started = corebase(
        "containers", "start", "-l", f"{RUN_LABEL}={RUN_ID}", "--ttl", "1h", "--idle-timeout", "15m", "--rm",
        "--json", test_image, "sleep", "600", env=cli_env,
    )
    assert started.returncode == 0, started.stderr
    record = json.loads(started.stdout)
    assert (record["ttl"], record["idleTimeout"], record["autoRemove"]) == (3600.0, 900.0, True)
    try:
        paused = corebase("containers", "pause", "--json", record["id"], env=cli_env)
        assert paused.returncode == 0, paused.stderr
        assert json.loads(paused.stdout)["status"] == "paused"
        refused = corebase("containers", "exec", record["id"], "true", env=cli_env)
        assert refused.returncode == 6
        assert b"resume" in refused.stderr
        resumed = corebase("containers", "resume", record["id"], env=cli_env)
        assert resumed.returncode == 0, resumed.stderr
        assert resumed.stdout.decode().strip() == record["id"]
    finally:
        corebase("containers", "rm", "-f", record["id"], env=cli_env)


def test_cli_exec_with_piped_stdin(cli_env: dict[str, str], box: str):
    result = corebase("containers", "exec", "-i", box, "--", "sh", "-c", "cat; exit 2", env=cli_env, stdin=b"from stdin\n")
    assert result.stdout == b"from stdin\n"
    assert result.returncode == 2


def set_window(descriptor: int, rows: int, cols: int) -> None:
    fcntl.ioctl(descriptor, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def read_until(descriptor: int, expected: bytes) -> bytes:
    seen = b""
    deadline = time.monotonic() + WAIT
    while expected not in seen:
        assert time.monotonic() < deadline, f"{expected!r} did not appear; the terminal showed {seen!r}"
        if select.select([descriptor], [], [], 0.5)[0]:
            seen += os.read(descriptor, 4096)
    return seen


def test_cli_exec_interactive_terminal(cli_env: dict[str, str], box: str):
    controller, terminal = pty.openpty()
    set_window(terminal, 33, 111)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "corebase", "containers", "exec", "-it", box, "--", "sh"],
            env=cli_env,
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            start_new_session=True,
        )
        # Typing before the prompt would be lost: raw mode discards input that arrived before it.
        read_until(controller, b"/ # ")
        os.write(controller, b"stty size\n")
        read_until(controller, b"33 111")

        set_window(terminal, 44, 122)
        process.send_signal(signal.SIGWINCH)
        time.sleep(0.5)
        os.write(controller, b"stty size\n")
        read_until(controller, b"44 122")

        # Raw mode passes Ctrl-C to the shell in the container, which survives it.
        os.write(controller, b"sleep 100\n")
        time.sleep(1)
        os.write(controller, b"\x03")
        os.write(controller, b"echo after=$?\n")
        read_until(controller, b"after=130")

        os.write(controller, b"exit 7\n")
        assert process.wait(timeout=WAIT) == 7
    finally:
        os.close(controller)
        os.close(terminal)


def test_cli_copy_both_ways(cli_env: dict[str, str], box: str, tmp_path: Path):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "top.txt").write_text("top")
    (tree / "sub" / "deep.txt").write_text("deep")
    single = tmp_path / "single.txt"
    single.write_text("single")
    target = "/copy-" + secrets.token_hex(4)

    assert corebase("containers", "cp", str(tree), f"{box}:{target}", env=cli_env).returncode == 0
    assert corebase("containers", "cp", str(single), f"{box}:{target}", env=cli_env).returncode == 0
    assert corebase("containers", "cp", str(single), f"{box}:{target}/renamed.txt", env=cli_env).returncode == 0
    listing = corebase("containers", "exec", box, "--", "find", target, env=cli_env).stdout.decode().split()
    assert sorted(listing) == sorted(
        [target, f"{target}/top.txt", f"{target}/sub", f"{target}/sub/deep.txt", f"{target}/single.txt", f"{target}/renamed.txt"]
    )

    back = tmp_path / "back"
    copied = corebase("containers", "cp", f"{box}:{target}", str(back), env=cli_env)
    assert copied.returncode == 0, copied.stderr
    assert (back / "sub" / "deep.txt").read_text() == "deep"
    assert (back / "renamed.txt").read_text() == "single"

    into = tmp_path / "into"
    into.mkdir()
    assert corebase("containers", "cp", f"{box}:{target}/top.txt", str(into), env=cli_env).returncode == 0
    assert (into / "top.txt").read_text() == "top"

    streamed = corebase("containers", "cp", f"{box}:{target}/sub", "-", env=cli_env)
    assert streamed.returncode == 0
    assert tar_names(streamed.stdout) == ["sub", "sub/deep.txt"]

    missing = corebase("containers", "cp", f"{box}:/no/such/file", str(tmp_path / "x"), env=cli_env)
    assert missing.returncode == 4
    assert b"'/no/such/file' does not exist" in missing.stderr
    both_local = corebase("containers", "cp", str(single), str(tmp_path / "y"), env=cli_env)
    assert both_local.returncode == 2
