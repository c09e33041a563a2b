"""Value types that cross the boundary between the core and a runtime backend.

Sizes are bytes, CPU is in nano-CPUs (1e9 is one CPU), times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

StreamName = Literal["stdout", "stderr"]

# Signals an interactive exec session may send, by name without the SIG prefix.
EXEC_SIGNALS = ("INT", "TERM", "KILL", "HUP", "QUIT", "USR1", "USR2", "TSTP", "CONT", "STOP", "WINCH")

# Engine states as the Docker Engine names them; a backend maps its own onto these.
EngineStatus = Literal["created", "running", "paused", "restarting", "removing", "exited", "dead"]


class PortBinding(msgspec.Struct, frozen=True):
    """One published port: container port and protocol, bound to host_ip:host_port on the host."""

    container_port: int
    host_port: int | None = None
    host_ip: str = "127.0.0.1"
    protocol: Literal["tcp", "udp", "sctp"] = "tcp"


class MountSpec(msgspec.Struct, frozen=True):
    """A mount inside the container: a named volume, a tmpfs, or (where policy allows) a bind."""

    type: Literal["volume", "tmpfs", "bind"]
    target: str
    source: str | None = None
    read_only: bool = False


class HealthCheck(msgspec.Struct, frozen=True):
    """A command the engine runs inside the container to tell whether it is ready. Times are seconds."""

    test: list[str]
    interval: float = 2.0
    timeout: float = 5.0
    retries: int = 3
    start_period: float = 0.0


HealthStatus = Literal["starting", "healthy", "unhealthy"]


class ContainerSpec(msgspec.Struct):
    """Everything a runtime needs to create one container. The core fills every field."""

    image: str
    name: str
    labels: dict[str, str]
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    env: dict[str, str] = {}
    ports: list[PortBinding] = []
    mounts: list[MountSpec] = []
    workdir: str | None = None
    user: str | None = None
    tty: bool = False
    memory: int | None = None
    nano_cpus: int | None = None
    pids_limit: int | None = None
    init: bool = False
    cap_drop: list[str] = []
    cap_add: list[str] = []
    security_opt: list[str] = []
    privileged: bool = False
    network_mode: str | None = None
    pid_mode: str | None = None
    ipc_mode: str | None = None
    healthcheck: HealthCheck | None = None
    # Host devices to expose, in the Docker CLI form "/dev/host[:/dev/container[:permissions]]".
    devices: list[str] = []
    # "standard" or "sandboxed"; `runtime` is the engine's OCI runtime that provides it.
    isolation: str = "standard"
    # The engine's OCI runtime by name, such as "runsc"; None uses the engine's default (runc).
    runtime: str | None = None
    # "missing" pulls only when the image is absent, "always" before every create, "never" not at all.
    pull_policy: Literal["missing", "always", "never"] = "missing"


class ContainerState(msgspec.Struct):
    """The engine's report on one container."""

    engine_id: str
    name: str
    image: str
    status: EngineStatus
    labels: dict[str, str] = {}
    exit_code: int | None = None
    oom_killed: bool = False
    error: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    ports: list[PortBinding] = []
    tty: bool = False
    # None when the container has no health check.
    health: HealthStatus | None = None
    # Limits as the engine holds them; None when unlimited or unknown (the list endpoint omits them).
    memory: int | None = None
    nano_cpus: int | None = None

    @property
    def running(self) -> bool:
        return self.status in ("running", "paused", "restarting")


class ExecResult(msgspec.Struct):
    """The outcome of a non-interactive exec. `exit_code` is None only when `timed_out` is true."""

    exit_code: int | None
    stdout: str
    stderr: str
    truncated: bool = False
    timed_out: bool = False


class ExecExit(msgspec.Struct):
    """The last item of a streamed exec. `exit_code` is None when `timed_out` is set or the engine reported none."""

    exit_code: int | None
    timed_out: bool = False


class LogOptions(msgspec.Struct):
    """A selection of log output to read. `since` and `until` are Unix times in seconds."""

    stdout: bool = True
    stderr: bool = True
    follow: bool = False
    tail: int | None = None
    since: float | None = None
    until: float | None = None
    timestamps: bool = False


class LogChunk(msgspec.Struct):
    """A piece of log output from one stream. With a TTY all output arrives as stdout."""

    stream: StreamName
    data: bytes


class StatsSample(msgspec.Struct):
    """One reading of a container's counters.

    `cpu_total_ns` is the container's cumulative CPU time and `system_cpu_ns` the host's, both in
    nanoseconds, so two samples give a CPU percentage. `memory_used` excludes reclaimable page
    cache (inactive file pages) the way `docker stats` computes it.
    """

    read_at: datetime
    cpu_total_ns: int
    system_cpu_ns: int | None
    online_cpus: int
    memory_used: int
    memory_limit: int
    network_rx_bytes: int = 0
    network_tx_bytes: int = 0
    block_read_bytes: int = 0
    block_write_bytes: int = 0
    pids: int = 0


class PathStat(msgspec.Struct, frozen=True):
    """A path inside a container, as the engine describes it before a copy.

    `mode` holds the permission bits only (such as 0o644); `type` says what the path is.
    `link_target` is set for a symbolic link.
    """

    name: str
    size: int
    mode: int
    type: Literal["file", "directory", "symlink", "other"]
    modified_at: datetime | None = None
    link_target: str | None = None


class RuntimeEvent(msgspec.Struct, frozen=True):
    """One container event from the engine's event stream.

    `action` is the engine's word (create, start, die, stop, destroy, oom, kill, pause, unpause,
    "health_status: healthy", ...). `time_ns` is the engine's time of the event in nanoseconds
    since the epoch; together with `engine_id` and `action` it identifies the event, so a stream
    resumed from that time can skip what it already delivered. `attributes` are the event's
    attributes, container labels included (exitCode for die, signal for kill).
    """

    engine_id: str
    action: str
    time_ns: int
    attributes: dict[str, str] = {}

    @property
    def key(self) -> tuple[int, str, str]:
        return (self.time_ns, self.engine_id, self.action)


class RuntimeInfo(msgspec.Struct):
    """Facts about the engine behind a runtime, as reported at start-up and by /health."""

    backend: str
    version: str
    api_version: str
    os: str = ""
    cgroup_version: str = ""
    cpus: int = 0
    memory_bytes: int = 0
    runtimes: list[str] = []
