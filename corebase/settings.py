"""Typed settings: built-in defaults, then config/corebase.toml (or --config), then COREBASE_* variables.

Each field of a section maps to the variable ``COREBASE_<SECTION>_<FIELD>`` (for example
``server.port`` is ``COREBASE_SERVER_PORT``), and ENV_ALIASES lists the few shorter names. List
values in variables are comma-separated, and mappings are written key=value,key2=value2. An invalid value raises ConfigError naming the setting.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from corebase.errors import ConfigError
from corebase.sizes import parse_size

ENV_PREFIX = "COREBASE_"

# Shorter variable names that deployers expect, mapped to the setting they set.
ENV_ALIASES = {
    "COREBASE_DATABASE_URL": ("database", "url"),
    "COREBASE_ADMIN_API_KEY": ("auth", "admin_api_key"),
    "COREBASE_DATA_DIR": ("server", "data_dir"),
    "COREBASE_REDIS_URL": ("redis", "url"),
}

# Kept after every other capability is dropped: enough for package managers and servers on low
# ports, without NET_RAW, MKNOD, SYS_CHROOT, AUDIT_WRITE or SETFCAP from the engine's default set.
DEFAULT_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "NET_BIND_SERVICE", "SETGID", "SETUID")

# Docker Hub, where images without a registry come from (the built-in templates' images among
# them), and registries on the loopback interface.
DEFAULT_REGISTRIES = ("docker.io", "localhost", "127.0.0.1", "[::1]")

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


class Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every settings section; unknown keys are errors, so typos surface at start-up."""


class ServerSettings(Section):
    host: str = "127.0.0.1"
    """Address the API listens on. Loopback by default; set 0.0.0.0 to accept remote clients."""
    port: Port = 8420
    """TCP port the API listens on."""
    data_dir: str = ""
    """Directory for the SQLite database and the generated admin key; empty means ~/.local/share/corebase."""
    max_request_body: str = "1m"
    """Largest accepted request body, in bytes or with a k/m/g suffix."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Level of CoreBase's own log lines."""


class DatabaseSettings(Section):
    url: str = ""
    """Empty for the SQLite file in the data directory, or postgresql://user:pass@host:port/db."""
    auto_migrate: bool = True
    """Apply pending migrations when `corebase serve` starts."""


class DockerSettings(Section):
    url: str = ""
    """Engine address (unix:///var/run/docker.sock or tcp://...); empty uses DOCKER_HOST, then the local socket."""
    timeout: PositiveFloat = 30.0
    """Seconds one engine call may take before it fails with 504; stops add their grace period to it."""
    pull_timeout: PositiveFloat = 600.0
    """Seconds an image pull may take."""
    pull_policy: Literal["missing", "always", "never"] = "missing"
    """When to pull an image: only when it is missing locally, before every start, or never."""
    probe_interval: Annotated[float, msgspec.Meta(gt=0, le=300)] = 2.0
    """Seconds between two health checks of the engine; while it is down, engine requests answer 503 at once."""
    probe_timeout: PositiveFloat = 5.0
    """Seconds a health check may take; after two slow checks in a row the engine counts as down and calls waiting for it fail with 503."""


class ContainerSettings(Section):
    default_memory: str = "512m"
    """Memory limit applied when a start request names none, in bytes or with a k/m/g suffix."""
    max_memory: str = "8g"
    """Largest memory limit a start request may ask for."""
    default_cpus: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    """CPU limit applied when a start request names none, in CPUs."""
    max_cpus: Annotated[float, msgspec.Meta(gt=0)] = 4.0
    """Largest CPU limit a start request may ask for."""
    pids_limit: PositiveInt = 512
    """Maximum number of processes in one container."""
    init: bool = False
    """Run the engine's init (docker-init) as PID 1, so processes left without a parent are reaped."""
    cap_add: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_CAPABILITIES))
    """Capabilities kept after dropping all; the rest of the engine's default set is dropped."""
    no_new_privileges: bool = True
    """Stop processes from gaining privileges through setuid binaries."""
    publish_host_ip: str = "127.0.0.1"
    """Host address that published ports bind to."""
    stop_timeout: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    """Seconds between the stop signal and SIGKILL when a request names no timeout."""
    log_max_size: str = "10m"
    """Size of one json-file log file of a container, in bytes or with a k/m/g suffix; the engine then starts a new file."""
    log_max_files: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    """Log files kept per container, so a log keeps at most log_max_files times log_max_size of the latest output."""


