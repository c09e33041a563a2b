"""Soak the API with mixed container operations from many concurrent clients, and look for leaks.

Run from the repository root:

    .venv/bin/python bench/soak.py [--duration S] [--clients N] [--raw-duration S] [--seed N] [--json FILE]

Defaults: 180 seconds, 20 clients, a 30-second raw engine phase, seed 1.

The script builds the busybox test image if the engine lacks it and starts its own `corebase serve`
(SQLite, temporary data directory, default settings, so the collector samples every running
container). Each client repeats one container's life until the time is up, then finishes the life
it is in:

1. start a busybox container that prints a line a second and exits on SIGTERM;
2. run 2 to 6 operations on it, drawn at random: exec of `echo`, the last 10 log lines, stats;
3. mostly, stop it, check that an exec is now refused with 409, and remove it; otherwise remove
   it while it runs, with force. Now and then the client also reads a container id that does not
   exist, which must return 404.

Every response is checked: its status, and for exec and logs the output. A 409 or 404 the script
provoked on purpose is an expected error. Anything else that is not the operation's success status
(another status, a transport error, a timeout, wrong output) is an unexpected error.

Before the API phase, a raw phase runs the same lives straight through aiodocker for
--raw-duration seconds, with the same number of clients and the create body replayed from a
container the API started, so the two phases ask the engine for the same thing. The report gives
each operation's p50, p95 and p99 in both phases and the ratio of the p50s.

While the API phase runs, the script reads the server's resident memory (VmRSS) every 2 seconds.
It reports the first, largest and last reading and two least-squares slopes: over the whole phase,
and over its second half, after start-up and caches have settled.

At the end it looks for leaks: engine containers with this run's label and no active row, active
rows whose engine container is gone, and active rows left at all (every life removes its
container). Targets: no unexpected error, no leak, and a second-half memory slope of at most
1 MiB per minute.

Every container carries the label `corebase-bench.run=<run id>` and is removed on exit, Ctrl-C
included.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiodocker
import httpx

from harness import (
    REQUEST_TIMEOUT,
    RUN_LABEL,
    Run,
    Server,
    StartBench,
    command_line,
    elapsed_ms,
    engine_client,
    format_machine,
    machine_facts,
    prepare_replay,
    raw_exec,
    run_main,
    server_cpu_seconds,
    wait_until_healthy,
)
# Importing harness puts tests/ on sys.path, where the test image builder lives.
from support.images import ensure_test_image

# Prints a line a second, so logs have output, and exits at once on SIGTERM, so a stop does not
# wait for the grace period. `sleep & wait` lets the shell run the trap while it waits.
CONTAINER_COMMAND = ["sh", "-c", "trap 'exit 0' TERM; echo ready; while true; do echo tick; sleep 1 & wait; done"]
# The only lines the container writes. Right after a start its log may still be empty.
LOG_LINES = {"ready", "tick"}
EXEC_COMMAND = ["echo", "soak"]
EXEC_OUTPUT = "soak\n"
LOG_TAIL = 10
# Seconds a stop waits after SIGTERM before SIGKILL; the container exits on SIGTERM well before.
STOP_TIMEOUT = 5
# Operations run between a start and the end of a life, drawn with these weights.
MIDDLE_OPERATIONS = {"exec": 4, "logs": 3, "stats": 3}
MIDDLE_COUNT = (2, 6)
# Share of lives that stop their container before removing it; the rest remove it running, with force.
STOP_SHARE = 0.7
# Share of lives that also read a container that does not exist.
MISSING_SHARE = 0.2

RSS_INTERVAL = 2.0
# Largest second-half memory slope, in MiB per minute, that counts as flat.
MAX_RSS_SLOPE = 1.0


# --- recording outcomes --------------------------------------------------------------------


@dataclass
class Tally:
    """Latencies, expected errors and unexpected errors of one phase, by operation."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    expected: Counter = field(default_factory=Counter)
    unexpected: Counter = field(default_factory=Counter)
    # The first few messages of each unexpected kind, to show what went wrong.
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    lives: int = 0

    def fail(self, operation: str, kind: str, message: str) -> None:
        key = f"{operation}: {kind}"
        self.unexpected[key] += 1
        if len(self.examples[key]) < 3:
            self.examples[key].append(message[:300])


