"""Measure how fast a pre-warmed pool hands out a container, compared with a cold start.

Run from the repository root:

    .venv/bin/python bench/pool_claim.py [--runs N] [--warmup W] [--pool-size P] [--batch B]
                                         [--cold-runs C] [--json FILE]

The script builds the toolbox test image if the engine lacks it. It starts its own `corebase serve`
on a free loopback port with a temporary data directory (SQLite), a random admin key, the default
pool settings, and the built-in `python` template pointed at the toolbox image. Then it measures
three things, in this order:

- cold starts: `POST /api/runtime/start` of the toolbox image against aiodocker create + start with
  the replayed create body, interleaved as in bench/api_overhead.py;
- bursts: a pool with minIdle 2 and maxIdle 10 receives two bursts of 10 concurrent claims, with a
  wait for refill and autoscaling after each, to show the autoscaler raising the pool's target;
- claims: a pool with minIdle = maxIdle = maxTotal = P serves `POST /api/runtime/start
  {"template": "python"}` one request at a time, in batches of B < P claims. Before each batch the
  script waits, untimed, until the pool has P idle members again.

Bursts run before claims because the autoscaler counts the claims of the last 60 seconds (the
default demand window), so a burst right after the claims would start from a raised target.

Every claimed container must be reported `running` in the start response, and an exec of `true`
in it right after the response, untimed, must return exit code 0. Only claims served from the pool
count toward the claim latency. The targets are a claim p50 of at most 15 ms, a claim p99 of at
most 50 ms, and a raw cold start p50 at least 10 times the claim p50. The burst table also reports
the most pool members seen at once, which maxTotal should cap.

To show where a claim's time goes, the script also times two probes after each claim: an
authenticated `GET /api/runtime/templates/python`, which the server serves from memory, and an
engine inspect of the claimed container through aiodocker. It reads the server's own timing of
each claim (`claim_ms`) from the server's SQLite database.

Containers the script starts through the API or the engine carry the label
`corebase-bench.run=<run id>`. Pool members are created by the server with CoreBase's labels only,
and a claim cannot add engine labels. So on exit, including Ctrl-C and SIGTERM, the script first
deletes the pool through the API and stops the server. Then it removes the engine containers with
this run's label, and those labelled `corebase.managed=true` whose `corebase.id` is in the
`containers` table of this run's database. The test images are left in place because the test
suite shares them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiodocker
import httpx

from harness import (
    REPOSITORY,
    REQUEST_TIMEOUT,
    RUN_LABEL,
    Server,
    StartBench,
    add_setting_option,
    check_engine_address,
    command_line,
    elapsed_ms,
    engine_client,
    format_machine,
    machine_facts,
    measure_starts,
    prepare_replay,
    remove_run_containers,
    server_settings,
    start_server,
    stop_server,
    summarize,
    wait_until_healthy,
)
# Importing harness puts tests/ on sys.path, where the test image builders live.
from support.images import ensure_toolbox_image

TEMPLATE = "python"
POOL_PATH = f"/api/runtime/pools/{TEMPLATE}"
COLD_COMMAND = ["sleep", "infinity"]
CHECK_COMMAND = ["true"]
# The server's SQLite file inside its data directory.
DATABASE_FILE = "corebase.sqlite"

CLAIM_P50_TARGET_MS = 15.0
CLAIM_P99_TARGET_MS = 50.0
# Minimum ratio of the raw cold start p50 to the claim p50.
SPEEDUP_TARGET = 10.0

BURST_MIN_IDLE = 2
BURST_MAX_IDLE = 10
BURST_MAX_TOTAL = 10
BURST_SIZE = 10
BURST_COUNT = 2
# Seconds to wait after a burst before reading the target, so that several manager passes
# (one a second by default) have seen the burst's claims.
BURST_SETTLE_SECONDS = 5.0

# Seconds an idle member may wait before the server replaces it, longer than any run.
IDLE_TTL = 3600.0
# Seconds a pool may take to reach its idle count. A member takes a few seconds to pass its health
# check, and a failed start makes the manager back off for up to 60 seconds.
REFILL_TIMEOUT = 120.0
# Seconds between two reads of the pool's status while waiting.
POLL_INTERVAL = 0.2


# --- one claim and its checks --------------------------------------------------------------


@dataclass
class Claim:
    """One `POST /api/runtime/start {"template": "python"}` and what was checked after it."""

    duration_ms: float
    container_id: str
    engine_id: str
    source: str
    status: str
    batch: int = 0
    position: int = 0
    exec_ok: bool = False
    exec_detail: str = ""
    template_get_ms: float | None = None
    engine_inspect_ms: float | None = None
    server_claim_ms: float | None = None


@dataclass
class PoolBench:
    run_id: str
    client: httpx.AsyncClient
    docker: aiodocker.Docker

    async def configure_pool(self, min_idle: int, max_idle: int, max_total: int) -> dict[str, Any]:
        body = {"minIdle": min_idle, "maxIdle": max_idle, "maxTotal": max_total, "idleTtl": IDLE_TTL}
        response = await self.client.put(POOL_PATH, json=body)
        if response.status_code != 200:
            raise RuntimeError(f"PUT {POOL_PATH} failed with {response.status_code}: {response.text}")
        return response.json()

    async def delete_pool(self) -> None:
        response = await self.client.delete(POOL_PATH)
        if response.status_code not in (204, 404):
            raise RuntimeError(f"DELETE {POOL_PATH} failed with {response.status_code}: {response.text}")

    async def pool_status(self) -> dict[str, Any]:
        response = await self.client.get(POOL_PATH)
        if response.status_code != 200:
            raise RuntimeError(f"GET {POOL_PATH} failed with {response.status_code}: {response.text}")
        return response.json()

    async def wait_for_idle(self, count: int) -> dict[str, Any]:
        """Poll the pool until it has `count` idle members, and raise RuntimeError after REFILL_TIMEOUT."""
        deadline = time.monotonic() + REFILL_TIMEOUT
        while True:
            status = await self.pool_status()
            if status["idle"] >= count:
                return status
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"pool {TEMPLATE} did not reach {count} idle members within {REFILL_TIMEOUT:g} s: "
                    f"idle {status['idle']}, inFlight {status['inFlight']}, lastError {status['lastError']!r}"
                )
            await asyncio.sleep(POLL_INTERVAL)

    async def wait_until_settled(
        self, minimum_seconds: float, since: float | None = None
    ) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
        """Poll the pool until `minimum_seconds` have passed since `since`, then until it is refilled.

        `since` is a time.monotonic() value and defaults to now. Refilled means as many idle
        members as the target and none starting. Returns the last status, the (seconds since
        `since`, idle, inFlight, target) readings taken, and whether the pool was refilled within
        REFILL_TIMEOUT of `since`.
        """
        began = time.monotonic() if since is None else since
        readings = []
        while True:
            status = await self.pool_status()
            waited = time.monotonic() - began
            readings.append(
                {
                    "seconds": round(waited, 2),
                    "idle": status["idle"],
                    "inFlight": status["inFlight"],
                    "target": status["target"],
                }
            )
            refilled = status["idle"] >= status["target"] and status["inFlight"] == 0
            if waited >= minimum_seconds and refilled:
                return status, readings, True
            if waited > REFILL_TIMEOUT:
                return status, readings, False
            await asyncio.sleep(POLL_INTERVAL)

    async def claim(self) -> Claim:
        """Start a container from the template, which the server serves from the pool when it can."""
        body = {"template": TEMPLATE, "labels": {RUN_LABEL: self.run_id}}
        started = time.perf_counter_ns()
        response = await self.client.post("/api/runtime/start", json=body)
        duration = elapsed_ms(started)
        if response.status_code != 201:
            raise RuntimeError(
                f"POST /api/runtime/start of template {TEMPLATE} failed with {response.status_code}: {response.text}"
            )
        record = response.json()
        return Claim(duration, record["id"], record["dockerId"], record.get("source") or "unknown", record["status"])

    async def check_exec(self, claim: Claim) -> None:
        """Run CHECK_COMMAND in the claimed container and record whether the claim passed its check.

        It passes when the start response reported the container running and the exec returned exit code 0.
        """
        response = await self.client.post(
            "/api/runtime/exec", json={"containerId": claim.container_id, "command": CHECK_COMMAND}
        )
        if response.status_code != 200:
            claim.exec_detail = f"POST /api/runtime/exec returned {response.status_code}: {response.text}"
            return
        exit_code = response.json().get("exitCode")
        if exit_code != 0:
            claim.exec_detail = f"exec of {CHECK_COMMAND} returned exit code {exit_code}"
        elif claim.status != "running":
            claim.exec_detail = f"the start response reported status {claim.status!r}, expected 'running'"
        else:
            claim.exec_ok = True

    async def probe(self, claim: Claim) -> None:
        """Time an authenticated request that the server serves from memory, and an engine inspect of the container."""
        started = time.perf_counter_ns()
        response = await self.client.get(f"/api/runtime/templates/{TEMPLATE}")
        claim.template_get_ms = elapsed_ms(started)
        if response.status_code != 200:
            raise RuntimeError(
                f"GET /api/runtime/templates/{TEMPLATE} failed with {response.status_code}: {response.text}"
            )

        started = time.perf_counter_ns()
        await self.docker.containers.container(claim.engine_id).show()
        claim.engine_inspect_ms = elapsed_ms(started)

    async def remove(self, container_id: str) -> None:
        response = await self.client.post("/api/runtime/remove", json={"containerId": container_id, "force": True})
        if response.status_code != 200:
            raise RuntimeError(
                f"POST /api/runtime/remove of {container_id} failed with {response.status_code}: {response.text}"
            )


# --- the three measurements ----------------------------------------------------------------


async def measure_claims(bench: PoolBench, args: argparse.Namespace, database: Path) -> dict[str, Any]:
    """Claim `warmup + runs` containers one at a time, in batches, each batch from a full pool."""
    await bench.configure_pool(args.pool_size, args.pool_size, args.pool_size)
    total = args.warmup + args.runs
    claims: list[Claim] = []
    batch = 0
    while len(claims) < total:
        await bench.wait_for_idle(args.pool_size)
        batch_claims = []
        for position in range(min(args.batch, total - len(claims))):
            claim = await bench.claim()
            claim.batch, claim.position = batch, position
            await bench.check_exec(claim)
            await bench.probe(claim)
            batch_claims.append(claim)
        for claim in batch_claims:
            await bench.remove(claim.container_id)
        claims.extend(batch_claims)
        batch += 1
        print(f"  claims: {len(claims)}/{total}", file=sys.stderr, flush=True)

    # The last refill finishes before the status is read, so no member is starting when the pool is deleted.
    status = await bench.wait_for_idle(args.pool_size)
    server_ms = read_claim_ms(database, [claim.container_id for claim in claims])
    for claim in claims:
        claim.server_claim_ms = server_ms.get(claim.container_id)
    await bench.delete_pool()

    measured = claims[args.warmup :]
    hits = [claim for claim in measured if claim.source == "pool"]
    if len(hits) < 2:
        raise RuntimeError(
            f"only {len(hits)} of {len(measured)} measured claims were served from the pool; "
            f"percentiles need at least 2. Try a larger --pool-size or a smaller --batch"
        )
    return {
        "poolSize": args.pool_size,
        "batch": args.batch,
        "batches": batch,
        "measured": len(measured),
        "hits": len(hits),
        "misses": len(measured) - len(hits),
        "checked": len(claims),
        "execFailures": [
            {"containerId": claim.container_id, "detail": claim.exec_detail} for claim in claims if not claim.exec_ok
        ],
        "latency": summarize([claim.duration_ms for claim in hits]),
        "serverClaimLatency": status["claimLatency"],
        "breakdown": claim_breakdown(hits),
        "details": [asdict(claim) for claim in claims],
    }


def claim_breakdown(hits: list[Claim]) -> dict[str, float | None]:
    """Return the p50 of each part of a claim's time that can be measured from outside the server."""

    def p50(values: list[float | None]) -> float | None:
        present = [value for value in values if value is not None]
        return statistics.median(present) if present else None

    return {
        "client": p50([claim.duration_ms for claim in hits]),
        "serverClaim": p50([claim.server_claim_ms for claim in hits]),
        "outsideClaim": p50(
            [claim.duration_ms - claim.server_claim_ms for claim in hits if claim.server_claim_ms is not None]
        ),
        "templateGet": p50([claim.template_get_ms for claim in hits]),
        "engineInspect": p50([claim.engine_inspect_ms for claim in hits]),
        "firstInBatch": p50([claim.duration_ms for claim in hits if claim.position == 0]),
        "laterInBatch": p50([claim.duration_ms for claim in hits if claim.position > 0]),
    }