class QuotaSettings(Section):
    """Default per-user quotas. An admin can override them per user through /api/quotas/{user}.

    Admins are not limited. Memory and CPU limits are caps, not reservations: the engine does
    not set them aside, so the totals may add up to more than the host has.
    """

    max_containers: Annotated[int, msgspec.Meta(ge=0)] = 10
    """Active containers one user may have at once; a stopped container counts until it is removed."""
    max_memory: str = "16g"
    """Sum of the memory limits of one user's active containers, in bytes or with a k/m/g suffix."""
    max_cpus: Annotated[float, msgspec.Meta(ge=0)] = 16.0
    """Sum of the CPU limits of one user's active containers, in CPUs."""
    max_container_memory: str = "8g"
    """Largest memory limit of any one container of a user; containers.max_memory also caps it."""
    max_container_cpus: Annotated[float, msgspec.Meta(ge=0)] = 4.0
    """Largest CPU limit of any one container of a user; containers.max_cpus also caps it."""


class ExecSettings(Section):
    max_output: str = "1m"
    """Output kept per stream (stdout, stderr) of one exec; the rest is dropped and `truncated` set."""
    default_timeout: PositiveFloat = 60.0
    """Seconds an exec may run when the request names no timeout."""
    max_timeout: PositiveFloat = 3600.0
    """Largest timeout an exec request may ask for, in seconds."""


class FileSettings(Section):
    max_upload: str = "1g"
    """Largest upload into a container (PUT .../files), in bytes or with a k/m/g suffix; server.max_request_body does not apply to uploads."""


class LifecycleSettings(Section):
    interval: Annotated[float, msgspec.Meta(ge=0.2, le=3600)] = 5.0
    """Seconds between two passes of the lifecycle loop, which removes expired containers, stops idle ones and removes exited auto-remove ones."""
    max_ttl: Annotated[float, msgspec.Meta(ge=1)] = 30 * 86400.0
    """Largest ttl a start request or template may set, in seconds."""
    max_idle_timeout: Annotated[float, msgspec.Meta(ge=1)] = 30 * 86400.0
    """Largest idleTimeout a start request or template may set, in seconds."""
    activity_interval: Annotated[float, msgspec.Meta(gt=0, le=300)] = 5.0
    """Seconds between two writes of one container's lastActivityAt, so an idle timeout may act up to this much late."""


class IdempotencySettings(Section):
    key_ttl: Annotated[float, msgspec.Meta(ge=1, le=30 * 86400)] = 86400.0
    """Seconds a start's Idempotency-Key and its stored response are kept; a later retry starts a new container."""


class StatsSettings(Section):
    sample_interval: Annotated[float, msgspec.Meta(gt=0, le=10)] = 0.5
    """Seconds between the two readings taken when no earlier reading of a container is kept."""


class MonitoringSettings(Section):
    enabled: bool = True
    """Sample running containers, store the samples and evaluate alert rules (one process at a time)."""
    interval: Annotated[float, msgspec.Meta(ge=0.2, le=3600)] = 5.0
    """Seconds between two samples of every running container."""
    call_timeout: PositiveFloat = 5.0
    """Seconds one container's stats reading may take before that container is skipped for the round."""
    max_parallel: Annotated[int, msgspec.Meta(ge=1, le=256)] = 32
    """Containers sampled at the same time."""
    fresh_for: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """Maximum age, in seconds, of a stored sample that GET /stats returns instead of a live reading; 0 means twice the interval."""
    raw_retention: Annotated[int, msgspec.Meta(ge=60)] = 86400
    """Seconds raw samples are kept."""
    rollup_step: Annotated[int, msgspec.Meta(ge=10, le=3600)] = 60
    """Seconds covered by one rollup row (average and maximum of the raw samples in it)."""
    rollup_retention: Annotated[int, msgspec.Meta(ge=60)] = 30 * 86400
    """Seconds rollup rows are kept."""
    prometheus_auth: bool = True
    """Require an admin API key for GET /metrics. Turn it off only where trusted scrapers alone can reach the port."""