class Unexpected(Exception):
    """An operation's outcome was neither its success nor an error the script provoked."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        # Set by `timed` to the operation that failed.
        self.operation = "life"


async def timed(tally: Tally, operation: str, action: Callable[[], Awaitable[Any]]) -> Any:
    """Run `action`, record its latency, and turn any failure into an Unexpected with its kind."""
    started = time.perf_counter_ns()
    try:
        result = await action()
    except Unexpected as exc:
        exc.operation = operation
        raise
    except (httpx.TimeoutException, TimeoutError) as exc:
        failure = Unexpected("timeout", f"{type(exc).__name__}: {exc}")
    except httpx.HTTPError as exc:
        failure = Unexpected("transport", f"{type(exc).__name__}: {exc}")
    except aiodocker.DockerError as exc:
        failure = Unexpected(f"engine {exc.status}", str(exc))
    else:
        tally.latencies[operation].append(elapsed_ms(started))
        return result
    failure.operation = operation
    raise failure


def check_log_lines(lines: list[str]) -> None:
    """Check that a log read returned at most LOG_TAIL lines, each one the container writes."""
    if len(lines) > LOG_TAIL or not set(lines) <= LOG_LINES:
        raise Unexpected("wrong output", f"logs returned {lines[:LOG_TAIL + 1]!r}")


def check_status(response: httpx.Response, expected: int) -> httpx.Response:
    if response.status_code != expected:
        raise Unexpected(f"status {response.status_code}", response.text)
    return response


# --- one life through the API --------------------------------------------------------------


class ApiLife:
    """The operations of one container's life, sent through CoreBase's API."""

    def __init__(self, client: httpx.AsyncClient, image: str, run_id: str, tally: Tally) -> None:
        self.client = client
        self.image = image
        self.run_id = run_id
        self.tally = tally

    async def start(self) -> str:
        body = {"image": self.image, "command": CONTAINER_COMMAND, "memory": "32m", "labels": {RUN_LABEL: self.run_id}}
        response = check_status(await self.client.post("/api/runtime/start", json=body), 201)
        return response.json()["id"]

    async def exec(self, container_id: str) -> None:
        response = await self.client.post("/api/runtime/exec", json={"containerId": container_id, "command": EXEC_COMMAND})
        result = check_status(response, 200).json()
        if result["exitCode"] != 0 or result["stdout"] != EXEC_OUTPUT:
            raise Unexpected("wrong output", f"exec returned {result}")

    async def logs(self, container_id: str) -> None:
        response = await self.client.get("/api/runtime/logs", params={"containerId": container_id, "tail": LOG_TAIL})
        check_log_lines(check_status(response, 200).text.splitlines())

    async def stats(self, container_id: str) -> None:
        response = await self.client.get("/api/runtime/stats", params={"containerId": container_id})
        if check_status(response, 200).json()["memoryBytes"] <= 0:
            raise Unexpected("wrong output", f"stats returned {response.text[:200]}")

    async def stop(self, container_id: str) -> None:
        check_status(await self.client.post("/api/runtime/stop", json={"containerId": container_id, "timeout": STOP_TIMEOUT}), 200)

    async def remove(self, container_id: str, force: bool) -> None:
        check_status(await self.client.post("/api/runtime/remove", json={"containerId": container_id, "force": force}), 200)

    async def refused_exec(self, container_id: str) -> None:
        """Run an exec in a stopped container, which must be rejected with 409."""
        response = await self.client.post("/api/runtime/exec", json={"containerId": container_id, "command": EXEC_COMMAND})
        check_status(response, 409)
        self.tally.expected["exec in a stopped container: 409"] += 1

    async def missing(self) -> None:
        """Read a container id that does not exist, which must return 404."""
        check_status(await self.client.get(f"/api/runtime/containers/ctr_{secrets.token_hex(8)}"), 404)
        self.tally.expected["inspect of a missing container: 404"] += 1


# --- one life straight through the engine --------------------------------------------------


class RawLife:
    """The same operations through aiodocker, with the create body of an API-started container."""

    def __init__(self, bench: StartBench, tally: Tally) -> None:
        self.bench = bench
        self.docker = bench.docker
        self.tally = tally

    async def start(self) -> str:
        _, engine_id = await self.bench.raw_start()
        return engine_id

    async def exec(self, engine_id: str) -> None:
        output, exit_code = await raw_exec(self.docker, engine_id, EXEC_COMMAND)
        if exit_code != 0 or output.decode() != EXEC_OUTPUT:
            raise Unexpected("wrong output", f"raw exec returned {output!r}, exit code {exit_code}")

    async def logs(self, engine_id: str) -> None:
        lines = await self.docker.containers.container(engine_id).log(stdout=True, stderr=True, tail=LOG_TAIL)
        check_log_lines([line.rstrip("\n") for line in lines])

    async def stats(self, engine_id: str) -> None:
        await self.docker._query_json(f"containers/{engine_id}/stats", params={"stream": False, "one-shot": True})

    async def stop(self, engine_id: str) -> None:
        await self.docker.containers.container(engine_id).stop(t=STOP_TIMEOUT)

    async def remove(self, engine_id: str, force: bool) -> None:
        await self.docker.containers.container(engine_id).delete(force=force, v=True)


# --- the clients ---------------------------------------------------------------------------


async def live_once(life: ApiLife | RawLife, tally: Tally, rng: random.Random) -> None:
    """Run one container's life; a failure ends it after removing whatever it started."""
    container_id = None
    removed = False
    try:
        container_id = await timed(tally, "start", life.start)
        names = list(MIDDLE_OPERATIONS)
        weights = list(MIDDLE_OPERATIONS.values())
        for operation in rng.choices(names, weights, k=rng.randint(*MIDDLE_COUNT)):
            await timed(tally, operation, lambda operation=operation: getattr(life, operation)(container_id))
        if isinstance(life, ApiLife) and rng.random() < MISSING_SHARE:
            await timed(tally, "missing (404)", life.missing)
        stop_first = rng.random() < STOP_SHARE
        if stop_first:
            await timed(tally, "stop", lambda: life.stop(container_id))
            if isinstance(life, ApiLife):
                await timed(tally, "exec stopped (409)", lambda: life.refused_exec(container_id))
        await timed(tally, "remove", lambda: life.remove(container_id, force=not stop_first))
        removed = True
    except Unexpected as exc:
        tally.fail(exc.operation, exc.kind, str(exc))
    finally:
        tally.lives += 1
        if container_id is not None and not removed:
            try:
                await life.remove(container_id, force=True)
            except (httpx.HTTPError, aiodocker.DockerError, Unexpected, TimeoutError):
                pass


