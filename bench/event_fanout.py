"""Measure how fast an engine event reaches many WebSocket subscribers of /api/events.

Run from the repository root:

    .venv/bin/python bench/event_fanout.py [--subscribers N] [--events E] [--json FILE]

Defaults: 500 subscribers, 40 events.

The script starts `corebase serve` (SQLite, temporary data directory, default settings), starts
one busybox container through the API and opens N WebSocket connections to
`/api/events?types=container.started&containerId=<id>`. Beside them it opens one subscription
straight to the engine's `/events` stream through aiodocker (raw engine). Then, E times, it stops
the container with no grace period and starts it again through the engine, which emits one
`start` event per cycle, and waits until every subscriber has that event before the next cycle.

Latency is the time a client receives the event minus the engine's own time of the event
(`timeNano`, carried in CoreBase's event as `data.engineTimeNs`); the clients and the engine share
the machine's clock. It includes the engine's own delay, CoreBase's watcher, the bus and the
WebSocket fan-out, and the clients' JSON decoding, all on one machine. The target is a p99 of at
most 100 ms over every delivery, and every subscriber must receive every event exactly once. The
ratios compare CoreBase's p50 and p99 with the raw stream's. The raw stream has one client and E
events, so its p99 is close to its slowest event and varies from run to run.

Containers carry the label `corebase-bench.run=<run id>` and are removed on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import websockets

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
    summarize,
    wait_until_healthy,
)
from support.images import ensure_test_image

TARGET_P99_MS = 100.0
# Seconds to wait for every subscriber to receive one event before the cycle counts as lost.
DELIVERY_WAIT = 10.0


class Subscribers:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.received: dict[int, int] = defaultdict(int)
        self.duplicates = 0
        self.changed = asyncio.Event()

    def record(self, client: int, engine_time_ns: int, seen: set[int]) -> None:
        self.latencies.append((time.time_ns() - engine_time_ns) / 1e6)
        if engine_time_ns in seen:
            self.duplicates += 1
        seen.add(engine_time_ns)
        self.received[engine_time_ns] += 1
        self.changed.set()


async def subscriber(index: int, url: str, headers: dict[str, str], results: Subscribers, ready: asyncio.Event, connected: list[int]) -> None:
    seen: set[int] = set()
    async with websockets.connect(url, additional_headers=headers, open_timeout=60, max_queue=None) as socket:
        await socket.recv()  # the "subscribed" acknowledgement
        connected.append(index)
        if len(connected) == results.expected:
            ready.set()
        async for raw in socket:
            message = json.loads(raw)
            if message.get("type") == "container.started":
                results.record(index, message["data"]["engineTimeNs"], seen)


async def raw_subscriber(container_id: str, latencies: list[float], started: asyncio.Event) -> None:
    docker = engine_client()
    try:
        filters = json.dumps({"type": ["container"], "event": ["start"], "label": [f"corebase.id={container_id}"]})
        async with docker._query("events", params={"filters": filters}, timeout=None) as response:
            started.set()
            async for line in response.content:
                if line.strip():
                    event = json.loads(line)
                    latencies.append((time.time_ns() - int(event["timeNano"])) / 1e6)
    finally:
        await docker.close()


async def benchmark(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    docker = engine_client()
    image = await ensure_test_image(docker)
    facts = await machine_facts(docker)
    server = run.start_server({"COREBASE_POOL_INTERVAL": "60"})
    await wait_until_healthy(server)
    headers = {"Authorization": f"Bearer {server.admin_key}"}
    tasks: list[asyncio.Task] = []
    try:
        async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=REQUEST_TIMEOUT) as client:
            response = await client.post(
                "/api/runtime/start", json={"image": image, "command": ["sleep", "3600"], "labels": {RUN_LABEL: run.run_id}}
            )
            if response.status_code != 201:
                raise RuntimeError(f"start failed: {response.status_code} {response.text}")
            record = response.json()

        results = Subscribers()
        results.expected = args.subscribers
        ready = asyncio.Event()
        connected: list[int] = []
        url = server.base_url.replace("http://", "ws://") + f"/api/events?types=container.started&containerId={record['id']}"
        print(f"connecting {args.subscribers} subscribers", file=sys.stderr, flush=True)
        for index in range(args.subscribers):
            tasks.append(asyncio.create_task(subscriber(index, url, headers, results, ready, connected)))
            if index % 50 == 49:
                await asyncio.sleep(0.05)
        await asyncio.wait_for(ready.wait(), 120)

        raw_latencies: list[float] = []
        raw_ready = asyncio.Event()
        tasks.append(asyncio.create_task(raw_subscriber(record["id"], raw_latencies, raw_ready)))
        await raw_ready.wait()

        container = docker.containers.container(record["dockerId"])
        lost = 0
        server_cpu_before = server_cpu_seconds(server)
        client_cpu_before = time.process_time()
        print(f"sending {args.events} start events", file=sys.stderr, flush=True)
        for cycle in range(args.events):
            await container.stop(t=0)
            before = len(results.latencies)
            await container.start()
            deadline = time.monotonic() + DELIVERY_WAIT
            while len(results.latencies) - before < args.subscribers and time.monotonic() < deadline:
                results.changed.clear()
                try:
                    await asyncio.wait_for(results.changed.wait(), max(0.01, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    break
            lost += max(0, args.subscribers - (len(results.latencies) - before))
            await asyncio.sleep(0.2)
        server_cpu = server_cpu_seconds(server) - server_cpu_before
        client_cpu = time.process_time() - client_cpu_before
        await asyncio.sleep(0.5)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await docker.close()

    if not results.latencies:
        raise RuntimeError("no subscriber received any event")
    corebase = summarize(results.latencies)
    raw = summarize(raw_latencies)
    return {
        "command": command_line(),
        "machine": facts,
        "subscribers": args.subscribers,
        "events": args.events,
        "deliveries": len(results.latencies),
        "expectedDeliveries": args.subscribers * args.events,
        "lost": lost,
        "duplicates": results.duplicates,
        "corebaseMs": corebase,
        "rawMs": raw,
        "ratioP50": corebase["p50"] / raw["p50"] if raw["p50"] > 0 else None,
        "ratioP99": corebase["p99"] / raw["p99"] if raw["p99"] > 0 else None,
        "serverCpuMsPerCycle": server_cpu / args.events * 1000,
        "clientCpuMsPerCycle": client_cpu / args.events * 1000,
    }


def report(result: dict[str, Any]) -> None:
    print()
    print(f"command: {result['command']}")
    print(format_machine(result["machine"]))
    print(
        f"{result['subscribers']} subscribers, {result['events']} events: {result['deliveries']} of "
        f"{result['expectedDeliveries']} deliveries, {result['lost']} lost, {result['duplicates']} duplicated"
    )
    print()
    print(f"{'path':<34} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    print("-" * 70)
    for name, key in (("CoreBase WebSocket subscribers", "corebaseMs"), ("raw engine /events (1 client)", "rawMs")):
        row = result[key]
        print(f"{name:<34} {row['p50']:>8.1f} {row['p90']:>8.1f} {row['p99']:>8.1f} {row['max']:>8.1f}")
    print()
    print(
        f"CPU per stop-and-start cycle (kill, die, stop and start events): server {result['serverCpuMsPerCycle']:.1f} ms, "
        f"this script's {result['subscribers']} clients {result['clientCpuMsPerCycle']:.1f} ms"
    )
    ok = result["corebaseMs"]["p99"] <= TARGET_P99_MS and result["lost"] == 0 and result["duplicates"] == 0
    ratios = ", ".join(
        f"{name} {result[key]:.1f}x" if result[key] else f"{name} n/a" for name, key in (("p50", "ratioP50"), ("p99", "ratioP99"))
    )
    print(f"ratio CoreBase / raw: {ratios}; target p99 <= {TARGET_P99_MS:g} ms, nothing lost or duplicated: {'PASS' if ok else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=500, help="WebSocket subscribers (default 500)")
    parser.add_argument("--events", type=int, default=40, help="start events sent (default 40)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results to FILE")
    args = parser.parse_args(argv)
    if args.subscribers < 1 or args.events < 2:
        parser.error("use at least 1 subscriber and 2 events")

    return run_main(lambda run: benchmark(run, args), report, args.json)


if __name__ == "__main__":
    sys.exit(main())