class AlertSettings(Section):
    webhook_timeout: PositiveFloat = 10.0
    """Seconds one webhook delivery attempt may take."""
    webhook_attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 5
    """Delivery attempts per notification before it is given up."""
    webhook_backoff: PositiveFloat = 1.0
    """Seconds before the first retry; each later retry waits twice as long as the one before."""
    webhook_hosts: list[str] = []
    """Hosts, or host:port pairs, that webhook notifiers may send to; empty allows any host."""
    restart_window: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    """Default `window` of lifecycle alert rules, in seconds: a restart_loop rule counts starts over it, and a
    lifecycle alert resolves once its container has run this long with no new occurrence."""


class EventSettings(Section):
    subscriber_backlog: Annotated[int, msgspec.Meta(ge=10)] = 1000
    """Events kept for one slow WebSocket client; older ones are dropped past this."""
    reconnect_delay: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    """Seconds before re-subscribing to the engine's event stream after it drops (doubling up to 30)."""


class RedisSettings(Section):
    url: str = ""
    """redis://host:port/db shared by several API processes for live events; empty keeps events in-process."""
    key_prefix: Annotated[str, msgspec.Meta(pattern=r"^[\w.:-]+$")] = "corebase"
    """Prefix of CoreBase's Redis channels, so several installations can share one Redis."""


class TemplateSettings(Section):
    images: dict[str, str] = {}
    """Image per template name, replacing the template's own, for example {python = "registry.local/python:3.12"}."""


class PoolSpec(Section):
    min_idle: Annotated[int, msgspec.Meta(ge=0)] = 1
    """Idle members kept ready even without demand."""
    max_idle: Annotated[int, msgspec.Meta(ge=0)] = 4
    """Idle members kept at most, however high the demand."""
    max_total: Annotated[int, msgspec.Meta(ge=1)] = 8
    """Members that may exist at once, idle or starting."""
    idle_ttl: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    """Seconds an idle member may wait before it is replaced by a fresh one."""


class PoolSettings(Section):
    interval: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    """Seconds between two passes of the pool manager (refill, expiry, autoscaling)."""
    max_parallel_starts: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4
    """Members one pass may start at the same time."""
    warm_timeout: PositiveFloat = 120.0
    """Seconds a new member may take to run and pass its health check before it is discarded."""
    demand_window: Annotated[float, msgspec.Meta(ge=5)] = 60.0
    """Seconds of recent claims and misses the autoscaler weighs."""
    pools: dict[str, PoolSpec] = {}
    """Pools created at start-up, by template name, for example [pool.pools.python] min_idle = 2."""


class ReconcileSettings(Section):
    interval: Annotated[float, msgspec.Meta(ge=1, le=86400)] = 60.0
    """Seconds between two reconciliation passes; passes also run at start-up and after the engine event stream reconnects."""
    creating_grace: Annotated[float, msgspec.Meta(ge=1, le=86400)] = 60.0
    """Seconds a start may go without progress, or a pool claim take, before it counts as interrupted and its container is removed."""
    orphans: Literal["remove", "adopt"] = "remove"
    """What happens to a container of this installation that has no active row: "remove" it, or "adopt" it as a row owned by its corebase.owner label."""


class AuthSettings(Section):
    admin_api_key: str = ""
    """Seed an admin API key with this value at start-up; empty generates one on first start."""
    admin_key_file: Annotated[str, msgspec.Meta(pattern=r"^[^/\\]+$")] = "admin-api-key"
    """File name, inside the data directory, that a generated admin key is written to (mode 0600)."""
    key_cache_seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 30.0
    """Seconds each API process caches a verified key, so a revocation made in another process takes effect within this time."""