async def run_clients(make_life: Callable[[], ApiLife | RawLife], tally: Tally, clients: int, duration: float, seed: int) -> float:
    """Run `clients` loops of lives until `duration` seconds have passed; return the phase's wall time."""
    deadline = time.monotonic() + duration

    async def client(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        life = make_life()
        while time.monotonic() < deadline:
            await live_once(life, tally, rng)

    started = time.monotonic()
    await asyncio.gather(*(client(index) for index in range(clients)))
    return time.monotonic() - started


# --- server memory -------------------------------------------------------------------------


def resident_bytes(server: Server) -> int:
    """Resident memory (VmRSS) of the server process, from /proc."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{server.process.pid}/status has no VmRSS line")


async def sample_memory(server: Server, samples: list[tuple[float, int]], stop: asyncio.Event) -> None:
    """Append (seconds since the first reading, resident bytes) every RSS_INTERVAL until `stop` is set."""
    started = time.monotonic()
    while True:
        samples.append((time.monotonic() - started, resident_bytes(server)))
        try:
            await asyncio.wait_for(stop.wait(), RSS_INTERVAL)
            return
        except TimeoutError:
            pass


def slope_mib_per_minute(samples: list[tuple[float, int]]) -> float | None:
    """Least-squares slope of resident memory over time, in MiB per minute."""
    if len(samples) < 3:
        return None
    seconds = [moment for moment, _ in samples]
    mebibytes = [value / 2**20 for _, value in samples]
    return statistics.linear_regression(seconds, mebibytes).slope * 60


def memory_summary(samples: list[tuple[float, int]]) -> dict[str, Any]:
    values = [value for _, value in samples]
    second_half = [sample for sample in samples if sample[0] >= samples[-1][0] / 2]
    return {
        "startBytes": values[0],
        "maxBytes": max(values),
        "endBytes": values[-1],
        "slopeMiBPerMinute": slope_mib_per_minute(samples),
        "secondHalfSlopeMiBPerMinute": slope_mib_per_minute(second_half),
        "samples": samples,
    }


# --- leaks ---------------------------------------------------------------------------------


async def active_rows(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Return every row the server lists as active (not failed or removed), reading page by page."""
    rows: list[dict[str, Any]] = []
    while True:
        response = check_status(await client.get("/api/runtime/containers", params={"limit": 500, "offset": len(rows)}), 200)
        page = response.json()
        rows.extend(page["items"])
        if not page["items"] or len(rows) >= page["total"]:
            return rows


async def find_leaks(client: httpx.AsyncClient, docker: aiodocker.Docker, run_id: str) -> dict[str, Any]:
    """Compare the run's engine containers with the server's active rows."""
    rows = [row for row in await active_rows(client) if row["labels"].get(RUN_LABEL) == run_id]
    engine = await docker.containers.list(all=True, filters={"label": [f"{RUN_LABEL}={run_id}"]})
    engine_ids = {container.id for container in engine}
    row_engine_ids = {row["dockerId"] for row in rows}
    return {
        "engineWithoutRow": sorted(container_id[:12] for container_id in engine_ids - row_engine_ids),
        "rowsWithoutEngine": sorted(row["id"] for row in rows if row["dockerId"] not in engine_ids),
        "activeRowsLeft": sorted(row["id"] for row in rows),
        "engineContainersLeft": len(engine_ids),
    }


# --- the benchmark -------------------------------------------------------------------------


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if len(ordered) < 2:
        return {"count": len(ordered), "p50": ordered[0], "p95": ordered[0], "p99": ordered[0], "max": ordered[0]}
    points = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"count": len(ordered), "p50": statistics.median(ordered), "p95": points[94], "p99": points[98], "max": ordered[-1]}


