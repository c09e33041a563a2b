"""Measure the CPU the metrics collector costs the server, with many running containers.

Run from the repository root:

    .venv/bin/python bench/collector_cost.py [--containers N] [--interval S] [--window W] [--json FILE]

Defaults: 100 containers, a 5-second sampling interval, a 60-second measuring window.

The script starts `corebase serve` (SQLite, temporary data directory) with monitoring off and
starts N busybox containers running `sleep` through the API. Then it measures, over the same
window:

- the server's CPU time with monitoring off: the baseline of an idle server;
- the CPU time of a plain loop in this process that reads the same N containers' stats straight from
  the engine through aiodocker every S seconds, all at once, without storing anything (raw engine).

It restarts the server on the same database with monitoring on at an S-second interval, waits for
two rounds, and measures the server's CPU time over the window again. The collector's cost is
that CPU time minus the baseline, in percent of one core. The target is at most 5 percent of one
core for 100 containers at 5 seconds. The ratio compares the collector's cost with the raw loop's
CPU time: what storing samples, publishing them and checking alert rules add to reading the engine.

Containers carry the label `corebase-bench.run=<run id>` and are removed on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from harness import (
    REQUEST_TIMEOUT,
    RUN_LABEL,
    Run,
    command_line,
    engine_client,
    format_machine,
    machine_facts,
    run_main,
    server_cpu_seconds,
    stop_server,
    wait_until_healthy,
)
from support.images import ensure_test_image

TARGET_PERCENT_OF_CORE = 5.0


async def start_containers(client: httpx.AsyncClient, image: str, run_id: str, count: int) -> list[str]:
    limit = asyncio.Semaphore(8)

    async def one(index: int) -> str:
        async with limit:
            response = await client.post(
                "/api/runtime/start",
                json={"image": image, "command": ["sleep", "3600"], "memory": "16m", "labels": {RUN_LABEL: run_id}},
            )
            if response.status_code != 201:
                raise RuntimeError(f"start {index} failed: {response.status_code} {response.text}")
            return response.json()["dockerId"]

    return await asyncio.gather(*(one(index) for index in range(count)))


async def raw_loop(engine_ids: list[str], interval: float, window: float) -> tuple[float, int]:
    """Read every container's one-shot stats each interval for `window` seconds; return CPU seconds and readings."""
    docker = engine_client()
    readings = 0
    try:
        started_cpu = time.process_time()
        deadline = time.monotonic() + window
        next_round = time.monotonic()
        while time.monotonic() < deadline:
            results = await asyncio.gather(
                *(docker._query_json(f"containers/{engine_id}/stats", params={"stream": False, "one-shot": True})
                  for engine_id in engine_ids)
            )
            readings += sum(1 for result in results if result)
            next_round += interval
            await asyncio.sleep(max(0.0, next_round - time.monotonic()))
        return time.process_time() - started_cpu, readings
    finally:
        await docker.close()


async def measure_server(server, window: float) -> float:
    before = server_cpu_seconds(server)
    await asyncio.sleep(window)
    return server_cpu_seconds(server) - before


async def benchmark(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    docker = engine_client()
    try:
        image = await ensure_test_image(docker)
        facts = await machine_facts(docker)
    finally:
        await docker.close()

    settings = {"COREBASE_MONITORING_ENABLED": "false", "COREBASE_POOL_INTERVAL": "60"}
    server = run.start_server(settings)
    await wait_until_healthy(server)
    headers = {"Authorization": f"Bearer {server.admin_key}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=REQUEST_TIMEOUT) as client:
        print(f"starting {args.containers} containers", file=sys.stderr, flush=True)
        engine_ids = await start_containers(client, image, run.run_id, args.containers)

    print(f"measuring the idle server and the raw loop for {args.window:g} s", file=sys.stderr, flush=True)
    await asyncio.sleep(2)
    baseline, (raw_cpu, raw_readings) = await asyncio.gather(
        measure_server(server, args.window), raw_loop(engine_ids, args.interval, args.window)
    )
    stop_server(server)

    settings = {"COREBASE_MONITORING_INTERVAL": str(args.interval), "COREBASE_POOL_INTERVAL": "60"}
    server = run.start_server(settings | {"COREBASE_ADMIN_API_KEY": server.admin_key}, name="server")
    await wait_until_healthy(server)
    headers = {"Authorization": f"Bearer {server.admin_key}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=REQUEST_TIMEOUT) as client:
        await asyncio.sleep(args.interval * 2 + 1)
        before = (await client.get("/api/monitoring")).json()
        print(f"measuring the server with the collector for {args.window:g} s", file=sys.stderr, flush=True)
        with_collector = await measure_server(server, args.window)
        after = (await client.get("/api/monitoring")).json()
        totals = (await client.get("/api/runtime/stats/totals", params={"groupBy": "owner"})).json()

    sampled = sum(group["containers"] for group in totals["groups"])
    if not after["leader"] or sampled < args.containers:
        raise RuntimeError(f"the collector did not sample every container: {after}, totals {totals}")

    def percent(seconds: float) -> float:
        return seconds / args.window * 100

    cost = max(0.0, with_collector - baseline)
    return {
        "command": command_line(),
        "machine": facts,
        "containers": args.containers,
        "interval": args.interval,
        "window": args.window,
        "rounds": after["rounds"] - before["rounds"],
        "lastRoundSeconds": after["lastRoundSeconds"],
        "serverIdlePercent": percent(baseline),
        "serverWithCollectorPercent": percent(with_collector),
        "collectorPercent": percent(cost),
        "rawLoopPercent": percent(raw_cpu),
        "rawReadings": raw_readings,
        "ratio": cost / raw_cpu if raw_cpu else None,
    }


def report(result: dict[str, Any]) -> None:
    print()
    print(f"command: {result['command']}")
    print(format_machine(result["machine"]))
    print(
        f"{result['containers']} running containers, {result['interval']:g} s interval, "
        f"{result['window']:g} s window, {result['rounds']} collector rounds "
        f"(last round took {result['lastRoundSeconds'] * 1000:.0f} ms)"
    )
    print()
    print(f"{'measure':<42} {'% of one core':>14}")
    print("-" * 57)
    print(f"{'server, monitoring off (baseline)':<42} {result['serverIdlePercent']:>14.2f}")
    print(f"{'server, collector on':<42} {result['serverWithCollectorPercent']:>14.2f}")
    print(f"{'collector cost (on minus off)':<42} {result['collectorPercent']:>14.2f}")
    print(f"{'raw engine stats loop (aiodocker, no storage)':<42} {result['rawLoopPercent']:>14.2f}")
    print()
    verdict = "PASS" if result["collectorPercent"] <= TARGET_PERCENT_OF_CORE else "FAIL"
    ratio = f"{result['ratio']:.2f}x" if result["ratio"] is not None else "n/a"
    print(f"collector cost / raw loop: {ratio}; target collector cost <= {TARGET_PERCENT_OF_CORE:g}% of one core: {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=100, help="running containers (default 100)")
    parser.add_argument("--interval", type=float, default=5.0, help="sampling interval in seconds (default 5)")
    parser.add_argument("--window", type=float, default=60.0, help="measuring window in seconds (default 60)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results to FILE")
    args = parser.parse_args(argv)
    if args.containers < 1 or args.window < args.interval:
        parser.error("use at least 1 container and a window of at least one interval")

    return run_main(lambda run: benchmark(run, args), report, args.json)


if __name__ == "__main__":
    sys.exit(main())