class RateLimitSettings(Section):
    requests_per_minute: Annotated[int, msgspec.Meta(ge=0)] = 1200
    """Requests one API key may send per minute, over all API processes when redis.url is set; 0 turns limits off."""
    burst: Annotated[int, msgspec.Meta(ge=0)] = 300
    """Requests one API key may send at once before the per-minute rate applies; 0 means requests_per_minute."""


IsolationLevel = Literal["standard", "sandboxed"]


class RoleSecurity(Section):
    allowed_registries: list[str] | None = None
    """Registries this role may take images from, replacing security.allowed_registries; unset keeps that list."""
    isolation: list[IsolationLevel] = msgspec.field(default_factory=lambda: ["standard", "sandboxed"])
    """Isolation levels this role may ask for."""
    exempt_policies: list[str] = []
    """Names of security policies that are not applied to this role's requests, such as "require-limits"."""


class SecuritySettings(Section):
    allowed_registries: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_REGISTRIES))
    """Registries images may come from: a host ("docker.io", any port), host:port, or a path prefix
    ("registry.example.com/team"). An image without a registry is on docker.io. "*" allows every registry."""
    sandbox_runtime: str = "runsc"
    """Name of the engine's OCI runtime that runs `sandboxed` containers (gVisor's runsc)."""
    default_isolation: IsolationLevel = "standard"
    """Isolation level of a container when neither the request nor its template names one."""
    roles: dict[str, RoleSecurity] = {}
    """Per-role settings by role name (admin, developer, viewer); a role without an entry gets the defaults."""

    def for_role(self, role: str) -> RoleSecurity:
        """Return the settings of `role`, or the defaults when it has no entry."""
        return self.roles.get(role) or RoleSecurity()

    def registries_for(self, role: str) -> list[str]:
        """Return the registries `role` may take images from."""
        configured = self.for_role(role).allowed_registries
        return self.allowed_registries if configured is None else configured


class NetworkSettings(Section):
    per_owner: bool = True
    """Put each owner's containers on a bridge network of their own, so tenants cannot reach each other."""
    prefix: Annotated[str, msgspec.Meta(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,31}$")] = "corebase"
    """Start of the names of the networks CoreBase creates, such as corebase-alice-1a2b3c4d."""
    subnet_pool: str = "10.213.0.0/16"
    """IPv4 range that owner networks take their subnets from; empty lets the engine pick from its own default pools, which hold about 30 networks."""
    subnet_size: Annotated[int, msgspec.Meta(ge=16, le=29)] = 24
    """Prefix length of each owner network's subnet: 24 gives 254 addresses each, and 256 networks from a /16 pool."""


class PluginSettings(Section):
    disabled: list[str] = []
    """Plugin names that are never loaded, built-in or installed."""
    autoload: bool = True
    """Load installed plugins from the "corebase" entry-point group; built-ins load either way."""


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """All CoreBase settings. `config/corebase.toml` documents each with its default."""

    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    database: DatabaseSettings = msgspec.field(default_factory=DatabaseSettings)
    docker: DockerSettings = msgspec.field(default_factory=DockerSettings)
    containers: ContainerSettings = msgspec.field(default_factory=ContainerSettings)
    quotas: QuotaSettings = msgspec.field(default_factory=QuotaSettings)
    exec: ExecSettings = msgspec.field(default_factory=ExecSettings)
    files: FileSettings = msgspec.field(default_factory=FileSettings)
    lifecycle: LifecycleSettings = msgspec.field(default_factory=LifecycleSettings)
    idempotency: IdempotencySettings = msgspec.field(default_factory=IdempotencySettings)
    stats: StatsSettings = msgspec.field(default_factory=StatsSettings)
    monitoring: MonitoringSettings = msgspec.field(default_factory=MonitoringSettings)
    alerts: AlertSettings = msgspec.field(default_factory=AlertSettings)
    events: EventSettings = msgspec.field(default_factory=EventSettings)
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)
    templates: TemplateSettings = msgspec.field(default_factory=TemplateSettings)
    pool: PoolSettings = msgspec.field(default_factory=PoolSettings)
    reconcile: ReconcileSettings = msgspec.field(default_factory=ReconcileSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    rate_limit: RateLimitSettings = msgspec.field(default_factory=RateLimitSettings)
    security: SecuritySettings = msgspec.field(default_factory=SecuritySettings)
    networks: NetworkSettings = msgspec.field(default_factory=NetworkSettings)
    plugins: PluginSettings = msgspec.field(default_factory=PluginSettings)

    @property
    def data_path(self) -> Path:
        """Data directory as an absolute path."""
        if self.server.data_dir:
            return Path(self.server.data_dir).expanduser().resolve()
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(base) / "corebase"


SIZE_SETTINGS = {
    ("server", "max_request_body"),
    ("containers", "default_memory"),
    ("containers", "max_memory"),
    ("containers", "log_max_size"),
    ("exec", "max_output"),
    ("files", "max_upload"),
    ("quotas", "max_memory"),
    ("quotas", "max_container_memory"),
}


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Build Settings from defaults, the TOML file, COREBASE_* variables and `overrides`, in that order.

    Without `config_file` the file named by COREBASE_CONFIG is read, if set. A missing file given
    explicitly is an error. `overrides` come from command-line options.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, dict[str, Any]] = {}

    path = config_file or environ.get("COREBASE_CONFIG")
    if path:
        raw = _read_toml(Path(path))

    for section, field, value in _environment_values(environ):
        raw.setdefault(section, {})[field] = value
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)

    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc)) from None

    _check_sizes(settings)
    _check_database_url(settings.database.url)
    _check_redis_url(settings.redis.url)
    _check_subnet_pool(settings.networks)
    for template, pool in settings.pool.pools.items():
        problem = pool_limits_problem(pool.min_idle, pool.max_idle, pool.max_total)
        if problem:
            raise ConfigError(f"invalid setting pool.pools.{template}.{problem[0]}: {problem[1]}")
    return settings