def read_claim_ms(database: Path, container_ids: list[str]) -> dict[str, float]:
    """Read the server's own claim time of each container from its SQLite database, opened read-only."""
    if not container_ids:
        return {}
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10.0)
    try:
        placeholders = ",".join("?" * len(container_ids))
        rows = connection.execute(
            f"SELECT id, claim_ms FROM containers WHERE id IN ({placeholders}) AND claim_ms IS NOT NULL",
            container_ids,
        ).fetchall()
    finally:
        connection.close()
    return dict(rows)


async def measure_bursts(bench: PoolBench) -> list[dict[str, Any]]:
    """Send BURST_COUNT bursts of BURST_SIZE concurrent claims to a small pool that may grow."""
    await bench.configure_pool(BURST_MIN_IDLE, BURST_MAX_IDLE, BURST_MAX_TOTAL)
    await bench.wait_for_idle(BURST_MIN_IDLE)
    # The manager may still be starting members beyond minIdle; wait until it is quiet.
    status, _, _ = await bench.wait_until_settled(0.0)

    results = []
    for number in range(1, BURST_COUNT + 1):
        before = status
        started = time.perf_counter_ns()
        claims = await asyncio.gather(*(bench.claim() for _ in range(BURST_SIZE)))
        wall_ms = elapsed_ms(started)
        ended = time.monotonic()
        await asyncio.gather(*(bench.check_exec(claim) for claim in claims))

        status, readings, refilled = await bench.wait_until_settled(BURST_SETTLE_SECONDS, since=ended)
        for claim in claims:
            await bench.remove(claim.container_id)
        hits = [claim.duration_ms for claim in claims if claim.source == "pool"]
        colds = [claim.duration_ms for claim in claims if claim.source != "pool"]
        results.append(
            {
                "burst": number,
                "claims": len(claims),
                "hits": len(hits),
                "misses": len(colds),
                "idleBefore": before["idle"],
                "targetBefore": before["target"],
                "targetAfter": status["target"],
                "idleAfter": status["idle"],
                # The maximum number of members seen at once, idle or starting. The pool's maxTotal should cap this.
                "maxSize": max(reading["idle"] + reading["inFlight"] for reading in readings),
                "refilled": refilled,
                "refillSeconds": refill_seconds(readings),
                "wallMs": wall_ms,
                "hitP50": statistics.median(hits) if hits else None,
                "missP50": statistics.median(colds) if colds else None,
                "execFailures": sum(not claim.exec_ok for claim in claims),
                "readings": readings,
                "details": [asdict(claim) for claim in claims],
            }
        )
        print(f"  burst {number}: {len(hits)} hits, {len(colds)} misses", file=sys.stderr, flush=True)

    await bench.delete_pool()
    return results


