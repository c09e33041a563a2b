"""Converting stored rows and runtime values into response records."""

from __future__ import annotations

from corebase.api.schemas import ContainerRecord, PortRecord, ResourcesRecord, StatsRecord
from corebase.containers.spec import NANO_CPUS
from corebase.containers.tables import Container
from corebase.metrics.tables import RuntimeMetric
from corebase.runtime.types import StatsSample


def container_record(row: Container, credentials: dict[str, str] | None = None) -> ContainerRecord:
    """Build the record; `credentials` are passed only in the start response, the one time they are shown."""
    return ContainerRecord(
        id=row.id,
        docker_id=row.docker_id,
        name=row.name,
        image=row.image,
        status=row.status,
        project_id=row.project_id,
        owner=row.owner,
        template=row.template,
        template_version=row.template_version,
        command=row.command,
        labels=row.labels or {},
        ports=[
            PortRecord(
                container_port=port["containerPort"],
                protocol=port["protocol"],
                host_ip=port["hostIp"],
                host_port=port["hostPort"],
            )
            for port in row.ports or []
        ],
        resources=ResourcesRecord(
            memory=row.memory,
            cpus=row.nano_cpus / NANO_CPUS if row.nano_cpus else None,
            pids_limit=row.pids_limit,
        ),
        tty=row.tty,
        exit_code=row.exit_code,
        oom_killed=row.oom_killed,
        error=row.error,
        created_at=row.created_at,
        updated_at=row.updated_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        removed_at=row.removed_at,
        source=row.source,
        isolation=row.isolation,
        network=row.network,
        ttl=row.ttl,
        expires_at=row.expires_at,
        idle_timeout=row.idle_timeout,
        last_activity_at=row.last_activity_at,
        auto_remove=row.auto_remove,
        credentials=credentials or None,
    )


def stats_record(container_id: str, sample: StatsSample, cpu_percent: float | None) -> StatsRecord:
    limit = sample.memory_limit
    return StatsRecord(
        container_id=container_id,
        read_at=sample.read_at,
        source="live",
        cpu_percent=round(cpu_percent, 3) if cpu_percent is not None else None,
        online_cpus=sample.online_cpus,
        memory_bytes=sample.memory_used,
        memory_limit_bytes=limit,
        memory_percent=round(sample.memory_used / limit * 100, 3) if limit else None,
        network_rx_bytes=sample.network_rx_bytes,
        network_tx_bytes=sample.network_tx_bytes,
        block_read_bytes=sample.block_read_bytes,
        block_write_bytes=sample.block_write_bytes,
        pids=sample.pids,
    )


def stored_stats_record(row: RuntimeMetric) -> StatsRecord:
    """Build a StatsRecord from the collector's stored sample."""
    limit = row.memory_limit_bytes
    return StatsRecord(
        container_id=row.container_id,
        read_at=row.recorded_at,
        source="sample",
        cpu_percent=round(row.cpu_percent, 3) if row.cpu_percent is not None else None,
        online_cpus=None,
        memory_bytes=row.memory_bytes,
        memory_limit_bytes=limit,
        memory_percent=round(row.memory_bytes / limit * 100, 3) if limit else None,
        network_rx_bytes=row.network_rx_bytes,
        network_tx_bytes=row.network_tx_bytes,
        block_read_bytes=row.block_read_bytes,
        block_write_bytes=row.block_write_bytes,
        pids=row.pids,
    )
