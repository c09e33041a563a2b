"""Prometheus figures: container usage and state, pools, monitoring, HTTP requests and engine errors.

Each app instance keeps its figures in a CollectorRegistry of its own, never the global
`prometheus_client.REGISTRY`, so several apps can live in one process. Figures read from the
database (samples, container states, pools) are the same on every API process that shares the
database. Request latency, engine errors and the monitoring loop's figures belong to the process
that serves the scrape.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from piccolo.query.functions.aggregate import Count
from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from corebase import __version__
from corebase.containers.reconciler import REPAIR_KINDS
from corebase.containers.tables import ACTIVE_STATUSES, Container
from corebase.errors import EngineError, EngineTimeout, EngineUnavailable, ImagePullFailed
from corebase.metrics.tables import RuntimeMetric
from corebase.pool.tables import Pool

if TYPE_CHECKING:
    from corebase.metrics.service import MonitorService

# Upper bounds in seconds. Cold starts and image pulls take seconds, so the range goes past 10 s.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CLAIM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Engine error classes that always have a series, so rate() works before the first error.
ENGINE_ERROR_CLASSES = (EngineError, ImagePullFailed, EngineUnavailable, EngineTimeout)
ENGINE_ERRORS = (EngineError, EngineUnavailable, EngineTimeout)
CONTAINER_LABELS = ("container_id", "name", "owner", "project", "template")


class PrometheusMetrics:
    """The figures of one app instance: its own instruments, plus database figures read per scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "corebase_http_request_duration_seconds",
            "Time from receiving an HTTP request to sending the last byte of its response.",
            ["method", "route", "status"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.engine_errors = Counter(
            "corebase_engine_errors",
            "Container engine errors that HTTP routes returned to their callers, by error class.",
            ["error"],
            registry=self.registry,
        )
        for error_class in ENGINE_ERROR_CLASSES:
            self.engine_errors.labels(error_class.__name__)
        self.reconcile_repairs = Counter(
            "corebase_reconcile_repairs",
            "Differences between container rows and the engine that this process's reconciler repaired, by kind.",
            ["kind"],
            registry=self.registry,
        )
        for kind in REPAIR_KINDS:
            self.reconcile_repairs.labels(kind)
        build = Info("corebase_build", "CoreBase and Python versions of this process.", registry=self.registry)
        build.info({"version": __version__, "python": platform.python_version()})
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).observe(seconds)

    def count_engine_error(self, exc: BaseException) -> None:
        """Count `exc` when it is an engine error; other errors are ignored."""
        if isinstance(exc, ENGINE_ERRORS):
            self.engine_errors.labels(type(exc).__name__).inc()

    async def render(self, monitor: MonitorService, accept: str) -> tuple[bytes, str]:
        """Read the database figures, then encode every figure in the format that `accept` requests.

        `accept` is the request's Accept header. Returns the body and its content type: OpenMetrics
        when the header requests it, the Prometheus text format otherwise.
        """
        families = [
            *await container_families(monitor),
            *await pool_families(),
            *monitor_families(monitor),
        ]
        scrape = CollectorRegistry()
        scrape.register(_Families([*self.registry.collect(), *families]))
        encode, content_type = choose_encoder(accept)
        return encode(scrape), content_type