def tally_summary(tally: Tally, wall_seconds: float) -> dict[str, Any]:
    return {
        "wallSeconds": wall_seconds,
        "lives": tally.lives,
        "operations": {name: percentiles(values) for name, values in sorted(tally.latencies.items()) if values},
        "expectedErrors": dict(tally.expected),
        "unexpectedErrors": dict(tally.unexpected),
        "unexpectedExamples": dict(tally.examples),
    }


async def benchmark(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    docker = engine_client()
    try:
        image = await ensure_test_image(docker)
        facts = await machine_facts(docker)

        server = run.start_server()
        await wait_until_healthy(server)
        headers = {"Authorization": f"Bearer {server.admin_key}"}
        limits = httpx.Limits(max_connections=args.clients * 2)
        async with httpx.AsyncClient(
            base_url=server.base_url, headers=headers, timeout=REQUEST_TIMEOUT, limits=limits
        ) as client:
            bench = StartBench(run.run_id, client, docker, image, CONTAINER_COMMAND)
            differences = await prepare_replay(bench)
            if differences:
                raise RuntimeError("the replayed create body differs from the API's container:\n  " + "\n  ".join(differences))

            print(f"raw phase: {args.clients} clients for {args.raw_duration:g} s", file=sys.stderr, flush=True)
            raw = Tally()
            raw_wall = await run_clients(lambda: RawLife(bench, raw), raw, args.clients, args.raw_duration, args.seed)

            print(f"API phase: {args.clients} clients for {args.duration:g} s", file=sys.stderr, flush=True)
            api = Tally()
            memory: list[tuple[float, int]] = []
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_memory(server, memory, stop))
            cpu_before = server_cpu_seconds(server)
            api_wall = await run_clients(
                lambda: ApiLife(client, image, run.run_id, api), api, args.clients, args.duration, args.seed
            )
            cpu_seconds = server_cpu_seconds(server) - cpu_before
            stop.set()
            await sampler

            leaks = await find_leaks(client, docker, run.run_id)
    finally:
        await docker.close()

    return {
        "command": command_line(),
        "machine": facts,
        "clients": args.clients,
        "duration": args.duration,
        "rawDuration": args.raw_duration,
        "seed": args.seed,
        "database": "SQLite (temporary data directory)",
        "api": tally_summary(api, api_wall),
        "raw": tally_summary(raw, raw_wall),
        "serverCpuSeconds": cpu_seconds,
        "memory": memory_summary(memory),
        "leaks": leaks,
    }


# --- the report ----------------------------------------------------------------------------


