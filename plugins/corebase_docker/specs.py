"""Translation of a ContainerSpec into the body of `POST /containers/create`."""

from __future__ import annotations

import math
from typing import Any

from corebase.runtime.types import ContainerSpec, HealthCheck, MountSpec, PortBinding

# The defaults of containers.log_max_size and containers.log_max_files.
DEFAULT_LOG_MAX_SIZE = 10 * 1024 * 1024
DEFAULT_LOG_MAX_FILES = 3


def port_key(port: PortBinding) -> str:
    """Return the engine's key for a container port, such as "8080/tcp"."""
    return f"{port.container_port}/{port.protocol}"


def mount_body(mount: MountSpec) -> dict[str, Any]:
    """Return one HostConfig.Mounts entry. A volume without a source is anonymous."""
    body: dict[str, Any] = {"Type": mount.type, "Target": mount.target, "ReadOnly": mount.read_only}
    if mount.source is not None and mount.type != "tmpfs":
        body["Source"] = mount.source
    return body


def log_config(max_size: int, max_files: int) -> dict[str, Any]:
    """Return HostConfig.LogConfig: a json-file log of at most `max_files` files of `max_size` bytes.

    The cap keeps a chatty container from filling the engine's disk, and the oldest output goes.
    """
    return {"Type": "json-file", "Config": {"max-size": str(max_size), "max-file": str(max_files)}}


def host_config(spec: ContainerSpec, log: dict[str, Any]) -> dict[str, Any]:
    """Return HostConfig: limits, capabilities, namespaces, published ports, mounts and the `log` config."""
    config: dict[str, Any] = {
        "CapDrop": list(spec.cap_drop),
        "CapAdd": list(spec.cap_add),
        "SecurityOpt": list(spec.security_opt),
        "Privileged": spec.privileged,
        "LogConfig": log,
    }

    if spec.memory is not None:
        # A swap limit equal to the memory limit gives the container no swap at all.
        config["Memory"] = spec.memory
        config["MemorySwap"] = spec.memory
    if spec.nano_cpus is not None:
        config["NanoCpus"] = spec.nano_cpus
    if spec.pids_limit is not None:
        config["PidsLimit"] = spec.pids_limit
    if spec.init:
        config["Init"] = True
    if spec.network_mode is not None:
        config["NetworkMode"] = spec.network_mode
    if spec.pid_mode is not None:
        config["PidMode"] = spec.pid_mode
    if spec.ipc_mode is not None:
        config["IpcMode"] = spec.ipc_mode

    bindings: dict[str, list[dict[str, str]]] = {}
    for port in spec.ports:
        # An empty HostPort lets the engine pick a free port at start.
        host_port = str(port.host_port) if port.host_port is not None else ""
        bindings.setdefault(port_key(port), []).append({"HostIp": port.host_ip, "HostPort": host_port})
    if bindings:
        config["PortBindings"] = bindings

    if spec.mounts:
        config["Mounts"] = [mount_body(mount) for mount in spec.mounts]
    if spec.devices:
        config["Devices"] = [device_body(device) for device in spec.devices]
    if spec.runtime is not None:
        config["Runtime"] = spec.runtime
    return config


def device_body(device: str) -> dict[str, str]:
    """Return one HostConfig.Devices entry from "/dev/host[:/dev/container[:permissions]]"."""
    host, _, rest = device.partition(":")
    container, _, permissions = rest.partition(":")
    return {"PathOnHost": host, "PathInContainer": container or host, "CgroupPermissions": permissions or "rwm"}


def create_body(
    spec: ContainerSpec,
    *,
    stop_timeout: float,
    log_max_size: int = DEFAULT_LOG_MAX_SIZE,
    log_max_files: int = DEFAULT_LOG_MAX_FILES,
) -> dict[str, Any]:
    """Return the create body for `spec`.

    `stop_timeout` becomes the container's StopTimeout, the grace period the engine uses when a
    stop request names none. The engine takes whole seconds, so it is rounded up. The log keeps
    at most `log_max_files` files of `log_max_size` bytes.
    """
    body: dict[str, Any] = {
        "Image": spec.image,
        "Env": [f"{key}={value}" for key, value in spec.env.items()],
        "Labels": dict(spec.labels),
        "Tty": spec.tty,
        "StopTimeout": math.ceil(stop_timeout),
        "HostConfig": host_config(spec, log_config(log_max_size, log_max_files)),
    }

    if spec.command is not None:
        body["Cmd"] = list(spec.command)
    if spec.entrypoint is not None:
        body["Entrypoint"] = list(spec.entrypoint)
    if spec.workdir is not None:
        body["WorkingDir"] = spec.workdir
    if spec.user is not None:
        body["User"] = spec.user
    if spec.ports:
        body["ExposedPorts"] = {port_key(port): {} for port in spec.ports}
    if spec.healthcheck is not None:
        body["Healthcheck"] = healthcheck_body(spec.healthcheck)
    return body


NANOSECONDS = 1_000_000_000


def healthcheck_body(check: HealthCheck) -> dict[str, Any]:
    """Return Config.Healthcheck; the engine takes durations in nanoseconds and runs Test with exec."""
    return {
        "Test": ["CMD", *check.test],
        "Interval": int(check.interval * NANOSECONDS),
        "Timeout": int(check.timeout * NANOSECONDS),
        "Retries": check.retries,
        "StartPeriod": int(check.start_period * NANOSECONDS),
    }