class _Families(Collector):
    """Metric families that were read before encoding began."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


# --- containers ------------------------------------------------------------------------------


async def container_families(monitor: MonitorService) -> list[Metric]:
    """Read the usage of each running container from its newest fresh sample, and the state of each active one.

    Pool members that no caller has claimed yet are left out, because pool_families counts them.
    """
    rows = await Container.select(
        Container.id, Container.name, Container.owner, Container.project_id, Container.template, Container.status
    ).where(Container.status.is_in(list(ACTIVE_STATUSES)) & Container.pool_state.is_null())
    samples = await monitor.store.latest_many(monitor.fresh_for)

    def gauge(name: str, documentation: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, documentation, labels=CONTAINER_LABELS)

    def counter(name: str, documentation: str) -> CounterMetricFamily:
        return CounterMetricFamily(name, documentation, labels=CONTAINER_LABELS)

    cpu = gauge("corebase_container_cpu_percent", "CPU use between the last two samples; 100 is one full CPU.")
    memory = gauge("corebase_container_memory_bytes", "Memory in use minus inactive page cache.")
    memory_limit = gauge("corebase_container_memory_limit_bytes", "Memory limit as the engine reports it.")
    received = counter("corebase_container_network_receive_bytes", "Bytes received on all interfaces.")
    sent = counter("corebase_container_network_transmit_bytes", "Bytes sent on all interfaces.")
    block_read = counter("corebase_container_block_read_bytes", "Bytes read from block devices.")
    block_write = counter("corebase_container_block_write_bytes", "Bytes written to block devices.")
    pids = gauge("corebase_container_pids", "Processes and threads in the container.")
    sampled_at = gauge("corebase_container_last_sample_timestamp_seconds", "Unix time of the sample shown.")
    state = GaugeMetricFamily(
        "corebase_container_state",
        "1 for the state the database records for each active container.",
        labels=[*CONTAINER_LABELS, "state"],
    )

    for row in rows:
        labels = [row["id"], row["name"], row["owner"], row["project_id"] or "", row["template"] or ""]
        state.add_metric([*labels, row["status"]], 1)
        sample: RuntimeMetric | None = samples.get(row["id"])
        if sample is None or row["status"] != "running":
            continue
        # The first sample of a container has no CPU figure, because CPU use needs two readings.
        if sample.cpu_percent is not None:
            cpu.add_metric(labels, sample.cpu_percent)
        memory.add_metric(labels, sample.memory_bytes)
        memory_limit.add_metric(labels, sample.memory_limit_bytes)
        received.add_metric(labels, sample.network_rx_bytes)
        sent.add_metric(labels, sample.network_tx_bytes)
        block_read.add_metric(labels, sample.block_read_bytes)
        block_write.add_metric(labels, sample.block_write_bytes)
        pids.add_metric(labels, sample.pids)
        sampled_at.add_metric(labels, sample.recorded_at.timestamp())
    return [cpu, memory, memory_limit, received, sent, block_read, block_write, pids, sampled_at, state]


# --- pools -----------------------------------------------------------------------------------


async def pool_families() -> list[Metric]:
    """Read the members by state, limits and target of each pool, and the claims and cold starts per template."""
    pools = await Pool.select(Pool.template, Pool.min_idle, Pool.max_idle, Pool.max_total, Pool.target).order_by(
        Pool.template
    )
    member_counts = await Container.select(Container.pool, Container.pool_state, Count()).where(
        Container.pool_state.is_not_null()
    ).group_by(Container.pool, Container.pool_state)
    # A failed start is not counted, and neither is one still in progress, because a start that
    # fails on a bad request deletes its row and would make the counter go down.
    cold_starts = await Container.select(Container.pool, Count()).where(
        (Container.source == "cold")
        & Container.pool.is_not_null()
        & Container.status.not_in(["creating", "failed"])
    ).group_by(Container.pool)
    claims = await _claim_buckets()

    members = GaugeMetricFamily(
        "corebase_pool_members",
        "Unclaimed pool members by state: warming, idle, retiring, or claimed while a claim is in progress.",
        labels=["template", "state"],
    )
    counts = {(row["pool"], row["pool_state"]): row["count"] for row in member_counts}
    for pool in pools:
        for member_state in ("idle", "warming"):
            counts.setdefault((pool["template"], member_state), 0)
    for (template, member_state), count in sorted(counts.items()):
        members.add_metric([template, member_state], count)

    limits = [
        GaugeMetricFamily(name, documentation, labels=["template"])
        for name, documentation in (
            ("corebase_pool_min_idle", "Fewest idle members the pool keeps."),
            ("corebase_pool_max_idle", "Most idle members the pool keeps."),
            ("corebase_pool_max_total", "Most members the pool may have at once."),
            ("corebase_pool_target_idle", "Idle members the autoscaler aims for now."),
        )
    ]
    for pool in pools:
        for family, column in zip(limits, ("min_idle", "max_idle", "max_total", "target")):
            family.add_metric([pool["template"]], pool[column])

    # Claims and cold starts are counted from container rows, which stay after a container is
    # removed, so the counters keep their values across restarts of CoreBase.
    templates = sorted({pool["template"] for pool in pools} | set(claims))
    claimed = CounterMetricFamily(
        "corebase_pool_claims", "Starts served by a pool member, by template.", labels=["template"]
    )
    claim_latency = HistogramMetricFamily(
        "corebase_pool_claim_duration_seconds",
        "Time the server spent handing a pool member to its caller.",
        labels=["template"],
    )
    for template in templates:
        count, total_seconds, buckets = claims.get(template, (0, 0.0, [0] * len(CLAIM_BUCKETS)))
        claimed.add_metric([template], count)
        claim_latency.add_metric(
            [template],
            [*[(str(bound), cumulative) for bound, cumulative in zip(CLAIM_BUCKETS, buckets)], ("+Inf", count)],
            total_seconds,
        )
    missed = CounterMetricFamily(
        "corebase_pool_cold_starts",
        "Starts of a pooled template that found no idle member and started a new container.",
        labels=["template"],
    )
    # Every pool has a series from the start, so rate() works before the first cold start.
    started_cold = {row["pool"]: row["count"] for row in cold_starts}
    for template in sorted({pool["template"] for pool in pools} | set(started_cold)):
        missed.add_metric([template], started_cold.get(template, 0))
    return [members, *limits, claimed, claim_latency, missed]


async def _claim_buckets() -> dict[str, tuple[int, float, list[int]]]:
    """Return, per template, the claim count, the summed claim time in seconds and cumulative bucket counts."""
    # The bounds come from CLAIM_BUCKETS, never from a request, so formatting them into SQL is safe.
    bucket_columns = ", ".join(
        f"SUM(CASE WHEN claim_ms <= {bound * 1000!r} THEN 1 ELSE 0 END) AS le_{index}"
        for index, bound in enumerate(CLAIM_BUCKETS)
    )
    rows = await Container.raw(
        f"SELECT template, COUNT(*) AS claims, SUM(claim_ms) AS total_ms, {bucket_columns} "
        "FROM containers WHERE source = 'pool' AND claim_ms IS NOT NULL AND template IS NOT NULL "
        "GROUP BY template"
    )
    return {
        row["template"]: (
            int(row["claims"]),
            float(row["total_ms"] or 0.0) / 1000,
            [int(row[f"le_{index}"] or 0) for index in range(len(CLAIM_BUCKETS))],
        )
        for row in rows
    }


# --- monitoring ------------------------------------------------------------------------------


def monitor_families(monitor: MonitorService) -> list[Metric]:
    """Build the figures of this process's monitoring loop and engine event stream."""
    leader = GaugeMetricFamily(
        "corebase_monitor_leader", "1 while this process holds the monitoring lease and samples containers."
    )
    leader.add_metric([], 1 if monitor.leader else 0)
    rounds = CounterMetricFamily("corebase_monitor_rounds", "Sampling rounds this process completed.")
    rounds.add_metric([], monitor.rounds)
    last_round = GaugeMetricFamily(
        "corebase_monitor_last_round_seconds", "Duration of this process's most recent sampling round."
    )
    last_round.add_metric([], monitor.last_round_seconds)
    reconnects = CounterMetricFamily(
        "corebase_engine_event_reconnects", "Reconnections of this process to the engine's event stream."
    )
    reconnects.add_metric([], monitor.watcher.reconnects)
    return [leader, rounds, last_round, reconnects]
