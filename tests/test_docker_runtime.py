"""DockerRuntime against the real Docker Engine, plus its pure conversion helpers.

Every container these tests create has a random `cbtest-` name and the corebase.test=true label,
and the `new_spec` fixture removes it after the test, whatever happened.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from corebase.errors import (
    ContainerNotFound,
    ContainerNotRunning,
    ContainerRunning,
    EngineTimeout,
    EngineUnavailable,
    ImageNotFound,
    ImagePullFailed,
    NameInUse,
)
from corebase.runtime import ContainerRuntime
from corebase.runtime.types import ContainerSpec, LogChunk, LogOptions, MountSpec, PortBinding
from corebase.settings import load_settings
from corebase_docker import DockerRuntime, corebase_runtime
from corebase_docker.execs import OutputBuffer
from corebase_docker.images import ImageReference, is_not_found_message, parse_reference
from corebase_docker.specs import create_body
from corebase_docker.state import parse_timestamp, state_from_inspect
from corebase_docker.stats import memory_used, parse_stats
from support.images import TEST_LABEL
from support.registry import push_test_image

MiB = 1024 * 1024
# Upper bound for waits on the engine, so a broken engine fails a test instead of hanging it.
WAIT_LIMIT = 60.0

engine = pytest.mark.engine

SpecFactory = Callable[..., ContainerSpec]


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
async def new_spec(docker: aiodocker.Docker, test_image: str) -> AsyncIterator[SpecFactory]:
    """Return a factory of specs with random names; every container so named is removed afterwards."""
    names: list[str] = []

    def make(**fields: Any) -> ContainerSpec:
        name = fields.pop("name", None) or f"cbtest-{secrets.token_hex(6)}"
        names.append(name)
        labels = {TEST_LABEL: "true", **fields.pop("labels", {})}
        fields.setdefault("image", test_image)
        fields.setdefault("command", ["sleep", "600"])
        fields.setdefault("pull_policy", "never")
        return ContainerSpec(name=name, labels=labels, **fields)

    try:
        yield make
    finally:
        for name in names:
            await remove_if_present(docker, name)


async def run_container(runtime: DockerRuntime, spec: ContainerSpec) -> str:
    engine_id = await runtime.create(spec)
    await runtime.start(engine_id)
    return engine_id


async def wait_exited(docker: aiodocker.Docker, engine_id: str) -> None:
    async with asyncio.timeout(WAIT_LIMIT):
        await docker.containers.container(engine_id).wait()


async def remove_if_present(docker: aiodocker.Docker, name: str) -> None:
    try:
        await docker.containers.container(name).delete(force=True, v=True)
    except aiodocker.DockerError as exc:
        if exc.status != 404:
            raise


async def collect_logs(runtime: DockerRuntime, engine_id: str, options: LogOptions) -> dict[str, bytes]:
    output = {"stdout": b"", "stderr": b""}
    async with asyncio.timeout(WAIT_LIMIT):
        async for chunk in runtime.logs(engine_id, options):
            output[chunk.stream] += chunk.data
    return output


async def names_with_label(docker: aiodocker.Docker, label: str) -> list[str]:
    filters = json.dumps({"label": [label]})
    containers = await docker.containers.list(all=True, filters=filters)
    return [container["Names"][0].lstrip("/") for container in containers]


# --- plugin and engine -------------------------------------------------------------------------


def test_hook_builds_runtime_from_settings() -> None:
    settings = load_settings(
        environ={},
        overrides={
            "docker": {"url": "unix:///tmp/cbtest.sock", "timeout": 7},
            "containers": {"stop_timeout": 3, "log_max_size": "2m", "log_max_files": 5},
        },
    )

    runtime = corebase_runtime(settings)

    assert isinstance(runtime, DockerRuntime)
    assert isinstance(runtime, ContainerRuntime)
    assert runtime.url == "unix:///tmp/cbtest.sock"
    assert runtime.timeout == 7
    assert runtime.stop_timeout == 3
    assert runtime.log_max_size == 2 * MiB
    assert runtime.log_max_files == 5


@engine
async def test_info_reports_engine(runtime: DockerRuntime) -> None:
    info = await runtime.info()

    assert info.backend == "docker"
    assert info.version
    assert info.api_version
    assert info.cgroup_version in ("1", "2")
    assert info.cpus >= 1
    assert info.memory_bytes > 0
    assert "runc" in info.runtimes


async def test_missing_socket_engine_unavailable(tmp_path: Path) -> None:
    socket = tmp_path / "missing" / "docker.sock"
    unreachable = DockerRuntime(f"unix://{socket}", timeout=5)
    try:
        with pytest.raises(EngineUnavailable) as caught:
            await unreachable.info()
    finally:
        await unreachable.close()

    assert str(socket) in caught.value.detail
    assert "is the Docker daemon running" in caught.value.detail
    assert "COREBASE_DOCKER_URL" in caught.value.detail


async def test_refused_socket_engine_unavailable(tmp_path: Path) -> None:
    # A socket file that nothing listens on refuses connections.
    path = tmp_path / "docker.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.close()
    refused = DockerRuntime(f"unix://{path}", timeout=5)
    try:
        with pytest.raises(EngineUnavailable) as caught:
            await refused.info()
    finally:
        await refused.close()

    assert str(path) in caught.value.detail


async def test_silent_engine_times_out(tmp_path: Path) -> None:
    # A server that accepts the connection and never responds acts as a hung engine.
    path = tmp_path / "docker.sock"
    connections: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_unix_server(accept, path=str(path))
    silent = DockerRuntime(f"unix://{path}", timeout=0.5)
    try:
        with pytest.raises(EngineTimeout) as caught:
            await silent.info()
    finally:
        await silent.close()
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()

    assert "timed out after 0.5 s" in caught.value.detail
    assert "docker.timeout" in caught.value.detail


async def test_cut_response_engine_unavailable(tmp_path: Path) -> None:
    # A server that promises a longer body than it sends, then closes, acts as an engine whose
    # connection was lost in the middle of a log stream.
    path = tmp_path / "docker.sock"

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request_line = await reader.readline()
            if not request_line:
                break
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            if b"/json" in request_line:
                body = json.dumps({"Config": {"Tty": True}}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                continue
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\nfirst line\n")
            await writer.drain()
            break
        writer.close()

    server = await asyncio.start_unix_server(answer, path=str(path))
    cut = DockerRuntime(f"unix://{path}", timeout=5)
    try:
        with pytest.raises(EngineUnavailable) as caught:
            async for _ in cut.logs("c1", LogOptions(follow=True)):
                pass
    finally:
        await cut.close()
        server.close()
        await server.wait_closed()

    assert caught.value.status == 503
    assert str(path) in caught.value.detail


# --- create ------------------------------------------------------------------------------------


@engine
async def test_create_hardened_spec(runtime: DockerRuntime, new_spec: SpecFactory, docker: aiodocker.Docker) -> None:
    spec = new_spec(
        memory=64 * MiB,
        nano_cpus=500_000_000,
        pids_limit=64,
        cap_drop=["ALL"],
        cap_add=["CHOWN", "SETUID"],
        security_opt=["no-new-privileges"],
        ports=[PortBinding(container_port=8080), PortBinding(container_port=9090, protocol="udp")],
        env={"GREETING": "hello world"},
        workdir="/tmp",
        labels={"corebase.id": "c-1"},
    )

    engine_id = await run_container(runtime, spec)
    raw = await docker.containers.container(engine_id).show()
    host_config = raw["HostConfig"]

    assert host_config["CapDrop"] == ["ALL"]
    assert host_config["CapAdd"] == ["CHOWN", "SETUID"]
    assert host_config["SecurityOpt"] == ["no-new-privileges"]
    assert host_config["PidsLimit"] == 64
    assert host_config["Memory"] == 64 * MiB
    assert host_config["MemorySwap"] == 64 * MiB
    assert host_config["NanoCpus"] == 500_000_000
    assert host_config["Privileged"] is False
    assert host_config["PortBindings"]["8080/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": ""}]
    assert host_config["PortBindings"]["9090/udp"] == [{"HostIp": "127.0.0.1", "HostPort": ""}]
    assert host_config["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "3", "max-size": str(10 * MiB)}}
    assert "GREETING=hello world" in raw["Config"]["Env"]
    assert raw["Config"]["WorkingDir"] == "/tmp"

    state = await runtime.inspect(engine_id)
    assert state.engine_id == engine_id
    assert state.name == spec.name
    assert state.image == spec.image
    assert state.status == "running"
    assert state.running
    assert state.exit_code is None
    assert state.labels == {TEST_LABEL: "true", "corebase.id": "c-1"}
    assert state.started_at is not None
    assert state.started_at.tzinfo is not None
    assert state.finished_at is None
    published = {(port.container_port, port.protocol): port for port in state.ports}
    assert set(published) == {(8080, "tcp"), (9090, "udp")}
    assert all(port.host_ip == "127.0.0.1" for port in state.ports)
    assert all(port.host_port and port.host_port > 0 for port in state.ports)


@engine
async def test_create_mounts_tmpfs_and_volume(runtime: DockerRuntime, new_spec: SpecFactory) -> None:
    spec = new_spec(mounts=[MountSpec(type="tmpfs", target="/scratch"), MountSpec(type="volume", target="/data")])
    engine_id = await run_container(runtime, spec)

    result = await runtime.exec(engine_id, ["sh", "-c", "cut -d' ' -f2,3 /proc/mounts"])
    mounts = dict(line.split(" ") for line in result.stdout.splitlines())

    assert result.exit_code == 0
    assert mounts["/scratch"] == "tmpfs"
    assert "/data" in mounts


@engine
async def test_create_name_in_use(runtime: DockerRuntime, new_spec: SpecFactory, docker: aiodocker.Docker) -> None:
    group = secrets.token_hex(4)
    first = new_spec(labels={"cbtest.group": group})
    await runtime.create(first)
    second = new_spec(name=first.name, labels={"cbtest.group": group})

    with pytest.raises(NameInUse) as caught:
        await runtime.create(second)

    assert caught.value.extra["name"] == first.name
    assert await names_with_label(docker, f"cbtest.group={group}") == [first.name]


@engine
async def test_lost_create_response_cleanup(runtime: DockerRuntime, new_spec: SpecFactory) -> None:
    # The cleanup that runs when a create request times out or is cancelled after the engine
    # acted: it removes the container with the spec's name only when the labels match.
    spec = new_spec(labels={"corebase.id": secrets.token_hex(4)})
    other = new_spec(labels={"corebase.id": "someone-else"})
    await runtime.create(spec)
    kept = await runtime.create(other)

    await runtime._remove_lost_container(spec)
    await runtime._remove_lost_container(ContainerSpec(image=spec.image, name=other.name, labels=spec.labels))

    with pytest.raises(ContainerNotFound):
        await runtime.inspect(spec.name)
    assert (await runtime.inspect(kept)).name == other.name


@engine
async def test_missing_image_policy_never(runtime: DockerRuntime, new_spec: SpecFactory) -> None:
    spec = new_spec(image="corebase-test/absent:never", pull_policy="never")

    with pytest.raises(ImageNotFound) as caught:
        await runtime.create(spec)

    assert "corebase-test/absent:never" in caught.value.detail
    assert "never" in caught.value.detail
    with pytest.raises(ContainerNotFound):
        await runtime.inspect(spec.name)


@engine
@pytest.mark.registry
async def test_missing_image_policy_missing(runtime: DockerRuntime, new_spec: SpecFactory, registry: str) -> None:
    image = f"{registry}/corebase-test/absent:{secrets.token_hex(4)}"
    spec = new_spec(image=image, pull_policy="missing")

    with pytest.raises(ImageNotFound) as caught:
        await runtime.create(spec)

    assert image in caught.value.detail
    with pytest.raises(ContainerNotFound):
        await runtime.inspect(spec.name)


@engine
@pytest.mark.registry
async def test_create_pulls_missing_image(
    runtime: DockerRuntime, new_spec: SpecFactory, docker: aiodocker.Docker, registry: str, test_image: str
) -> None:
    reference = await push_test_image(registry, test_image, docker=docker)
    spec = new_spec(image=reference, pull_policy="missing", command=["echo", "pulled"])
    try:
        engine_id = await run_container(runtime, spec)
        await wait_exited(docker, engine_id)

        state = await runtime.inspect(engine_id)
        assert state.exit_code == 0
        assert state.image == reference
        assert (await docker.images.inspect(reference))["Id"]
    finally:
        # The container goes first, so untagging the pulled image leaves no dangling reference.
        await remove_if_present(docker, spec.name)
        await docker.images.delete(reference, noprune=True)


@engine
async def test_pull_unreachable_registry(runtime: DockerRuntime) -> None:
    # Port 1 on loopback has no registry, so the engine's connection is refused.
    image = "127.0.0.1:1/corebase-test/busybox:1"

    with pytest.raises(ImagePullFailed) as caught:
        await runtime.pull(image)

    assert caught.value.extra["image"] == image


# --- exec --------------------------------------------------------------------------------------


@pytest.fixture
async def running(runtime: DockerRuntime, new_spec: SpecFactory) -> str:
    """Engine id of a running `sleep 600` container."""
    return await run_container(runtime, new_spec())


@engine
async def test_exec_separates_streams(runtime: DockerRuntime, running: str) -> None:
    result = await runtime.exec(running, ["sh", "-c", "echo out; echo err >&2; echo out2; exit 3"])

    assert result.exit_code == 3
    assert result.stdout == "out\nout2\n"
    assert result.stderr == "err\n"
    assert not result.truncated
    assert not result.timed_out


@engine
async def test_exec_env_workdir_user(runtime: DockerRuntime, running: str) -> None:
    result = await runtime.exec(
        running, ["sh", "-c", 'echo "$GREETING"; pwd; id -u'], env={"GREETING": "hi there"}, workdir="/bin", user="1234"
    )

    assert result.exit_code == 0
    assert result.stdout == "hi there\n/bin\n1234\n"


@engine
async def test_exec_decodes_utf8(runtime: DockerRuntime, running: str) -> None:
    result = await runtime.exec(running, ["sh", "-c", r"printf 'caf\303\251 \342\234\223\n'; printf 'bad \377\n' >&2"])

    assert result.stdout == "café ✓\n"
    assert result.stderr == "bad \ufffd\n"


@engine
async def test_exec_nonexistent_command(runtime: DockerRuntime, running: str) -> None:
    result = await runtime.exec(running, ["/no/such/command", "arg"])

    assert result.exit_code in (126, 127)
    assert "/no/such/command" in result.stderr
    assert "exec failed" in result.stderr
    assert result.stdout == ""
    assert not result.timed_out


@engine
async def test_exec_command_not_in_path(runtime: DockerRuntime, running: str) -> None:
    result = await runtime.exec(running, ["no-such-command"])

    assert result.exit_code in (126, 127)
    assert "no-such-command" in result.stderr


@engine
async def test_exec_truncates_output(runtime: DockerRuntime, running: str) -> None:
    command = ["sh", "-c", "head -c 200000 /dev/zero | tr '\\0' a; echo done >&2"]

    result = await runtime.exec(running, command, max_output=1000)

    assert result.exit_code == 0
    assert result.truncated
    assert result.stdout == "a" * 1000
    # stderr comes after all of stdout, so it arrives only because stdout kept being drained.
    assert result.stderr == "done\n"


@engine
async def test_exec_timeout_kills_process(runtime: DockerRuntime, running: str) -> None:
    result = await runtime.exec(running, ["sh", "-c", "echo started; exec sleep 321"], timeout=1.5)

    assert result.timed_out
    assert result.exit_code is None
    assert result.stdout == "started\n"

    processes = await runtime.exec(running, ["ps", "-o", "args"])
    assert "sleep 321" not in processes.stdout


async def zombies_after_killed_child(runtime: DockerRuntime, engine_id: str) -> list[str]:
    """Time out an exec whose child outlives it, and return the zombie lines of `ps` afterwards."""
    result = await runtime.exec(engine_id, ["sh", "-c", "sleep 322 & exec sleep 323"], timeout=1.0)
    assert result.timed_out
    async with asyncio.timeout(10):
        while "sleep 32" in (listing := (await runtime.exec(engine_id, ["ps", "-o", "stat,args"])).stdout):
            await asyncio.sleep(0.2)
    return [line for line in listing.splitlines() if line.lstrip().startswith("Z")]


@engine
async def test_killed_child_left_as_zombie(runtime: DockerRuntime, running: str) -> None:
    # Without an init, the killed child's new parent is `sleep 600`, which never reaps it.
    assert len(await zombies_after_killed_child(runtime, running)) == 1


@engine
async def test_init_reaps_killed_child(runtime: DockerRuntime, new_spec: SpecFactory, docker: aiodocker.Docker) -> None:
    engine_id = await run_container(runtime, new_spec(init=True))

    assert (await docker.containers.container(engine_id).show())["HostConfig"]["Init"] is True
    assert await zombies_after_killed_child(runtime, engine_id) == []


@engine
async def test_exec_in_stopped_container(runtime: DockerRuntime, new_spec: SpecFactory) -> None:
    engine_id = await runtime.create(new_spec())

    with pytest.raises(ContainerNotRunning) as caught:
        await runtime.exec(engine_id, ["true"])

    assert caught.value.extra["containerId"] == engine_id


@engine
async def test_exec_in_unknown_container(runtime: DockerRuntime) -> None:
    with pytest.raises(ContainerNotFound):
        await runtime.exec("cbtest-no-such-container", ["true"])


# --- stop, restart, remove ---------------------------------------------------------------------


@engine
async def test_stop_waits_grace_period(new_spec: SpecFactory) -> None:
    # The client timeout (2 s) is shorter than the grace period (4 s): the stop must still succeed.
    short_timeout = DockerRuntime(timeout=2.0)
    spec = new_spec(command=["sh", "-c", 'trap "" TERM; sleep 600'])
    try:
        engine_id = await run_container(short_timeout, spec)
        await asyncio.sleep(0.5)  # let sh install its trap before the stop signal arrives

        started = time.monotonic()
        await short_timeout.stop(engine_id, timeout=4)
        elapsed = time.monotonic() - started

        state = await short_timeout.inspect(engine_id)
    finally:
        await short_timeout.close()

    assert elapsed >= 3.5, f"stop returned after {elapsed:.1f} s, before the 4 s grace period"
    assert state.status == "exited"
    assert state.exit_code == 137
    assert state.oom_killed is False
    assert state.finished_at is not None


@engine
async def test_stop_stopped_container(runtime: DockerRuntime, running: str) -> None:
    await runtime.stop(running, timeout=0)

    with pytest.raises(ContainerNotRunning):
        await runtime.stop(running, timeout=0)


@engine
async def test_stop_unknown_container(runtime: DockerRuntime) -> None:
    with pytest.raises(ContainerNotFound):
        await runtime.stop("cbtest-no-such-container", timeout=0)


@engine
async def test_restart_starts_again(runtime: DockerRuntime, running: str) -> None:
    before = await runtime.inspect(running)

    await runtime.restart(running, timeout=0)
    after = await runtime.inspect(running)

    assert after.status == "running"
    assert before.started_at is not None
    assert after.started_at is not None
    assert after.started_at > before.started_at


@engine
async def test_remove_running_needs_force(runtime: DockerRuntime, running: str) -> None:
    with pytest.raises(ContainerRunning):
        await runtime.remove(running)

    await runtime.remove(running, force=True)

    with pytest.raises(ContainerNotFound):
        await runtime.inspect(running)


@engine
async def test_remove_unknown_container(runtime: DockerRuntime) -> None:
    with pytest.raises(ContainerNotFound):
        await runtime.remove("cbtest-no-such-container")


@engine
async def test_list_by_labels(runtime: DockerRuntime, new_spec: SpecFactory) -> None:
    group = secrets.token_hex(4)
    first = await run_container(runtime, new_spec(labels={"cbtest.group": group}))
    second = await runtime.create(new_spec(labels={"cbtest.group": group}))
    await runtime.create(new_spec(labels={"cbtest.group": "other"}))

    states = await runtime.list({"cbtest.group": group, TEST_LABEL: "true"})

    by_id = {state.engine_id: state for state in states}
    assert set(by_id) == {first, second}
    assert by_id[first].status == "running"
    assert by_id[second].status == "created"
    assert by_id[first].labels["cbtest.group"] == group


# --- logs --------------------------------------------------------------------------------------


@engine
async def test_logs_without_tty(runtime: DockerRuntime, new_spec: SpecFactory, docker: aiodocker.Docker) -> None:
    script = r"printf 'out1\n'; printf 'err1\n' >&2; printf 'out2 \303\251\n'; printf 'no newline' >&2"
    engine_id = await run_container(runtime, new_spec(command=["sh", "-c", script]))
    await wait_exited(docker, engine_id)

    both = await collect_logs(runtime, engine_id, LogOptions())
    stdout_only = await collect_logs(runtime, engine_id, LogOptions(stderr=False))

    assert both == {"stdout": "out1\nout2 é\n".encode(), "stderr": b"err1\nno newline"}
    assert stdout_only == {"stdout": "out1\nout2 é\n".encode(), "stderr": b""}


@engine
async def test_logs_tail(runtime: DockerRuntime, new_spec: SpecFactory, docker: aiodocker.Docker) -> None:
    # One stream only: the engine counts `tail` lines over both streams before it filters them,
    # and the order of lines from two streams in the log file depends on scheduling.
    engine_id = await run_container(runtime, new_spec(command=["sh", "-c", "echo one; echo two; echo three"]))
    await wait_exited(docker, engine_id)

    last = await collect_logs(runtime, engine_id, LogOptions(tail=1))
    everything = await collect_logs(runtime, engine_id, LogOptions(tail=None))

    assert last == {"stdout": b"three\n", "stderr": b""}
    assert everything == {"stdout": b"one\ntwo\nthree\n", "stderr": b""}


@engine
async def test_logs_since_and_until(runtime: DockerRuntime, new_spec: SpecFactory, docker: aiodocker.Docker) -> None:
    before_start = time.time() - 60
    engine_id = await run_container(runtime, new_spec(command=["echo", "line"]))
    await wait_exited(docker, engine_id)

    in_window = await collect_logs(runtime, engine_id, LogOptions(since=before_start, until=time.time() + 60))
    after = await collect_logs(runtime, engine_id, LogOptions(since=time.time() + 60))
    before = await collect_logs(runtime, engine_id, LogOptions(until=before_start))

    assert in_window["stdout"] == b"line\n"
    assert after["stdout"] == b""
    assert before["stdout"] == b""


@engine
async def test_logs_with_tty(runtime: DockerRuntime, new_spec: SpecFactory, docker: aiodocker.Docker) -> None:
    script = r"printf 'out\n'; printf 'err\n' >&2"
    engine_id = await run_container(runtime, new_spec(command=["sh", "-c", script], tty=True))
    await wait_exited(docker, engine_id)

    output = await collect_logs(runtime, engine_id, LogOptions())

    # The TTY merges both streams and turns "\n" into "\r\n".
    assert output == {"stdout": b"out\r\nerr\r\n", "stderr": b""}
    assert (await runtime.inspect(engine_id)).tty


@engine
async def test_logs_timestamps(runtime: DockerRuntime, new_spec: SpecFactory, docker: aiodocker.Docker) -> None:
    engine_id = await run_container(runtime, new_spec(command=["echo", "stamped"]))
    await wait_exited(docker, engine_id)

    output = await collect_logs(runtime, engine_id, LogOptions(timestamps=True))

    stamp, _, text = output["stdout"].decode().partition(" ")
    assert text == "stamped\n"
    assert parse_timestamp(stamp) is not None


@engine
async def test_logs_follow_ends_on_exit(runtime: DockerRuntime, new_spec: SpecFactory) -> None:
    engine_id = await run_container(runtime, new_spec(command=["sh", "-c", "echo first; sleep 2; echo last"]))

    output = await collect_logs(runtime, engine_id, LogOptions(follow=True))

    assert output["stdout"] == b"first\nlast\n"
    assert (await runtime.inspect(engine_id)).status == "exited"


@engine
async def test_logs_follow_stopped_by_consumer(runtime: DockerRuntime, new_spec: SpecFactory) -> None:
    engine_id = await run_container(runtime, new_spec(command=["sh", "-c", "echo ready; exec sleep 600"]))
    chunks: list[LogChunk] = []

    async with asyncio.timeout(WAIT_LIMIT):
        stream = runtime.logs(engine_id, LogOptions(follow=True))
        async for chunk in stream:
            chunks.append(chunk)
            break
        await stream.aclose()

    assert chunks == [LogChunk(stream="stdout", data=b"ready\n")]
    assert (await runtime.inspect(engine_id)).status == "running"


@engine
async def test_logs_unknown_container(runtime: DockerRuntime) -> None:
    with pytest.raises(ContainerNotFound):
        await collect_logs(runtime, "cbtest-no-such-container", LogOptions())


# --- stats and OOM -----------------------------------------------------------------------------


@engine
async def test_stats_of_running_container(runtime: DockerRuntime, new_spec: SpecFactory) -> None:
    engine_id = await run_container(runtime, new_spec(memory=64 * MiB, command=["sh", "-c", "sleep 600 & sleep 600"]))

    sample = await runtime.stats(engine_id)

    assert sample.memory_used > 0
    assert sample.memory_used <= sample.memory_limit
    assert sample.memory_limit == 64 * MiB
    assert sample.pids >= 1
    assert sample.online_cpus >= 1
    assert sample.cpu_total_ns > 0
    assert sample.system_cpu_ns is not None
    assert sample.read_at.tzinfo is not None
    assert abs((datetime.now(timezone.utc) - sample.read_at).total_seconds()) < 300


@engine
async def test_stats_without_network(runtime: DockerRuntime, new_spec: SpecFactory) -> None:
    engine_id = await run_container(runtime, new_spec(network_mode="none"))

    sample = await runtime.stats(engine_id)

    assert sample.network_rx_bytes == 0
    assert sample.network_tx_bytes == 0


@engine
async def test_stats_of_stopped_container(runtime: DockerRuntime, new_spec: SpecFactory) -> None:
    engine_id = await runtime.create(new_spec())

    with pytest.raises(ContainerNotRunning):
        await runtime.stats(engine_id)


@engine
async def test_oom_kill_reported(runtime: DockerRuntime, new_spec: SpecFactory, docker: aiodocker.Docker) -> None:
    # Holding 64 MB in a shell variable needs far more than the 8 MiB limit without swap.
    script = 'x=$(head -c 64000000 /dev/zero | tr "\\0" a); echo ${#x}'
    engine_id = await run_container(runtime, new_spec(memory=8 * MiB, command=["sh", "-c", script]))
    await wait_exited(docker, engine_id)

    state = await runtime.inspect(engine_id)

    assert state.oom_killed is True
    assert state.exit_code == 137
    assert state.status == "exited"


# --- pure helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("busybox", ImageReference("busybox")),
        ("busybox:1.36", ImageReference("busybox", tag="1.36")),
        ("library/busybox:latest", ImageReference("library/busybox", tag="latest")),
        ("127.0.0.1:5000/x/y:tag", ImageReference("127.0.0.1:5000/x/y", tag="tag")),
        ("127.0.0.1:5000/x/y", ImageReference("127.0.0.1:5000/x/y")),
        ("registry.local:443/app@sha256:abcd", ImageReference("registry.local:443/app", digest="sha256:abcd")),
        ("app:1@sha256:abcd", ImageReference("app", tag="1", digest="sha256:abcd")),
    ],
)
def test_parse_image_reference(image: str, expected: ImageReference) -> None:
    assert parse_reference(image) == expected


def test_pull_tag_defaults_to_latest() -> None:
    assert parse_reference("127.0.0.1:5000/x/y").pull_tag == "latest"
    assert parse_reference("app:1@sha256:abcd").pull_tag == "sha256:abcd"


@pytest.mark.parametrize(
    ("message", "not_found"),
    [
        ("manifest for 127.0.0.1:5055/x:1 not found: manifest unknown: manifest unknown", True),
        ("pull access denied for nope, repository does not exist or may require 'docker login'", True),
        ("repository 127.0.0.1:5055/x not found: name unknown", True),
        ('Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused', False),
        ("received unexpected HTTP status: 500 Internal Server Error", False),
    ],
)
def test_pull_error_classification(message: str, not_found: bool) -> None:
    assert is_not_found_message(message) is not_found


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-03-01T10:20:30.123456789Z", datetime(2024, 3, 1, 10, 20, 30, 123456, tzinfo=timezone.utc)),
        ("2024-03-01T10:20:30Z", datetime(2024, 3, 1, 10, 20, 30, tzinfo=timezone.utc)),
        ("2024-03-01T12:20:30.5+02:00", datetime(2024, 3, 1, 10, 20, 30, 500000, tzinfo=timezone.utc)),
        ("0001-01-01T00:00:00Z", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_timestamp(value: str | None, expected: datetime | None) -> None:
    assert parse_timestamp(value) == expected


def test_create_body_from_spec() -> None:
    spec = ContainerSpec(
        image="app:1",
        name="cbtest-body",
        labels={"a": "b"},
        command=["run"],
        ports=[PortBinding(container_port=80, host_port=8080, host_ip="127.0.0.1")],
        memory=128 * MiB,
    )

    body = create_body(spec, stop_timeout=2.5)

    assert body["Cmd"] == ["run"]
    assert "Entrypoint" not in body
    assert body["StopTimeout"] == 3
    assert body["ExposedPorts"] == {"80/tcp": {}}
    assert body["HostConfig"]["PortBindings"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]}
    assert body["HostConfig"]["Memory"] == body["HostConfig"]["MemorySwap"] == 128 * MiB
    assert "NanoCpus" not in body["HostConfig"]
    assert body["HostConfig"]["LogConfig"] == {"Type": "json-file", "Config": {"max-size": str(10 * MiB), "max-file": "3"}}


def test_create_body_log_limits() -> None:
    spec = ContainerSpec(image="app:1", name="cbtest-body", labels={})

    body = create_body(spec, stop_timeout=1, log_max_size=300 * MiB, log_max_files=1)

    assert body["HostConfig"]["LogConfig"] == {"Type": "json-file", "Config": {"max-size": str(300 * MiB), "max-file": "1"}}


def test_inspect_exit_code_only_after_exit() -> None:
    created = {
        "Id": "abc",
        "Name": "/cbtest-x",
        "Created": "2024-01-01T00:00:00.1Z",
        "State": {
            "Status": "created",
            "ExitCode": 0,
            "StartedAt": "0001-01-01T00:00:00Z",
            "FinishedAt": "0001-01-01T00:00:00Z",
        },
        "Config": {"Image": "app:1", "Labels": None, "Tty": False},
        "NetworkSettings": {"Ports": {}},
        "HostConfig": {"PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": ""}]}},
    }

    state = state_from_inspect(created)

    assert state.exit_code is None
    assert state.started_at is None
    assert state.labels == {}
    assert state.ports == [PortBinding(container_port=80, host_port=None, host_ip="0.0.0.0")]


# Shaped like an Engine 20.10 reading on cgroup v1, trimmed to the fields StatsSample uses, with a
# second interface and a second device to check the sums.
STATS_V1 = {
    "read": "2024-03-01T10:20:30.123456789Z",
    "pids_stats": {"current": 3},
    "networks": {"eth0": {"rx_bytes": 486, "tx_bytes": 10}, "eth1": {"rx_bytes": 14, "tx_bytes": 5}},
    "blkio_stats": {
        "io_service_bytes_recursive": [
            {"major": 8, "minor": 0, "op": "Read", "value": 4096},
            {"major": 8, "minor": 0, "op": "Write", "value": 8192},
            {"major": 8, "minor": 16, "op": "read", "value": 1},
            {"major": 8, "minor": 0, "op": "Total", "value": 12288},
        ]
    },
    "cpu_stats": {
        "cpu_usage": {"total_usage": 57136309, "percpu_usage": [1, 2, 3, 4]},
        "system_cpu_usage": 1685980000000,
    },
    "memory_stats": {"usage": 3000000, "limit": 67108864, "stats": {"total_inactive_file": 1000000}},
}


def test_stats_cgroup_v1() -> None:
    sample = parse_stats(STATS_V1)

    assert sample.read_at == datetime(2024, 3, 1, 10, 20, 30, 123456, tzinfo=timezone.utc)
    assert sample.cpu_total_ns == 57136309
    assert sample.system_cpu_ns == 1685980000000
    assert sample.online_cpus == 4
    assert sample.memory_used == 2000000
    assert sample.memory_limit == 67108864
    assert sample.network_rx_bytes == 500
    assert sample.network_tx_bytes == 15
    assert sample.block_read_bytes == 4097
    assert sample.block_write_bytes == 8192
    assert sample.pids == 3


def test_stats_without_optional_sections() -> None:
    raw = {
        "read": "2024-03-01T10:20:30Z",
        "cpu_stats": {"cpu_usage": {"total_usage": 5}, "online_cpus": 0},
        "memory_stats": {"usage": 100, "limit": 200},
        "blkio_stats": {"io_service_bytes_recursive": None},
        "pids_stats": {},
    }

    sample = parse_stats(raw)

    assert sample.system_cpu_ns is None
    assert sample.online_cpus == 1
    assert sample.memory_used == 100
    assert sample.network_rx_bytes == 0
    assert sample.block_read_bytes == 0
    assert sample.pids == 0


@pytest.mark.parametrize(
    ("memory_stats", "expected"),
    [
        ({"usage": 1000, "stats": {"total_inactive_file": 300}}, 700),
        ({"usage": 1000, "stats": {"inactive_file": 400}}, 600),
        ({"usage": 1000, "stats": {"total_inactive_file": 2000}}, 1000),
        ({"usage": 1000, "stats": {"inactive_file": 1000}}, 1000),
        ({"usage": 1000, "stats": {}}, 1000),
        ({}, 0),
    ],
)
def test_memory_used_like_docker_cli(memory_stats: dict[str, Any], expected: int) -> None:
    assert memory_used(memory_stats) == expected


def test_output_buffer_drops_cut_character() -> None:
    buffer = OutputBuffer(limit=4)

    buffer.add("stdout", "ab✓".encode())  # "✓" is 3 bytes, so only its first byte fits
    buffer.add("stderr", b"ok")

    assert buffer.truncated
    assert buffer.text("stdout") == "ab"
    assert buffer.text("stderr") == "ok"