def refill_seconds(readings: list[dict[str, Any]]) -> float | None:
    """Return the seconds after a burst from which every reading showed the pool refilled to its target.

    Returns None when the last reading did not.
    """
    seconds = None
    for reading in readings:
        if reading["idle"] < reading["target"] or reading["inFlight"] > 0:
            seconds = None
        elif seconds is None:
            seconds = reading["seconds"]
    return seconds


async def measure_cold(bench: StartBench, runs: int, warmup: int) -> dict[str, Any]:
    differences = await prepare_replay(bench)
    if differences:
        raise RuntimeError(
            "the replayed create body does not reproduce the API's container config:\n  " + "\n  ".join(differences)
        )
    print("replayed config matches the API container's Config and HostConfig", file=sys.stderr)
    samples = await measure_starts(bench, runs, warmup)
    return {
        "runs": runs,
        "warmup": warmup,
        "api": summarize(samples["api"]),
        "raw": summarize(samples["raw"]),
        "samples": samples,
    }


# --- targets and the report ----------------------------------------------------------------


def evaluate(claims: dict[str, Any], cold: dict[str, Any], bursts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    claim_p50 = claims["latency"]["p50"]
    speedup = cold["raw"]["p50"] / claim_p50
    exec_failures = len(claims["execFailures"]) + sum(burst["execFailures"] for burst in bursts)
    return [
        {
            "name": "claim p50",
            "value": f"{claim_p50:.1f} ms",
            "target": f"<= {CLAIM_P50_TARGET_MS:g} ms",
            "result": "PASS" if claim_p50 <= CLAIM_P50_TARGET_MS else "MISS",
        },
        {
            "name": "claim p99",
            "value": f"{claims['latency']['p99']:.1f} ms",
            "target": f"<= {CLAIM_P99_TARGET_MS:g} ms",
            "result": "PASS" if claims["latency"]["p99"] <= CLAIM_P99_TARGET_MS else "MISS",
        },
        {
            "name": "raw cold p50 / claim p50",
            "value": f"{speedup:.1f}x",
            "target": f">= {SPEEDUP_TARGET:g}x",
            "result": "PASS" if speedup >= SPEEDUP_TARGET else "MISS",
        },
        {
            "name": "failed claim checks",
            "value": str(exec_failures),
            "target": "0",
            "result": "PASS" if exec_failures == 0 else "MISS",
        },
    ]


def format_latency_table(claims: dict[str, Any], cold: dict[str, Any]) -> str:
    rows = [
        ("claim (pool hit)", claims["hits"], claims["latency"]),
        ("api cold start", cold["runs"], cold["api"]),
        ("raw create+start", cold["runs"], cold["raw"]),
    ]
    header = f"{'operation':<17} {'n':>4}  {'p50':>7} {'p90':>7} {'p99':>7} {'mean':>7} {'max':>7}"
    lines = [header, "-" * len(header)]
    for name, count, stats in rows:
        lines.append(
            f"{name:<17} {count:>4}  {stats['p50']:>7.1f} {stats['p90']:>7.1f} {stats['p99']:>7.1f}"
            f" {stats['mean']:>7.1f} {stats['max']:>7.1f}"
        )
    server = claims["serverClaimLatency"]
    lines += [
        "Times in milliseconds, measured in the client.",
        f"Claims: {claims['measured']} measured after {claims['checked'] - claims['measured']} warm-up; "
        f"{claims['hits']} served from the pool, {claims['misses']} cold (left out of the claim row).",
        f"Checks: {claims['checked']} claims checked (status running, exec of true), "
        f"{len(claims['execFailures'])} failed.",
        f"The server's claimLatency for the pool (warm-up included): p50 {format_ms(server['p50Ms'])}, "
        f"p99 {format_ms(server['p99Ms'])}.",
    ]
    return "\n".join(lines)


def format_targets(targets: list[dict[str, Any]]) -> str:
    header = f"{'target':<25} {'measured':>9}  {'target':>9}  result"
    lines = [header, "-" * len(header)]
    for target in targets:
        lines.append(f"{target['name']:<25} {target['value']:>9}  {target['target']:>9}  {target['result']}")
    return "\n".join(lines)


def format_breakdown(breakdown: dict[str, float | None]) -> str:
    rows = [
        ("client time of POST /start (pool hit)", breakdown["client"]),
        ("  server's claim step, as it records it (claim_ms)", breakdown["serverClaim"]),
        ("  the rest: HTTP, auth, routing, saving the record, response", breakdown["outsideClaim"]),
        ("authenticated GET of a template held in memory", breakdown["templateGet"]),
        ("engine inspect of the claimed container (aiodocker)", breakdown["engineInspect"]),
        ("first claim of a batch (no member starting)", breakdown["firstInBatch"]),
        ("later claims of a batch (replacements starting)", breakdown["laterInBatch"]),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'where a claim spends its time (p50, ms)':<{width}}  {'p50':>7}", "-" * (width + 9)]
    lines += [f"{name:<{width}}  {format_ms(value):>7}" for name, value in rows]
    lines.append("The two parts of a claim are p50s of per-claim values, so they need not add up to the client p50.")
    return "\n".join(lines)


def format_bursts(bursts: list[dict[str, Any]]) -> str:
    header = (
        f"{'burst':>5} {'claims':>6} {'hits':>4} {'misses':>6}  {'target before':>13} {'target after':>12}"
        f" {'idle after':>10} {'max size':>8} {'refilled in s':>13}  {'wall ms':>7} {'hit p50':>7} {'miss p50':>8}"
        f" {'failed checks':>13}"
    )
    lines = [header, "-" * len(header)]
    for burst in bursts:
        refilled = "no" if burst["refillSeconds"] is None else f"{burst['refillSeconds']:.1f}"
        lines.append(
            f"{burst['burst']:>5} {burst['claims']:>6} {burst['hits']:>4} {burst['misses']:>6}"
            f"  {burst['targetBefore']:>13} {burst['targetAfter']:>12} {burst['idleAfter']:>10} {burst['maxSize']:>8}"
            f" {refilled:>13}"
            f"  {burst['wallMs']:>7.1f} {format_ms(burst['hitP50']):>7} {format_ms(burst['missP50']):>8}"
            f" {burst['execFailures']:>13}"
        )
    lines.append(
        f"Pool minIdle {BURST_MIN_IDLE}, maxIdle {BURST_MAX_IDLE}, maxTotal {BURST_MAX_TOTAL}. 'max size' is the most"
        f" members, idle plus starting, seen in the readings every {POLL_INTERVAL:g} s after the burst. 'refilled in s'"
        f" is the time after the burst from which idle stayed at the target with nothing starting. 'target after' is"
        f" read {BURST_SETTLE_SECONDS:g} s or more after the burst, once the pool is refilled."
    )
    above = [burst["burst"] for burst in bursts if burst["maxSize"] > BURST_MAX_TOTAL]
    if above:
        lines.append(
            f"The pool held more than maxTotal {BURST_MAX_TOTAL} members after burst(s) {', '.join(map(str, above))}."
        )
    return "\n".join(lines)


def format_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def source_revision() -> str:
    """Return the checked-out git commit of the repository, marked when files differ from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=REPOSITORY, capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"unknown ({exc})"
    return f"{commit} with uncommitted changes" if changes.strip() else commit


# --- clean-up ------------------------------------------------------------------------------


async def delete_pool_on_exit(server: Server) -> None:
    """Delete the pool through the API, so that the server removes its unclaimed members."""
    headers = {"Authorization": f"Bearer {server.admin_key}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=REQUEST_TIMEOUT) as client:
        response = await client.delete(POOL_PATH)
    if response.status_code not in (204, 404):
        print(f"DELETE {POOL_PATH} failed with {response.status_code}: {response.text}", file=sys.stderr)


async def remove_server_containers(database: Path) -> int:
    """Remove the engine containers this run's server created; return how many were removed.

    A container is removed only when it carries `corebase.managed=true` and its `corebase.id` is
    in the server's `containers` table. The data directory was new for this run, so no other
    server wrote to that table.
    """
    if not database.is_file():
        return 0
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10.0)
    try:
        ours = {row[0] for row in connection.execute("SELECT id FROM containers")}
    finally:
        connection.close()

    removed = 0
    docker = engine_client()
    try:
        containers = await docker.containers.list(all=True, filters={"label": ["corebase.managed=true"]})
        for container in containers:
            if container["Labels"].get("corebase.id") not in ours:
                continue
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
    finally:
        await docker.close()
    return removed


# --- main ----------------------------------------------------------------------------------


@dataclass
class Run:
    run_id: str
    data_dir: Path
    server: Server | None = None
    load_at_start: tuple[float, float, float] = field(default_factory=os.getloadavg)

    @property
    def database(self) -> Path:
        return self.data_dir / DATABASE_FILE


async def benchmark(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    # SIGTERM cancels the run like Ctrl-C does, so the clean-up in main() still happens.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)

    docker = engine_client()
    try:
        print("building or finding the toolbox image", file=sys.stderr, flush=True)
        image = await ensure_toolbox_image(docker)
        facts = await machine_facts(docker)

        print("starting corebase serve", file=sys.stderr, flush=True)
        run.server = start_server(run.data_dir, {**args.settings, "COREBASE_TEMPLATES_IMAGES": f"{TEMPLATE}={image}"})
        await wait_until_healthy(run.server)

        headers = {"Authorization": f"Bearer {run.server.admin_key}"}
        async with httpx.AsyncClient(base_url=run.server.base_url, headers=headers, timeout=REQUEST_TIMEOUT) as client:
            print("measuring cold starts", file=sys.stderr, flush=True)
            starts = StartBench(run.run_id, client, docker, image, COLD_COMMAND)
            cold = await measure_cold(starts, args.cold_runs, args.cold_warmup)

            pools = PoolBench(run.run_id, client, docker)
            print("measuring bursts", file=sys.stderr, flush=True)
            bursts = await measure_bursts(pools)
            print("measuring claims", file=sys.stderr, flush=True)
            claims = await measure_claims(pools, args, run.database)
    finally:
        await docker.close()

    facts["loadAverage"] = {"start": run.load_at_start, "end": os.getloadavg()}
    return {
        "command": command_line(),
        "revision": source_revision(),
        "template": TEMPLATE,
        "image": image,
        "database": "SQLite (temporary data directory)",
        "machine": facts,
        "targets": evaluate(claims, cold, bursts),
        "claims": claims,
        "cold": cold,
        "bursts": bursts,
        "replayedBody": starts.raw_body,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="measured claims (default 100)")
    parser.add_argument("--warmup", type=int, default=5, help="claims made and discarded before measuring (default 5)")
    parser.add_argument(
        "--pool-size", type=int, default=10, help="minIdle, maxIdle and maxTotal of the pool for claims (default 10)"
    )
    parser.add_argument(
        "--batch", type=int, default=5, help="claims between two waits for a full pool; below --pool-size (default 5)"
    )
    parser.add_argument("--cold-runs", type=int, default=20, help="measured cold starts per path (default 20)")
    parser.add_argument(
        "--cold-warmup", type=int, default=2, help="cold starts per path made and discarded first (default 2)"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results and raw samples to FILE")
    add_setting_option(parser)
    args = parser.parse_args(argv)
    args.settings = server_settings(parser, args.setting)
    if args.runs < 2:
        parser.error(f"--runs {args.runs} is too small; percentiles need at least 2 claims")
    if args.cold_runs < 2:
        parser.error(f"--cold-runs {args.cold_runs} is too small; percentiles need at least 2 starts")
    if args.warmup < 0 or args.cold_warmup < 0:
        parser.error("--warmup and --cold-warmup must be 0 or more")
    if not 1 <= args.pool_size <= 1000:
        parser.error(f"--pool-size {args.pool_size} is invalid; the API accepts 1 to 1000")
    if not 1 <= args.batch < args.pool_size:
        parser.error(f"--batch {args.batch} is invalid; use 1 to --pool-size minus 1 ({args.pool_size - 1})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_engine_address()
    run = Run(run_id=secrets.token_hex(6), data_dir=Path(tempfile.mkdtemp(prefix="corebase-bench-")))
    print(
        f"run id {run.run_id}: every container this run starts carries the label {RUN_LABEL}={run.run_id}",
        file=sys.stderr,
    )

    report = None
    interrupted = False
    try:
        report = asyncio.run(benchmark(args, run))
    except (KeyboardInterrupt, asyncio.CancelledError):
        interrupted = True
        print("interrupted", file=sys.stderr)
    except TimeoutError:
        print(f"benchmark failed: a request timed out after {REQUEST_TIMEOUT:g} s", file=sys.stderr)
    except (RuntimeError, aiodocker.DockerError, httpx.HTTPError, sqlite3.Error) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
    finally:
        # Ctrl-C is ignored during clean-up so that it cannot be cut short. Each step in it has a timeout.
        previous_handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            print("cleaning up", file=sys.stderr, flush=True)
            clean_up(run, show_log=report is None and not interrupted)
        finally:
            signal.signal(signal.SIGINT, previous_handler)

    if report is None:
        return 130 if interrupted else 1

    print()
    print(f"command: {report['command']}")
    print(f"source: commit {report['revision']}")
    print(format_machine(report["machine"]))
    load = report["machine"]["loadAverage"]
    print(f"load average (1 min): {load['start'][0]:.2f} at start, {load['end'][0]:.2f} at end")
    print(f"template {report['template']} on {report['image']}, API on {report['database']}")
    print()
    print(format_latency_table(report["claims"], report["cold"]))
    print()
    print(format_targets(report["targets"]))
    print()
    print(format_breakdown(report["claims"]["breakdown"]))
    print()
    print(format_bursts(report["bursts"]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nresults written to {args.json}")
    return 0


def clean_up(run: Run, show_log: bool) -> None:
    """Delete the pool, stop the server, then remove every engine container this run created."""
    if run.server is not None:
        if run.server.process.poll() is None:
            try:
                asyncio.run(delete_pool_on_exit(run.server))
            except (httpx.HTTPError, OSError) as exc:
                print(f"deleting the pool failed: {exc}; its members are removed below", file=sys.stderr)
        stop_server(run.server)
        if show_log:
            print("server log ends with:\n" + run.server.log_tail(), file=sys.stderr)

    removed = asyncio.run(remove_server_containers(run.database))
    removed += asyncio.run(remove_run_containers(run.run_id))
    if removed:
        print(f"removed {removed} leftover container(s)", file=sys.stderr)
    shutil.rmtree(run.data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