def verdicts(result: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(target, measured, passed) for each target."""
    unexpected = sum(result["api"]["unexpectedErrors"].values())
    leaks = result["leaks"]
    # Every life removes its container, so each active row left is a leak, with or without its
    # engine container; rowsWithoutEngine is the part of them whose container is gone.
    leaked = len(leaks["engineWithoutRow"]) + len(leaks["activeRowsLeft"])
    slope = result["memory"]["secondHalfSlopeMiBPerMinute"]
    return [
        ("unexpected errors = 0", str(unexpected), unexpected == 0),
        ("leaked containers and rows = 0", str(leaked), leaked == 0),
        (
            f"memory slope, second half <= {MAX_RSS_SLOPE:g} MiB/min",
            "n/a" if slope is None else f"{slope:.2f} MiB/min",
            slope is not None and slope <= MAX_RSS_SLOPE,
        ),
    ]


def format_operations(api: dict[str, Any], raw: dict[str, Any]) -> str:
    header = (
        f"{'operation':<20} {'count':>6} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}"
        f"  {'raw n':>6} {'raw p50':>8} {'raw p95':>8} {'raw p99':>8}  {'ratio p50':>9}"
    )
    lines = [header, "-" * len(header)]
    for name, stats in api["operations"].items():
        line = f"{name:<20} {stats['count']:>6} {stats['p50']:>8.1f} {stats['p95']:>8.1f} {stats['p99']:>8.1f} {stats['max']:>8.1f}"
        raw_stats = raw["operations"].get(name)
        if raw_stats:
            line += (
                f"  {raw_stats['count']:>6} {raw_stats['p50']:>8.1f} {raw_stats['p95']:>8.1f} {raw_stats['p99']:>8.1f}"
                f"  {stats['p50'] / raw_stats['p50']:>9.2f}"
            )
        lines.append(line)
    lines.append("Times in milliseconds, measured in the client; ratio p50 is the API p50 over the raw p50.")
    return "\n".join(lines)


def format_errors(title: str, counts: dict[str, int], examples: dict[str, list[str]] | None = None) -> str:
    if not counts:
        return f"{title}: none"
    lines = [f"{title}:"]
    for kind, count in sorted(counts.items()):
        lines.append(f"  {count:>6}  {kind}")
        for example in (examples or {}).get(kind, []):
            lines.append(f"          e.g. {example}")
    return "\n".join(lines)


def report(result: dict[str, Any]) -> None:
    api, raw, memory, leaks = result["api"], result["raw"], result["memory"], result["leaks"]
    mib = 2**20

    print()
    print(f"command: {result['command']}")
    print(format_machine(result["machine"]))
    print(
        f"{result['clients']} clients; API phase {api['wallSeconds']:.0f} s, {api['lives']} lives; "
        f"raw phase {raw['wallSeconds']:.0f} s, {raw['lives']} lives; API on {result['database']}"
    )
    print()
    print(format_operations(api, raw))

    print()
    print(format_errors("expected errors (provoked on purpose)", api["expectedErrors"]))
    print(format_errors("unexpected errors, API phase", api["unexpectedErrors"], api["unexpectedExamples"]))
    print(format_errors("unexpected errors, raw phase", raw["unexpectedErrors"], raw["unexpectedExamples"]))

    print()
    print(
        f"server memory (VmRSS): start {memory['startBytes'] / mib:.1f} MiB, max {memory['maxBytes'] / mib:.1f} MiB, "
        f"end {memory['endBytes'] / mib:.1f} MiB; slope {memory['slopeMiBPerMinute']:.2f} MiB/min over the phase, "
        f"{memory['secondHalfSlopeMiBPerMinute']:.2f} MiB/min over its second half"
    )
    print(f"server CPU in the API phase: {result['serverCpuSeconds']:.1f} s ({result['serverCpuSeconds'] / api['wallSeconds'] * 100:.0f}% of one core)")
    print(
        f"leaks: {len(leaks['engineWithoutRow'])} engine containers without an active row, "
        f"{len(leaks['rowsWithoutEngine'])} active rows without an engine container, "
        f"{len(leaks['activeRowsLeft'])} active rows left, {leaks['engineContainersLeft']} engine containers left"
    )

    print()
    for target, measured, passed in verdicts(result):
        print(f"{target:<40} {measured:>14}  {'PASS' if passed else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of the API phase (default 180)")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients in each phase (default 20)")
    parser.add_argument("--raw-duration", type=float, default=30.0, help="seconds of the raw engine phase (default 30)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the clients' random choices (default 1)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results and memory samples to FILE")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.raw_duration <= 0 or args.clients < 1:
        parser.error("use a positive --duration and --raw-duration and at least 1 client")

    return run_main(lambda run: benchmark(run, args), report, args.json)


if __name__ == "__main__":
    sys.exit(main())
