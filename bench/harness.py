"""Shared parts of the benchmarks in bench/: the server under test, the replayed engine create body,
machine facts, statistics and the clean-up of labelled containers.

Each benchmark starts its own `corebase serve` on a free loopback port with a temporary data
directory, and labels every container it creates with `corebase-bench.run=<run id>` so that it
can remove exactly those containers on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiodocker
import aiohttp
import httpx

REPOSITORY = Path(__file__).resolve().parent.parent
# The test image builders live with the tests, which import them as the `support` package.
sys.path.insert(0, str(REPOSITORY / "tests"))

RUN_LABEL = "corebase-bench.run"
# Raw containers carry CoreBase's labels under this prefix instead of `corebase.`, with the same
# count and similar sizes, so CoreBase's label filter `corebase.managed=true` does not match them.
RAW_LABEL_PREFIX = "corebase-bench.raw."

# Seconds the server gets to respond to /health after it was started.
SERVER_START_TIMEOUT = 60.0
# Seconds the server gets to shut down after SIGTERM before it is killed.
SERVER_STOP_TIMEOUT = 30.0
# Seconds one API request, one engine request or one whole raw exec may take.
REQUEST_TIMEOUT = 60.0
# Inspections of a finished exec before its missing exit code counts as an error.
EXIT_CODE_ATTEMPTS = 100

# Config fields of an inspected container that the create endpoint takes back unchanged.
# Hostname is left out because the engine derives it from the new container's id.
REPLAYED_CONFIG_FIELDS = (
    "Image",
    "Cmd",
    "Entrypoint",
    "Env",
    "Labels",
    "Tty",
    "OpenStdin",
    "StdinOnce",
    "AttachStdin",
    "AttachStdout",
    "AttachStderr",
    "WorkingDir",
    "User",
    "ExposedPorts",
    "Volumes",
    "StopSignal",
    "StopTimeout",
)


# --- the server under test -----------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen
    base_url: str
    admin_key: str
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(cannot read {self.log_path}: {exc})"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_command(port: int, data_dir: Path) -> list[str]:
    """Return the `corebase serve` command line, preferring the console script beside this interpreter."""
    script = Path(sys.executable).with_name("corebase")
    program = [str(script)] if script.is_file() else [sys.executable, "-m", "corebase"]
    return [*program, "serve", "--port", str(port), "--data-dir", str(data_dir)]


def start_server(data_dir: Path, settings: dict[str, str] | None = None) -> Server:
    """Start `corebase serve` on a free loopback port, logging to a file in `data_dir`.

    `settings` maps `COREBASE_*` environment variables to values for the server. Any other
    `COREBASE_*` variable of this process is left out, so the server runs with its defaults.
    The server runs in its own session, so a Ctrl-C in the terminal reaches only this script, which
    then stops the server itself.
    """
    port = free_port()
    admin_key = "cbk_bench_" + secrets.token_urlsafe(24)
    environment = {name: value for name, value in os.environ.items() if not name.startswith("COREBASE_")}
    # A benchmark sends requests as fast as the server handles them, so the rate limit would reject some.
    environment["COREBASE_RATE_LIMIT_REQUESTS_PER_MINUTE"] = "0"
    environment.update(settings or {})
    environment["COREBASE_ADMIN_API_KEY"] = admin_key
    log_path = data_dir / "server.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            server_command(port, data_dir),
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(process, f"http://127.0.0.1:{port}", admin_key, log_path)


async def wait_until_healthy(server: Server) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    async with httpx.AsyncClient(base_url=server.base_url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(
                    f"corebase serve exited with code {server.process.returncode}; its log ends with:\n"
                    + server.log_tail()
                )
            try:
                response = await client.get("/health")
                if response.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(
        f"corebase serve did not respond to /health within {SERVER_START_TIMEOUT:g} s; its log ends with:\n"
        + server.log_tail()
    )


def stop_server(server: Server) -> None:
    """Stop the server with SIGTERM, then SIGKILL after SERVER_STOP_TIMEOUT seconds."""
    if server.process.poll() is not None:
        return
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=SERVER_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        print(f"corebase serve (pid {server.process.pid}) ignored SIGTERM; killing it", file=sys.stderr)
        server.process.kill()
        server.process.wait()


# --- engine facts and the replayed create body ---------------------------------------------


async def machine_facts(docker: aiodocker.Docker) -> dict[str, Any]:
    info = await docker.system.info()
    version = await docker.version()
    return {
        "cpus": os.cpu_count(),
        "engineCpus": info.get("NCPU"),
        "memoryBytes": info.get("MemTotal"),
        "engineVersion": info.get("ServerVersion"),
        "engineApiVersion": version.get("ApiVersion"),
        "cgroupVersion": info.get("CgroupVersion"),
        "cgroupDriver": info.get("CgroupDriver"),
        "storageDriver": info.get("Driver"),
        "kernel": info.get("KernelVersion"),
        "os": info.get("OperatingSystem"),
        "python": sys.version.split()[0],
    }


def raw_labels(api_labels: dict[str, str], image_labels: dict[str, str]) -> dict[str, str]:
    """Return the labels for a raw container, given the labels of an API-created one.

    Labels the image itself sets are dropped, because the engine adds them again. `corebase.*`
    labels move under RAW_LABEL_PREFIX, and the CoreBase id gets a fresh value of the same length.
    """
    labels = {}
    for key, value in api_labels.items():
        if image_labels.get(key) == value:
            continue
        if key.startswith("corebase."):
            suffix = key.removeprefix("corebase.")
            if suffix == "id":
                value = "ctr_" + secrets.token_hex(8)
            labels[RAW_LABEL_PREFIX + suffix] = value
        else:
            labels[key] = value
    return labels


def replay_body(inspected: dict[str, Any], image_labels: dict[str, str]) -> dict[str, Any]:
    """Return a create body equal to the one that produced the inspected container, apart from labels."""
    config = inspected["Config"]
    body = {name: config[name] for name in REPLAYED_CONFIG_FIELDS if name in config}
    body["Labels"] = raw_labels(config.get("Labels") or {}, image_labels)
    body["HostConfig"] = dict(inspected["HostConfig"])
    return body


def config_differences(api: dict[str, Any], raw: dict[str, Any]) -> list[str]:
    """Name the Config and HostConfig fields in which two inspected containers differ.

    Hostname and the label values are expected to differ and are compared by count only.
    """
    differences = []
    for section, ignored in (("Config", {"Hostname", "Labels"}), ("HostConfig", set())):
        left, right = api[section], raw[section]
        for name in sorted(set(left) | set(right)):
            if name not in ignored and left.get(name) != right.get(name):
                differences.append(f"{section}.{name}: api {left.get(name)!r}, raw {right.get(name)!r}")
    api_labels = api["Config"].get("Labels") or {}
    raw_labels_found = raw["Config"].get("Labels") or {}
    if len(api_labels) != len(raw_labels_found):
        differences.append(f"Config.Labels: api has {len(api_labels)} labels, raw has {len(raw_labels_found)}")
    return differences


# --- the timed operations ------------------------------------------------------------------


def elapsed_ms(started: int) -> float:
    return (time.perf_counter_ns() - started) / 1e6


@dataclass
class StartBench:
    """Cold starts of one command in one image, through the API and straight through the engine.

    `raw_body` is empty until `prepare_replay` fills it from a container the API started.
    """

    run_id: str
    client: httpx.AsyncClient
    docker: aiodocker.Docker
    image: str
    command: list[str]
    raw_body: dict[str, Any] = field(default_factory=dict)

    def start_body(self) -> dict[str, Any]:
        return {"image": self.image, "command": self.command, "labels": {RUN_LABEL: self.run_id}}

    async def api_start(self) -> tuple[float, dict[str, Any]]:
        """Start a container through the API; return the time in ms and the response record."""
        body = self.start_body()
        started = time.perf_counter_ns()
        response = await self.client.post("/api/runtime/start", json=body)
        duration = elapsed_ms(started)
        if response.status_code != 201:
            raise RuntimeError(f"POST /api/runtime/start failed with {response.status_code}: {response.text}")
        record = response.json()
        if record.get("status") != "running":
            raise RuntimeError(f"POST /api/runtime/start returned status {record.get('status')!r}, expected 'running'")
        return duration, record

    async def api_remove(self, container_id: str) -> None:
        response = await self.client.post("/api/runtime/remove", json={"containerId": container_id, "force": True})
        if response.status_code != 200:
            raise RuntimeError(
                f"POST /api/runtime/remove of {container_id} failed with {response.status_code}: {response.text}"
            )

    async def raw_start(self) -> tuple[float, str]:
        """Create and start a container with the replayed body; return the time in ms and the engine id."""
        labels = {**self.raw_body["Labels"], RAW_LABEL_PREFIX + "id": "ctr_" + secrets.token_hex(8)}
        body = {**self.raw_body, "Labels": labels}
        name = "cbbench-" + secrets.token_hex(8)
        started = time.perf_counter_ns()
        container = await self.docker.containers.create(body, name=name)
        await container.start()
        duration = elapsed_ms(started)
        return duration, container.id

    async def raw_remove(self, engine_id: str) -> None:
        await self.docker.containers.container(engine_id).delete(force=True, v=True)


async def prepare_replay(bench: StartBench) -> list[str]:
    """Derive the raw create body from an API-started container; return where the two configs differ."""
    _, record = await bench.api_start()
    try:
        api_inspected = await bench.docker.containers.container(record["dockerId"]).show()
        image = await bench.docker.images.inspect(bench.image)
        image_labels = (image.get("Config") or {}).get("Labels") or {}
        bench.raw_body = replay_body(api_inspected, image_labels)

        _, engine_id = await bench.raw_start()
        try:
            raw_inspected = await bench.docker.containers.container(engine_id).show()
        finally:
            await bench.raw_remove(engine_id)
    finally:
        await bench.api_remove(record["id"])
    return config_differences(api_inspected, raw_inspected)


async def raw_exec(docker: aiodocker.Docker, engine_id: str, command: list[str]) -> tuple[bytes, int]:
    """Run `command` through aiodocker the way a minimal client does; return its output and exit code.

    The output is stdout and stderr together. Raises RuntimeError when the engine reports no exit code.
    """
    exec_ = await docker.containers.container(engine_id).exec(command, stdout=True, stderr=True)
    output = bytearray()
    async with asyncio.timeout(REQUEST_TIMEOUT):
        async with exec_.start(detach=False) as stream:
            while (message := await stream.read_out()) is not None:
                output += message.data
    # The engine may record the exit code a moment after the stream ends, so inspect again without waiting.
    for _ in range(EXIT_CODE_ATTEMPTS):
        info = await exec_.inspect()
        if not info["Running"] and info["ExitCode"] is not None:
            return bytes(output), info["ExitCode"]
    raise RuntimeError(f"exec {exec_.id} reports no exit code after {EXIT_CODE_ATTEMPTS} inspections")


# --- measurement loops ---------------------------------------------------------------------


async def measure_pair(
    name: str,
    api: Callable[[], Awaitable[float]],
    raw: Callable[[], Awaitable[float]],
    runs: int,
    warmup: int,
) -> dict[str, list[float]]:
    """Time `api` and `raw` once per iteration, swapping their order every iteration.

    The first `warmup` iterations are run and discarded.
    """
    samples: dict[str, list[float]] = {"api": [], "raw": []}
    for iteration in range(warmup + runs):
        order = [("api", api), ("raw", raw)] if iteration % 2 == 0 else [("raw", raw), ("api", api)]
        for path, operation in order:
            duration = await operation()
            if iteration >= warmup:
                samples[path].append(duration)
        if (iteration + 1) % 10 == 0 or iteration + 1 == warmup + runs:
            print(f"  {name}: {iteration + 1}/{warmup + runs} iterations", file=sys.stderr, flush=True)
    return samples


async def measure_starts(bench: StartBench, runs: int, warmup: int) -> dict[str, list[float]]:
    async def api() -> float:
        duration, record = await bench.api_start()
        await bench.api_remove(record["id"])
        return duration

    async def raw() -> float:
        duration, engine_id = await bench.raw_start()
        await bench.raw_remove(engine_id)
        return duration

    return await measure_pair("cold start", api, raw, runs, warmup)


# --- statistics and the report -------------------------------------------------------------


def summarize(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    # With method="inclusive" the percentiles interpolate between observed values, like numpy's default.
    # With 101 samples or fewer, p99 lies between the two largest.
    deciles = statistics.quantiles(ordered, n=10, method="inclusive")
    percentiles = statistics.quantiles(ordered, n=100, method="inclusive")
    return {
        "p50": statistics.median(ordered),
        "p90": deciles[8],
        "p99": percentiles[98],
        "mean": statistics.fmean(ordered),
        "min": ordered[0],
        "max": ordered[-1],
    }


def format_machine(facts: dict[str, Any]) -> str:
    memory_gib = (facts["memoryBytes"] or 0) / 2**30
    return "\n".join(
        [
            f"CPUs: {facts['cpus']} (engine reports {facts['engineCpus']}), memory {memory_gib:.1f} GiB",
            f"engine: Docker {facts['engineVersion']} (API {facts['engineApiVersion']}), "
            f"cgroup v{facts['cgroupVersion']} ({facts['cgroupDriver']}), storage driver {facts['storageDriver']}",
            f"kernel: {facts['kernel']}, {facts['os']}, Python {facts['python']}",
        ]
    )


def add_setting_option(parser: argparse.ArgumentParser) -> None:
    """Add the repeatable --setting NAME=VALUE option, which passes a COREBASE_* variable to the server."""
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a COREBASE_* variable for the server, such as COREBASE_NETWORKS_PER_OWNER=false; repeat for more",
    )


def server_settings(parser: argparse.ArgumentParser, values: list[str]) -> dict[str, str]:
    """Return the --setting values as a dict, or exit with a usage error naming the invalid one."""
    settings = {}
    for value in values:
        name, separator, setting = value.partition("=")
        if not separator or not name.startswith("COREBASE_"):
            parser.error(f"--setting {value!r} is invalid; write COREBASE_NAME=value")
        settings[name] = setting
    return settings


def command_line() -> str:
    """Return the command that started this script, with the interpreter relative to the working directory."""
    interpreter = sys.executable
    try:
        relative = os.path.relpath(interpreter)
        if not relative.startswith(".."):
            interpreter = relative
    except ValueError:
        pass
    return shlex.join([interpreter, *sys.argv])


# --- clean-up ------------------------------------------------------------------------------


async def remove_run_containers(run_id: str) -> int:
    """Remove every container labelled with this run's id; return how many were removed.

    Lists again after removing, at most three rounds, in case a create that was in flight when the
    run stopped has completed since.
    """
    removed = 0
    docker = engine_client()
    try:
        for _ in range(3):
            containers = await docker.containers.list(all=True, filters={"label": [f"{RUN_LABEL}={run_id}"]})
            if not containers:
                break
            for container in containers:
                try:
                    await container.delete(force=True, v=True)
                    removed += 1
                except aiodocker.DockerError as exc:
                    if exc.status != 404:
                        print(
                            f"removing container {container.id[:12]} failed: {exc}; "
                            f"remove it with 'docker rm -f {container.id[:12]}'",
                            file=sys.stderr,
                        )
            await asyncio.sleep(0.5)
    finally:
        await docker.close()
    return removed


def engine_client() -> aiodocker.Docker:
    """Return an aiodocker client whose requests time out after REQUEST_TIMEOUT seconds.

    Streams, such as an attached exec, have no timeout in aiodocker, so a caller that reads one
    bounds it itself.
    """
    return aiodocker.Docker(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))


def check_engine_address() -> None:
    """Exit unless the engine is reached through a local socket or a loopback address."""
    address = os.environ.get("DOCKER_HOST", "")
    if not address or address.startswith("unix://"):
        return
    host = urlsplit(address).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit(f"DOCKER_HOST={address} is not a local engine; this benchmark talks only to loopback addresses")


# --- running a benchmark -------------------------------------------------------------------


@dataclass
class Run:
    """One benchmark run: its id (the value of RUN_LABEL), its data directory and its servers."""

    run_id: str = field(default_factory=lambda: secrets.token_hex(6))
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="corebase-bench-")))
    servers: list[Server] = field(default_factory=list)

    def start_server(self, settings: dict[str, str] | None = None, name: str = "server") -> Server:
        directory = self.data_dir / name
        directory.mkdir(parents=True, exist_ok=True)
        server = start_server(directory, settings)
        self.servers.append(server)
        return server


def server_cpu_seconds(server: Server) -> float:
    """CPU time (user + system) the server process has used so far, from /proc."""
    fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: utime and stime are fields 12 and 13 of the rest, in clock ticks.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_main(
    benchmark: Callable[[Run], Awaitable[dict[str, Any]]],
    report: Callable[[dict[str, Any]], None],
    json_file: Path | None = None,
) -> int:
    """Run `benchmark`, then stop every server and remove this run's containers, whatever happened.

    SIGTERM cancels the run like Ctrl-C does. The result is printed by `report` and, with
    `json_file`, also written there as JSON. Returns the process exit code: 0 when a report was
    printed, 1 on failure, 130 when interrupted.
    """
    check_engine_address()
    run = Run()
    print(f"run id {run.run_id}: every container this run creates carries the label {RUN_LABEL}={run.run_id}", file=sys.stderr)

    async def guarded() -> dict[str, Any]:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
        return await benchmark(run)

    result = None
    interrupted = False
    try:
        result = asyncio.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        interrupted = True
        print("interrupted", file=sys.stderr)
    except TimeoutError:
        print(f"benchmark failed: a request timed out after {REQUEST_TIMEOUT:g} s", file=sys.stderr)
    except (RuntimeError, aiodocker.DockerError, httpx.HTTPError, OSError) as exc:
        print(f"benchmark failed: {exc!r}", file=sys.stderr)
    finally:
        previous_handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            print("cleaning up", file=sys.stderr, flush=True)
            for server in run.servers:
                stop_server(server)
                if result is None and not interrupted:
                    print("server log ends with:\n" + server.log_tail(), file=sys.stderr)
            removed = asyncio.run(remove_run_containers(run.run_id))
            if removed:
                print(f"removed {removed} container(s) of this run", file=sys.stderr)
            shutil.rmtree(run.data_dir, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous_handler)

    if result is None:
        return 130 if interrupted else 1
    report(result)
    if json_file is not None:
        json_file.write_text(json.dumps(result, indent=2) + "\n")
    return 0