def pool_limits_problem(
    min_idle: int, max_idle: int, max_total: int, names: tuple[str, str, str] = ("min_idle", "max_idle", "max_total")
) -> tuple[str, str] | None:
    """Return the field at fault and a message, or None when min_idle <= max_idle <= max_total.

    `names` are the three fields as the caller spells them, such as the API's camelCase names.
    """
    low, high, total = names
    if min_idle > max_idle:
        return low, f"{low} {min_idle} is above {high} {max_idle}; lower {low} or raise {high}"
    if max_idle > max_total:
        return high, f"{high} {max_idle} is above {total} {max_total}; lower {high} or raise {total}"
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist; pass an existing file to --config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None


def _environment_values(environ: Mapping[str, str]) -> list[tuple[str, str, Any]]:
    """Map COREBASE_* variables to (section, field, value) for every known setting."""
    known = {
        f"{ENV_PREFIX}{section.upper()}_{field.upper()}": (section, field, info.type)
        for section, section_type in _section_types().items()
        for field, info in _fields(section_type).items()
    }
    found = []
    for name, value in environ.items():
        if name in ENV_ALIASES:
            section, field = ENV_ALIASES[name]
            field_type = _fields(_section_types()[section])[field].type
        elif name in known:
            section, field, field_type = known[name]
        else:
            continue
        if isinstance(field_type, msgspec.inspect.ListType):
            value = [item.strip() for item in value.split(",") if item.strip()]
        elif isinstance(field_type, msgspec.inspect.DictType):
            value = _parse_mapping(name, value)
        found.append((section, field, value))
    return found


def _parse_mapping(variable: str, value: str) -> dict[str, str]:
    """Read "key=value,key2=value2" from an environment variable."""
    mapping = {}
    for item in value.split(","):
        if not item.strip():
            continue
        key, separator, entry = item.partition("=")
        if not separator or not key.strip():
            raise ConfigError(f"invalid variable {variable}: {item.strip()!r} is not key=value; use key=value,key2=value2")
        mapping[key.strip()] = entry.strip()
    return mapping


