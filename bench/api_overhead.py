"""Measure what the CoreBase API adds to a container start and an exec, compared with the bare engine.

Run from the repository root:

    .venv/bin/python bench/api_overhead.py [--runs N] [--warmup W] [--json FILE]

The script builds the busybox test image if the engine lacks it. It starts its own `corebase serve`
on a free loopback port with a temporary data directory (SQLite) and a random admin key. Then it
times two pairs of operations, and swaps the order of the API and the raw call in every iteration
so that drift in the engine affects both paths alike:

- cold start: `POST /api/runtime/start` against aiodocker create + start with the same create body;
- exec: `POST /api/runtime/exec` of `echo hi` against aiodocker exec create + attached start + read
  output + exec inspect, each path in its own running container.

The raw create body is replayed from the `Config` and `HostConfig` of a container the API started,
so both paths ask the engine for the same limits, capabilities, security options, log config and
labels. Container removal happens between measurements and is never timed.

Every container the script creates carries the label `corebase-bench.run=<run id>`; on exit,
including Ctrl-C and SIGTERM, the server is stopped and exactly those containers are removed. The
test image is left in place because the test suite shares it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import httpx

from harness import (
    REQUEST_TIMEOUT,
    RUN_LABEL,
    Server,
    StartBench,
    check_engine_address,
    command_line,
    elapsed_ms,
    engine_client,
    format_machine,
    machine_facts,
    measure_pair,
    measure_starts,
    prepare_replay,
    raw_exec,
    remove_run_containers,
    start_server,
    stop_server,
    summarize,
    wait_until_healthy,
)
# Importing harness puts tests/ on sys.path, where the test image builder lives.
from support.images import ensure_test_image

CONTAINER_COMMAND = ["sleep", "900"]
EXEC_COMMAND = ["echo", "hi"]
EXEC_OUTPUT = "hi\n"

# Maximum ratio of API p50 to raw p50 for each operation.
TARGETS = {"cold start": 1.15, "exec": 1.3}


# --- the timed operations ------------------------------------------------------------------


class Bench(StartBench):
    """Cold starts from StartBench, plus an exec through the API and through the engine."""

    async def api_exec(self, container_id: str) -> float:
        body = {"containerId": container_id, "command": EXEC_COMMAND}
        started = time.perf_counter_ns()
        response = await self.client.post("/api/runtime/exec", json=body)
        duration = elapsed_ms(started)
        if response.status_code != 200:
            raise RuntimeError(f"POST /api/runtime/exec failed with {response.status_code}: {response.text}")
        result = response.json()
        if result.get("exitCode") != 0 or result.get("stdout") != EXEC_OUTPUT:
            raise RuntimeError(
                f"exec through the API returned {result}, expected exit code 0 and stdout {EXEC_OUTPUT!r}"
            )
        return duration

    async def raw_exec(self, engine_id: str) -> float:
        """Run EXEC_COMMAND through aiodocker the way a minimal client does, and check its output."""
        started = time.perf_counter_ns()
        output, exit_code = await raw_exec(self.docker, engine_id, EXEC_COMMAND)
        duration = elapsed_ms(started)
        if exit_code != 0 or output.decode() != EXEC_OUTPUT:
            raise RuntimeError(
                f"raw exec returned exit code {exit_code} and output {output!r}, "
                f"expected exit code 0 and {EXEC_OUTPUT!r}"
            )
        return duration


# --- measurement loops ---------------------------------------------------------------------


async def measure_execs(bench: Bench, runs: int, warmup: int) -> dict[str, list[float]]:
    _, record = await bench.api_start()
    _, engine_id = await bench.raw_start()
    try:
        return await measure_pair(
            "exec", lambda: bench.api_exec(record["id"]), lambda: bench.raw_exec(engine_id), runs, warmup
        )
    finally:
        await bench.api_remove(record["id"])
        await bench.raw_remove(engine_id)


# --- the report ----------------------------------------------------------------------------


def compare(name: str, samples: dict[str, list[float]]) -> dict[str, Any]:
    api, raw = summarize(samples["api"]), summarize(samples["raw"])
    ratio_p50 = api["p50"] / raw["p50"]
    target = TARGETS[name]
    return {
        "runs": len(samples["api"]),
        "api": api,
        "raw": raw,
        "ratioP50": ratio_p50,
        "ratioMean": api["mean"] / raw["mean"],
        "target": target,
        "result": "PASS" if ratio_p50 <= target else "MISS",
        "samples": samples,
    }


def format_table(results: dict[str, dict[str, Any]]) -> str:
    header = (
        f"{'operation':<11} {'runs':>4}  {'api p50':>8} {'api p90':>8} {'api mean':>8}"
        f"  {'raw p50':>8} {'raw p90':>8} {'raw mean':>8}  {'added p50':>9}  {'ratio p50':>9} {'ratio mean':>10}"
        f"  {'target':>7}  result"
    )
    lines = [header, "-" * len(header)]
    for name, result in results.items():
        api, raw = result["api"], result["raw"]
        lines.append(
            f"{name:<11} {result['runs']:>4}  {api['p50']:>8.1f} {api['p90']:>8.1f} {api['mean']:>8.1f}"
            f"  {raw['p50']:>8.1f} {raw['p90']:>8.1f} {raw['mean']:>8.1f}  {api['p50'] - raw['p50']:>9.1f}"
            f"  {result['ratioP50']:>9.3f} {result['ratioMean']:>10.3f}  {'<= ' + format(result['target'], 'g'):>7}"
            f"  {result['result']}"
        )
    lines.append(
        "Times in milliseconds; 'added p50' is API p50 minus raw p50. "
        "The result compares the p50 ratio (API / raw) with the target."
    )
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------


@dataclass
class Run:
    run_id: str
    data_dir: Path
    server: Server | None = None


async def benchmark(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    # SIGTERM cancels the run like Ctrl-C does, so the clean-up in main() still happens.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)

    docker = engine_client()
    try:
        print("building or finding the test image", file=sys.stderr, flush=True)
        image = await ensure_test_image(docker)
        facts = await machine_facts(docker)

        print("starting corebase serve", file=sys.stderr, flush=True)
        run.server = start_server(run.data_dir)
        await wait_until_healthy(run.server)

        headers = {"Authorization": f"Bearer {run.server.admin_key}"}
        async with httpx.AsyncClient(base_url=run.server.base_url, headers=headers, timeout=REQUEST_TIMEOUT) as client:
            bench = Bench(run.run_id, client, docker, image, CONTAINER_COMMAND)
            differences = await prepare_replay(bench)
            if differences:
                raise RuntimeError(
                    "the replayed create body does not reproduce the API's container config:\n  "
                    + "\n  ".join(differences)
                )
            print("replayed config matches the API container's Config and HostConfig", file=sys.stderr)

            results = {
                "cold start": compare("cold start", await measure_starts(bench, args.runs, args.warmup)),
                "exec": compare("exec", await measure_execs(bench, args.runs, args.warmup)),
            }
    finally:
        await docker.close()

    return {
        "command": command_line(),
        "runs": args.runs,
        "warmup": args.warmup,
        "database": "SQLite (temporary data directory)",
        "machine": facts,
        "replayedBody": bench.raw_body,
        "results": results,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="measured iterations per operation (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="discarded iterations before measuring (default 3)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results and raw samples to FILE")
    args = parser.parse_args(argv)
    if args.runs < 2:
        parser.error(f"--runs {args.runs} is too small; percentiles need at least 2 runs")
    if args.warmup < 0:
        parser.error(f"--warmup {args.warmup} is invalid; use 0 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_engine_address()
    run = Run(run_id=secrets.token_hex(6), data_dir=Path(tempfile.mkdtemp(prefix="corebase-bench-")))
    print(
        f"run id {run.run_id}: every container this run creates carries the label {RUN_LABEL}={run.run_id}",
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
    except (RuntimeError, aiodocker.DockerError, httpx.HTTPError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
    finally:
        # Ctrl-C is ignored during clean-up so that it cannot be cut short. Each step in it has a timeout.
        previous_handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            print("cleaning up", file=sys.stderr, flush=True)
            if run.server is not None:
                stop_server(run.server)
                if report is None and not interrupted:
                    print("server log ends with:\n" + run.server.log_tail(), file=sys.stderr)
            removed = asyncio.run(remove_run_containers(run.run_id))
            if removed:
                print(f"removed {removed} leftover container(s)", file=sys.stderr)
            shutil.rmtree(run.data_dir, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous_handler)

    if report is None:
        return 130 if interrupted else 1

    print()
    print(f"command: {report['command']}")
    print(format_machine(report["machine"]))
    print(f"runs: {report['runs']} measured after {report['warmup']} warm-up, API on {report['database']}")
    print()
    print(format_table(report["results"]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
