"""Turning a start request into a complete, hardened ContainerSpec.

Every rule here runs before any row is written or any engine call is made, and each failure names
the request field and the fix. Security decisions (privileged mode, host namespaces, host paths)
belong to the policy plugins, which see the spec this module builds.
"""

from __future__ import annotations

import re

from corebase.api.schemas import StartRequest
from corebase.containers.networks import NO_NETWORK, owner_network
from corebase.errors import InvalidField
from corebase.runtime.types import ContainerSpec, MountSpec, PortBinding
from corebase.settings import Settings
from corebase.sizes import format_size, parse_size
from corebase.templates import TemplateSpec

# The engine refuses memory limits below 6 MiB.
ENGINE_MIN_MEMORY = 6 * 1024 * 1024
NANO_CPUS = 1_000_000_000
# The engine's own rule for container names.
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
# An image reference: an optional registry (a host with a dot or a port, or localhost), lower-case
# path components, then :tag and/or @digest, as the engine reads references.
IMAGE_PATTERN = re.compile(
    r"^(?:(?:localhost|[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)+)(?::[0-9]+)?/|[a-zA-Z0-9-]+:[0-9]+/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
CONTAINER_ID_PATTERN = re.compile(r"^ctr_[0-9a-f]{16}$")
ENV_NAME_PATTERN = re.compile(r"^[^=\0]+$")
# A user name or uid, optionally with ":" and a group name or gid, as the engine reads it.
USER_PATTERN = re.compile(r"^[^:\s\0]+(?::[^:\s\0]+)?$")
PORT_KEY_PATTERN = re.compile(r"^(\d{1,5})(?:/(tcp|udp|sctp))?$")
RESERVED_LABEL_PREFIX = "corebase."
PROJECT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
# The engine's rule for named volumes.
VOLUME_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")

# Stands in for a template when a request names an image, so every default reads from one place.
_NO_TEMPLATE = TemplateSpec(name="", image="", category="custom")

LABEL_ID = "corebase.id"
LABEL_OWNER = "corebase.owner"
LABEL_TEMPLATE = "corebase.template"
LABEL_TEMPLATE_VERSION = "corebase.template_version"
LABEL_PROJECT = "corebase.project"
LABEL_MANAGED = "corebase.managed"
# Id of the installation whose database holds the container's row.
LABEL_INSTALLATION = "corebase.installation"


def build_spec(
    request: StartRequest,
    settings: Settings,
    *,
    container_id: str,
    owner: str,
    engine_cpus: int | None = None,
    template: TemplateSpec | None = None,
    credentials: dict[str, str] | None = None,
    installation: str | None = None,
) -> ContainerSpec:
    """Validate `request` and fill in the template's values and CoreBase's hardened defaults.

    Request fields override the template's, within the template's limits. `credentials` are the
    generated secrets for the template's `generated_env`. `installation` is the installation id
    that the container is labelled with. Raises InvalidField on the first bad field.
    """
    limits = settings.containers
    name = request.name if request.name is not None else f"cb-{container_id.removeprefix('ctr_')}"
    image = _choose_image(request, template)

    check_name(name)
    _check_image(image)
    _check_project(request.project_id)
    check_env(request.env)
    check_workdir(request.workdir)
    check_user(request.user)
    _check_labels(request.labels)

    labels = {
        **request.labels,
        LABEL_ID: container_id,
        LABEL_OWNER: owner,
        LABEL_MANAGED: "true",
    }
    if installation:
        labels[LABEL_INSTALLATION] = installation
    if request.project_id:
        labels[LABEL_PROJECT] = request.project_id
    if template is not None:
        labels[LABEL_TEMPLATE] = template.name
        labels[LABEL_TEMPLATE_VERSION] = str(template.version)

    defaults = template or _NO_TEMPLATE
    template_ports = {str(port): None for port in defaults.ports}
    ports = {**template_ports, **request.ports}
    network_mode = _network_mode(request, settings, owner, has_ports=bool(ports))
    isolation = request.isolation or defaults.isolation or settings.security.default_isolation
    return ContainerSpec(
        image=image,
        name=name,
        labels=labels,
        command=request.command if request.command is not None else defaults.command,
        entrypoint=request.entrypoint,
        env={**defaults.env, **(credentials or {}), **request.env},
        ports=_port_bindings(ports, limits.publish_host_ip),
        mounts=[*_mounts(request), *_volume_mounts(request.volumes)],
        workdir=request.workdir if request.workdir is not None else defaults.workdir,
        user=request.user if request.user is not None else defaults.user,
        tty=request.tty,
        memory=memory_limit(request.memory, settings, defaults.memory, defaults.max_memory),
        nano_cpus=cpu_limit(request.cpus, settings, engine_cpus, defaults.cpus, defaults.max_cpus),
        healthcheck=defaults.healthcheck,
        pids_limit=limits.pids_limit,
        init=limits.init,
        cap_drop=["ALL"],
        cap_add=list(limits.cap_add),
        security_opt=["no-new-privileges:true"] if limits.no_new_privileges else [],
        privileged=request.privileged,
        network_mode=network_mode,
        pid_mode=request.pid_mode,
        ipc_mode=request.ipc_mode,
        devices=list(request.devices),
        isolation=isolation,
        runtime=settings.security.sandbox_runtime if isolation == "sandboxed" else None,
        pull_policy=settings.docker.pull_policy,
    )


def _network_mode(request: StartRequest, settings: Settings, owner: str, *, has_ports: bool) -> str | None:
    """Return the engine network mode: `networkMode` as given, "none", or the owner's own network.

    A `networkMode` other than "none" or the owner's network is left for the policies to deny with
    a reason. None (the engine's default bridge) only when per-owner networks are turned off.
    """
    if request.network_mode is not None and request.network is not None:
        raise InvalidField("network", "give either network or networkMode, not both; use network \"none\" or leave both out")
    if request.network_mode is not None:
        mode = request.network_mode
    elif request.network == NO_NETWORK:
        mode = NO_NETWORK
    else:
        mode = owner_network(owner, settings)
    if mode == NO_NETWORK and has_ports:
        raise InvalidField("ports", "a container without a network cannot publish ports; remove 'ports' or the network \"none\"")
    return mode


def memory_limit(
    value: int | str | None, settings: Settings, default: int | None = None, ceiling: int | None = None
) -> int:
    """Return the memory limit in bytes: `value`, else the template's `default`, else the configured one.

    The largest allowed is the configured maximum, or the template's `ceiling` when that is lower.
    """
    maximum = parse_size(settings.containers.max_memory)
    if ceiling is not None:
        maximum = min(maximum, ceiling)
    if value is None:
        return min(default or parse_size(settings.containers.default_memory), maximum)

    try:
        size = parse_size(value)
    except ValueError as exc:
        raise InvalidField("memory", f"memory: {exc}") from None

    if size < ENGINE_MIN_MEMORY:
        hint = (
            f'; a bare number is bytes, so for {value} megabytes write "{value}m"'
            if isinstance(value, int) and value >= ENGINE_MIN_MEMORY >> 20
            else '; ask for at least "6m", such as "512m"'
        )
        raise InvalidField(
            "memory",
            f"memory {value!r} is {size} bytes, below the engine minimum of 6 MiB ({ENGINE_MIN_MEMORY} bytes){hint}",
        )
    if size > maximum:
        raise InvalidField(
            "memory", f"memory {value!r} is above the maximum of {format_size(maximum)}; ask for less"
        )
    return size


def cpu_limit(
    value: float | None,
    settings: Settings,
    engine_cpus: int | None,
    default: float | None = None,
    ceiling: float | None = None,
) -> int:
    """Return the CPU limit in nano-CPUs: `value`, else the template's `default`, else the configured one.

    The largest allowed is the lowest of the configured maximum, the engine's CPU count and the
    template's `ceiling`.
    """
    maximum = settings.containers.max_cpus
    if engine_cpus:
        maximum = min(maximum, float(engine_cpus))
    if ceiling is not None:
        maximum = min(maximum, ceiling)
    if value is None:
        return int(min(default or settings.containers.default_cpus, maximum) * NANO_CPUS)
    if not value > 0:
        raise InvalidField("cpus", f"cpus {value} must be above 0, for example 0.5 or 2")
    if value < 0.01:
        raise InvalidField("cpus", f"cpus {value} is below the engine minimum of 0.01")
    if value > maximum:
        raise InvalidField("cpus", f"cpus {value} is above the maximum of {maximum:g} on this host; ask for less")
    return int(round(value * NANO_CPUS))


def _choose_image(request: StartRequest, template: TemplateSpec | None) -> str:
    if template is not None:
        if request.image is not None:
            raise InvalidField("image", "give either image or template, not both; a template brings its own image")
        return template.image
    if request.image is None:
        raise InvalidField("image", "image is missing; name an image such as 'python:3.12-slim', or a template")
    return request.image


def check_name(name: str) -> None:
    if CONTAINER_ID_PATTERN.match(name):
        raise InvalidField("name", f"name {name!r} has the form of a CoreBase id; choose a name that does not start with 'ctr_'")
    if not NAME_PATTERN.match(name):
        raise InvalidField(
            "name",
            f"name {name!r} is invalid; use 1 to 128 letters, digits, '_', '.' or '-', starting with a letter or digit",
        )


# The engine refuses repository names longer than this, and the containers table keeps 512 characters.
MAX_IMAGE_NAME = 255
MAX_IMAGE_REFERENCE = 512


def _check_image(image: str) -> None:
    name = image.split("@", 1)[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    if len(name) > MAX_IMAGE_NAME or len(image) > MAX_IMAGE_REFERENCE:
        raise InvalidField(
            "image",
            f"image reference of {len(image)} characters is too long; the repository name may have at most "
            f"{MAX_IMAGE_NAME} characters and the whole reference {MAX_IMAGE_REFERENCE}",
        )
    if not image or not IMAGE_PATTERN.match(image):
        raise InvalidField(
            "image",
            f"image {image!r} is not a valid image reference; use a form such as 'python:3.12-slim' "
            "or 'registry.example.com:5000/team/app:1.0'",
        )


def check_workdir(workdir: str | None) -> None:
    if workdir is not None and not workdir.startswith("/"):
        raise InvalidField("workdir", f"workdir {workdir!r} must be an absolute path, such as /app")


def check_user(user: str | None) -> None:
    if user and not USER_PATTERN.match(user):
        raise InvalidField(
            "user", f"user {user!r} is invalid; use a user name or uid, optionally with ':' and a group, such as 1000:1000"
        )


def _check_project(project_id: str | None) -> None:
    if project_id is not None and not PROJECT_ID_PATTERN.match(project_id):
        raise InvalidField(
            "projectId",
            f"projectId {project_id!r} is invalid; use 1 to 128 letters, digits, '_', '.', ':' or '-'",
        )


def check_env(env: dict[str, str]) -> None:
    for key, value in env.items():
        if not ENV_NAME_PATTERN.match(key):
            raise InvalidField(f"env.{key}", f"environment variable name {key!r} must be non-empty without '='")
        if "\0" in value:
            raise InvalidField(f"env.{key}", f"environment variable {key!r} contains a NUL byte")


def _check_labels(labels: dict[str, str]) -> None:
    for key in labels:
        if not key or key.lower().startswith(RESERVED_LABEL_PREFIX):
            raise InvalidField(
                f"labels.{key}",
                f"label {key!r} is not allowed; labels starting with '{RESERVED_LABEL_PREFIX}' are set by CoreBase",
            )


def _port_bindings(ports: dict[str, int | None], host_ip: str) -> list[PortBinding]:
    bindings = []
    for key, host_port in ports.items():
        match = PORT_KEY_PATTERN.match(key)
        container_port = int(match.group(1)) if match else 0
        if not match or not 1 <= container_port <= 65535:
            raise InvalidField(
                f"ports.{key}", f"container port {key!r} is invalid; use a number 1-65535, optionally with /tcp or /udp"
            )
        if host_port is not None and not 0 <= host_port <= 65535:
            raise InvalidField(
                f"ports.{key}", f"host port {host_port} is invalid; use 1-65535, or 0 or null to let the engine choose"
            )
        bindings.append(
            PortBinding(
                container_port=container_port,
                protocol=match.group(2) or "tcp",
                host_ip=host_ip,
                host_port=host_port or None,
            )
        )
    return bindings


def _mounts(request: StartRequest) -> list[MountSpec]:
    mounts = []
    for index, mount in enumerate(request.mounts):
        if not mount.target.startswith("/"):
            raise InvalidField(f"mounts[{index}].target", f"mount target {mount.target!r} must be an absolute path")
        if mount.type in ("volume", "bind") and not mount.source:
            raise InvalidField(f"mounts[{index}].source", f"a {mount.type} mount needs a source")
        if mount.type == "volume" and not VOLUME_NAME_PATTERN.match(mount.source):
            raise InvalidField(
                f"mounts[{index}].source",
                f"volume name {mount.source!r} is invalid; use letters, digits, '_', '.' or '-', "
                "or a mount of type \"bind\" for a host path",
            )
        mounts.append(MountSpec(type=mount.type, target=mount.target, source=mount.source, read_only=mount.read_only))
    return mounts


def _volume_mounts(volumes: list[str]) -> list[MountSpec]:
    """Read Docker CLI style "source:target[:options]"; a source that looks like a path is a bind mount."""
    mounts = []
    for index, entry in enumerate(volumes):
        if entry.lstrip().lower().startswith(("type=", "source=", "src=", "target=", "dst=", "destination=")):
            raise InvalidField(
                f"volumes[{index}]",
                f"volume {entry!r} uses the --mount syntax, which volumes does not take; write 'source:/target[:ro]', "
                'or put it in mounts as {"type": ..., "source": ..., "target": ...}',
            )
        parts = entry.split(":")
        if len(parts) == 1:
            source, target, options = None, parts[0], ""
        elif len(parts) in (2, 3):
            source, target = parts[0], parts[1]
            options = parts[2] if len(parts) == 3 else ""
        else:
            raise InvalidField(f"volumes[{index}]", f"volume {entry!r} is invalid; use 'source:/target' or 'source:/target:ro'")
        if not target.startswith("/"):
            raise InvalidField(f"volumes[{index}]", f"volume target {target!r} must be an absolute path")
        is_path = source is not None and (source.startswith(("/", ".", "~")) or "/" in source)
        if source is not None and not is_path and not VOLUME_NAME_PATTERN.match(source):
            raise InvalidField(
                f"volumes[{index}]",
                f"volume name {source!r} is invalid; use letters, digits, '_', '.' or '-' before the ':'",
            )
        mounts.append(
            MountSpec(
                type="bind" if is_path else "volume",
                source=source,
                target=target,
                read_only="ro" in options.split(","),
            )
        )
    return mounts