def _section_types() -> dict[str, type]:
    return {field.name: field.type.cls for field in msgspec.inspect.type_info(Settings).fields}


def _fields(section_type: type) -> dict[str, msgspec.inspect.Field]:
    return {field.name: field for field in msgspec.inspect.type_info(section_type).fields}


def _describe_validation_error(exc: msgspec.ValidationError) -> str:
    """Turn msgspec's "Expected `int` >= 1 - at `$.server.port`" into a message naming the setting."""
    message = str(exc)
    match = re.search(r" - at `\$\.([\w.\[\]]+)`$", message)
    if not match:
        unknown = re.match(r"Object contains unknown field `(\w+)`", message)
        if unknown:
            return f"unknown settings section [{unknown.group(1)}]; check its spelling against config/corebase.toml"
        return f"invalid settings: {message}"
    setting = match.group(1)
    problem = message[: match.start()]
    unknown = re.match(r"Object contains unknown field `(\w+)`", problem)
    if unknown:
        return f"unknown setting {setting}.{unknown.group(1)}; check its spelling against config/corebase.toml"
    section, _, field = setting.partition(".")
    variable = f"{ENV_PREFIX}{section.upper()}_{field.upper()}" if field else f"{ENV_PREFIX}{section.upper()}"
    return f"invalid setting {setting} (variable {variable}): {problem}{_allowed_values(section, field)}"


def _allowed_values(section: str, field: str) -> str:
    """For a setting with a fixed set of values, list them."""
    section_type = _section_types().get(section)
    info = _fields(section_type).get(field) if section_type else None
    if info is None or not isinstance(info.type, msgspec.inspect.LiteralType):
        return ""
    return "; allowed: " + ", ".join(str(value) for value in info.type.values)


def _check_sizes(settings: Settings) -> None:
    """Check every size setting parses; all but quotas, where 0 means nothing is allowed, must be above zero."""
    for section, field in SIZE_SETTINGS:
        value = getattr(getattr(settings, section), field)
        variable = f"{ENV_PREFIX}{section.upper()}_{field.upper()}"
        try:
            size = parse_size(value)
        except ValueError as exc:
            raise ConfigError(f"invalid setting {section}.{field} (variable {variable}): {exc}") from None
        if size <= 0 and section != "quotas":
            raise ConfigError(
                f"invalid setting {section}.{field} (variable {variable}): {value!r} must be above zero, such as \"512m\""
            )


DATABASE_SCHEMES = ("postgresql", "postgres", "sqlite")


def _check_subnet_pool(networks: NetworkSettings) -> None:
    if not networks.subnet_pool:
        return
    variable = f"{ENV_PREFIX}NETWORKS_SUBNET_POOL"
    try:
        pool = ipaddress.IPv4Network(networks.subnet_pool)
    except ValueError as exc:
        raise ConfigError(
            f"invalid setting networks.subnet_pool (variable {variable}): {exc}; use an IPv4 range such as 10.213.0.0/16"
        ) from None
    if pool.prefixlen > networks.subnet_size:
        raise ConfigError(
            f"invalid setting networks.subnet_size: /{networks.subnet_size} subnets do not fit in networks.subnet_pool "
            f"{pool}; use a size of {pool.prefixlen} or more"
        )


def _check_database_url(url: str) -> None:
    if not url:
        return
    scheme = url.partition("://")[0] if "://" in url else ""
    if scheme not in DATABASE_SCHEMES:
        raise ConfigError(
            f"invalid setting database.url (variable COREBASE_DATABASE_URL): unsupported scheme {scheme!r}; "
            "use postgresql://user:password@host:5432/dbname, sqlite:///path/to/file, or leave it empty"
        )


def _check_redis_url(url: str) -> None:
    if url and url.partition("://")[0] not in ("redis", "rediss", "unix"):
        raise ConfigError(
            "invalid setting redis.url (variable COREBASE_REDIS_URL): use redis://host:6379/0, "
            "rediss:// for TLS, unix:///path/to/redis.sock, or leave it empty"
        )
