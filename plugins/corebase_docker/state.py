"""Conversion of the engine's container JSON (inspect and list) into ContainerState."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, cast

from corebase.runtime.types import ContainerState, EngineStatus, PortBinding

# RFC 3339 with up to nine fractional digits, as Go formats time.Time; Python keeps six.
_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")
# The list endpoint only has a status text such as "Exited (137) 5 minutes ago".
_EXITED_STATUS = re.compile(r"^Exited \((-?\d+)\)")


def parse_timestamp(value: str | None) -> datetime | None:
    """Parse an engine timestamp into an aware datetime, truncating nanoseconds to microseconds.

    Returns None for a missing value and for Go's zero time ("0001-01-01T00:00:00Z"), which the
    engine sends for events that have not happened. Raises ValueError for any other format.
    """
    if not value or value.startswith("0001-01-01"):
        return None
    match = _TIMESTAMP.match(value)
    if not match:
        raise ValueError(f"invalid engine timestamp {value!r}; expected RFC 3339")

    seconds, fraction, zone = match.groups()
    microseconds = (fraction or "").ljust(6, "0")[:6]
    offset = "+00:00" if zone == "Z" else zone
    return datetime.fromisoformat(f"{seconds}.{microseconds}{offset}").astimezone(timezone.utc)


def parse_port_key(key: str) -> tuple[int, str]:
    """Split an engine port key such as "8080/tcp" into (8080, "tcp")."""
    port, _, protocol = key.partition("/")
    return int(port), protocol or "tcp"


def published_ports(container: Mapping[str, Any]) -> list[PortBinding]:
    """Return the container's published ports from inspect JSON.

    A running container reports the bound host ports in NetworkSettings.Ports. A stopped one has
    none there, so the requested bindings in HostConfig.PortBindings are used, where an empty
    HostPort (the engine picks one at start) gives host_port None.
    """
    bound = (container.get("NetworkSettings") or {}).get("Ports") or {}
    requested = (container.get("HostConfig") or {}).get("PortBindings") or {}
    source = bound if any(bound.values()) else requested

    ports = []
    for key, bindings in sorted(source.items()):
        container_port, protocol = parse_port_key(key)
        for binding in bindings or []:
            host_port = binding.get("HostPort") or ""
            ports.append(
                PortBinding(
                    container_port=container_port,
                    host_port=int(host_port) if host_port else None,
                    host_ip=binding.get("HostIp") or "0.0.0.0",
                    protocol=cast(Any, protocol),
                )
            )
    return ports


def state_from_inspect(container: Mapping[str, Any]) -> ContainerState:
    """Build a ContainerState from `GET /containers/{id}/json`.

    `exit_code` is None until the container has finished once and while it runs. `oom_killed`
    is the engine's State.OOMKilled flag; an exit code of 137 alone means SIGKILL, not OOM.
    """
    state = container.get("State") or {}
    config = container.get("Config") or {}
    host_config = container.get("HostConfig") or {}
    status = cast(EngineStatus, state.get("Status") or "created")
    finished_at = parse_timestamp(state.get("FinishedAt"))
    running = bool(state.get("Running")) or status in ("running", "paused", "restarting")
    has_exited = finished_at is not None and not running

    return ContainerState(
        engine_id=container["Id"],
        name=str(container.get("Name") or "").lstrip("/"),
        image=config.get("Image") or container.get("Image") or "",
        status=status,
        labels=dict(config.get("Labels") or {}),
        exit_code=int(state["ExitCode"]) if has_exited and state.get("ExitCode") is not None else None,
        oom_killed=bool(state.get("OOMKilled")),
        error=state.get("Error") or None,
        created_at=parse_timestamp(container.get("Created")),
        started_at=parse_timestamp(state.get("StartedAt")),
        finished_at=finished_at,
        ports=published_ports(container),
        tty=bool(config.get("Tty")),
        health=(state.get("Health") or {}).get("Status") or None,
        memory=host_config.get("Memory") or None,
        nano_cpus=host_config.get("NanoCpus") or None,
    )


def state_from_list_entry(entry: Mapping[str, Any]) -> ContainerState:
    """Build a ContainerState from one entry of `GET /containers/json`.

    The list has no OOM flag, error or start and finish times, so those stay at their defaults,
    and the exit code comes from the status text. Call inspect for the full state.
    """
    names = entry.get("Names") or []
    status = cast(EngineStatus, entry.get("State") or "created")
    exited = _EXITED_STATUS.match(entry.get("Status") or "")
    created = entry.get("Created")

    ports = []
    for port in entry.get("Ports") or []:
        if not port.get("PublicPort"):
            continue
        ports.append(
            PortBinding(
                container_port=int(port["PrivatePort"]),
                host_port=int(port["PublicPort"]),
                host_ip=port.get("IP") or "0.0.0.0",
                protocol=port.get("Type") or "tcp",
            )
        )

    return ContainerState(
        engine_id=entry["Id"],
        name=names[0].lstrip("/") if names else "",
        image=entry.get("Image") or "",
        status=status,
        labels=dict(entry.get("Labels") or {}),
        exit_code=int(exited.group(1)) if exited and status in ("exited", "dead") else None,
        created_at=datetime.fromtimestamp(created, tz=timezone.utc) if created else None,
        ports=ports,
        health=_health_from_status(entry.get("Status") or ""),
    )


def _health_from_status(text: str) -> str | None:
    """Read the health the engine appends to a list entry's status, as in "Up 5 seconds (healthy)"."""
    if "(health: starting)" in text:
        return "starting"
    if "(unhealthy)" in text:
        return "unhealthy"
    if "(healthy)" in text:
        return "healthy"
    return None
