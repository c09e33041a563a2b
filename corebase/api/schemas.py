"""Request and response bodies of /api/runtime, as msgspec Structs with camelCase JSON names.

Types and bounds declared here are checked by Litestar while it decodes the body, so a wrong type
gets a 400 naming the field. Rules that need settings or several fields live in
`corebase.containers.spec`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar.params import QueryParameter

from corebase.metrics.store import HistoryPoint

Seconds = Annotated[float, msgspec.Meta(ge=0, le=86400, description="Seconds")]

# Largest row offset: the largest integer that every JSON client reads exactly (2**53 - 1), far
# below the signed 64-bit limit of SQLite and PostgreSQL, past which the database would fail.
MAX_OFFSET = 2**53 - 1
# A page's row offset. Litestar 2.25 leaves a bound of 0 out of the OpenAPI document, so
# schema_extra states it again.
Offset = Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET, schema_extra={"minimum": 0})]
Argv = Annotated[list[str], msgspec.Meta(min_length=1, description="Program and arguments, not run by a shell")]


class Body(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    """Base of request bodies: camelCase names, and an unknown field is an error, not ignored."""


class Record(msgspec.Struct, rename="camel", kw_only=True):
    """Base of response bodies."""


# --- requests --------------------------------------------------------------------------------


class MountRequest(Body):
    type: Literal["volume", "tmpfs", "bind"]
    target: str
    source: str | None = None
    read_only: bool = False


class StartRequest(Body):
    # Exactly one of image and template.
    image: str | None = None
    template: str | None = None
    name: str | None = None
    project_id: str | None = None
    command: Argv | None = None
    entrypoint: list[str] | None = None
    env: dict[str, str] = {}
    # Container port ("3000" or "3000/udp") to host port; null or 0 lets the engine choose one.
    ports: dict[str, int | None] = {}
    memory: int | str | None = msgspec.field(default=None)
    cpus: float | None = None
    labels: dict[str, str] = {}
    workdir: str | None = None
    user: str | None = None
    tty: bool = False
    mounts: list[MountRequest] = []
    # Docker CLI style "source:target[:ro]" entries; a source that is a path is a host bind mount.
    volumes: list[str] = []
    # "standard", or "sandboxed" for gVisor's runsc; the template's level, else the configured default.
    isolation: Literal["standard", "sandboxed"] | None = None
    # "owner" joins the owner's own bridge network (the default); "none" gives no network at all.
    network: Literal["owner", "none"] | None = None
    # Accepted so that a request for them is rejected by policy with a reason, not ignored.
    privileged: bool = False
    network_mode: str | None = None
    pid_mode: str | None = None
    ipc_mode: str | None = None
    devices: list[str] = []
    # Seconds, or a string such as "1h": the container is removed this long after it started.
    # Without it, the template's ttl, else none.
    ttl: float | str | None = None
    # Seconds, or a string such as "15m": the container is stopped after this long without
    # activity. Without it, the template's idleTimeout, else none.
    idle_timeout: float | str | None = None
    # Remove the container once it has exited. Without it, the template's autoRemove, else false.
    auto_remove: bool | None = None


class StopRequest(Body):
    container_id: str
    # Grace period between the stop signal and SIGKILL; the configured default when omitted.
    timeout: Seconds | None = None


class RemoveRequest(Body):
    container_id: str
    force: bool = False


class ContainerRequest(Body):
    container_id: str


class ExecRequest(Body):
    container_id: str
    command: Argv
    env: dict[str, str] = {}
    workdir: str | None = None
    user: str | None = None
    timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None


# --- responses -------------------------------------------------------------------------------


class PortRecord(Record):
    container_port: int
    protocol: str
    host_ip: str
    host_port: int | None


class ResourcesRecord(Record):
    memory: int | None
    cpus: float | None
    pids_limit: int | None


class ContainerRecord(Record):
    id: str
    docker_id: str | None
    name: str
    image: str
    status: str
    project_id: str | None
    owner: str
    template: str | None
    template_version: int | None
    command: list[str] | None
    labels: dict[str, str]
    ports: list[PortRecord]
    resources: ResourcesRecord
    tty: bool
    exit_code: int | None
    oom_killed: bool
    error: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    removed_at: datetime | None
    # "pool" when the container was claimed from a pre-warmed pool, "cold" when created for the request.
    source: str | None = None
    # "standard" (runc) or "sandboxed" (gVisor's runsc).
    isolation: str = "standard"
    # The engine network the container joined: its owner's network, or "none".
    network: str | None = None
    # Seconds after its start that the container is removed, and the time that happens; null for no ttl.
    ttl: float | None = None
    expires_at: datetime | None = None
    # Seconds without activity after which the container is stopped; null for no idle timeout.
    idle_timeout: float | None = None
    # The last request that used the container, such as an exec, logs, stats or a file copy.
    last_activity_at: datetime | None = None
    # Whether the container is removed once it has exited.
    auto_remove: bool = False
    # Secrets generated for the template, in the start response only; CoreBase does not show them again.
    credentials: dict[str, str] | None = None


class ContainerPage(Record):
    items: list[ContainerRecord]
    total: int
    limit: int
    offset: int


class ExecRecord(Record):
    exit_code: int | None
    stdout: str
    stderr: str
    truncated: bool
    timed_out: bool
    duration_ms: float


class OutputLine(Record):
    """One piece of container output in an NDJSON stream, decoded as UTF-8 (invalid bytes become U+FFFD)."""

    stream: Literal["stdout", "stderr"]
    text: str


class ExecEndLine(Record):
    """The last line of a streamed exec."""

    # None when the command timed out, or when its output broke off (then `error` describes the failure).
    exit_code: int | None
    timed_out: bool
    duration_ms: float
    # Problem details (type, title, status, detail) when the output broke off before the command ended.
    error: dict[str, Any] | None = None


# The response header of GET and HEAD /api/runtime/containers/{id}/files that describes the path as JSON.
STAT_HEADER = "X-Container-Path-Stat"


class PathStatRecord(Record):
    """A path in a container. `mode` is the permission bits; `type` is file, directory, symlink or other."""

    name: str
    size: int
    mode: int
    type: Literal["file", "directory", "symlink", "other"]
    modified_at: datetime | None
    link_target: str | None


class UploadRecord(Record):
    container_id: str
    # The directory the archive was extracted into, or the path of the uploaded file.
    path: str
    # Bytes received: the archive's size, or the file's.
    size: int


class StatsRecord(Record):
    container_id: str
    read_at: datetime
    # "sample" when the collector's latest reading was fresh enough, "live" when read just now.
    source: Literal["sample", "live"]
    # Percent of one CPU, so a container using two full CPUs reads 200.
    cpu_percent: float | None
    # Known for live readings only.
    online_cpus: int | None
    memory_bytes: int
    memory_limit_bytes: int
    memory_percent: float | None
    network_rx_bytes: int
    network_tx_bytes: int
    block_read_bytes: int
    block_write_bytes: int
    pids: int


class StatsHistory(Record):
    """A container's samples in steps: averages and maxima per step, counters at the step's end."""

    container_id: str
    start: datetime = msgspec.field(name="from")
    end: datetime = msgspec.field(name="to")
    step: int
    # 0 when built from raw samples, else the rollup step the points come from.
    resolution: int
    points: list[HistoryPoint]


class StatsTotal(Record):
    """The newest samples of one project's or owner's running containers, added up."""

    key: str | None
    containers: int
    cpu_percent: float
    memory_bytes: int
    memory_limit_bytes: int
    network_rx_bytes: int
    network_tx_bytes: int
    pids: int


class StatsTotals(Record):
    group_by: Literal["project", "owner"]
    # Samples older than this many seconds are left out.
    fresh_for: float
    groups: list[StatsTotal]


class ComponentHealth(Record):
    ok: bool
    detail: str


class HealthRecord(Record):
    status: Literal["ok", "degraded"]
    version: str
    database: ComponentHealth
    engine: ComponentHealth


class MonitoringRecord(Record):
    """This API process's part in monitoring. Only the leader samples, and every process follows engine events."""

    process: str
    leader: bool
    # The process that has the monitor lease, which may be another one, or None when the lease is free.
    leader_process: str | None
    enabled: bool
    interval: float
    collector: str
    bus: Literal["memory", "redis"]
    # False while the Redis subscription is lost and being re-established.
    bus_connected: bool
    rounds: int
    last_round_seconds: float
    engine_events_connected: bool
    engine_events_reconnects: int


class PluginRecord(Record):
    name: str
    version: str | None
    hooks: list[str]
