"""The default policies. Each looks at the complete spec, so it judges what the engine would get."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable

from corebase.containers.networks import NO_NETWORK, owner_network
from corebase.security import Decision, PolicyRequest
from corebase.settings import Settings

HOST_MODES = ("host",)
# Usual paths of the Docker Engine's API socket. A bind of either gives full control of the host.
DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")


class NoPrivileged:
    name = "no-privileged"

    def evaluate(self, request: PolicyRequest) -> Decision:
        if request.spec.privileged:
            return Decision.deny("privileged mode is not allowed; remove 'privileged'")
        return Decision.allow()


class NoHostNamespaces:
    """Denies sharing the host's (or another container's) network, PID or IPC namespace."""

    name = "no-host-namespaces"

    def evaluate(self, request: PolicyRequest) -> Decision:
        spec = request.spec
        reasons = []
        for field, value in (("networkMode", spec.network_mode), ("pidMode", spec.pid_mode), ("ipcMode", spec.ipc_mode)):
            if value is None:
                continue
            mode = value.strip().lower()
            if mode == "host":
                reasons.append(f"{field} 'host' would share the host's namespace; remove '{field}'")
            elif mode.startswith("container:"):
                reasons.append(f"{field} {value!r} would join another container's namespace; remove '{field}'")
            elif field != "networkMode" and mode not in ("", "private", "shareable"):
                reasons.append(f"{field} {value!r} is not allowed; remove '{field}'")
        return Decision.deny(*reasons) if reasons else Decision.allow()


class NoHostMounts:
    """Denies every bind mount of a host path, the Docker socket above all.

    Every bind is denied whatever its spelling, and the reason names the path the engine would
    reach: "//var/run/./docker.sock/", or a symlink to the socket, is reported as the socket.
    """

    name = "no-host-mounts"

    def evaluate(self, request: PolicyRequest) -> Decision:
        reasons = [_bind_reason(mount.source or "", mount.target) for mount in request.spec.mounts if mount.type == "bind"]
        return Decision.deny(*reasons) if reasons else Decision.allow()


def _bind_reason(source: str, target: str) -> str:
    host_path = resolve_host_path(source)
    if host_path in DOCKER_SOCKETS:
        return (
            f"mounting the Docker socket ({source!r} is {host_path}) at {target!r} would give control of the "
            "host; remove the mount"
        )
    described = repr(source) if host_path == source else f"{source!r} (which is {host_path})"
    return f"mounting the host path {described} at {target!r} is not allowed; use a named volume or tmpfs"


def resolve_host_path(source: str) -> str:
    """Return the host path a bind source names: normalised, with symlinks on this host resolved.

    Symlinks resolve correctly only when CoreBase runs on the engine's host. Elsewhere only the
    normalised path is known, so every bind is denied, not only known paths. A relative source is
    returned as given, because the engine rejects relative bind sources.
    """
    if not source.startswith("/"):
        return source
    path = posixpath.normpath("/" + source.lstrip("/"))
    try:
        return os.path.realpath(path)
    except OSError:
        return path


class CapabilityAllowlist:
    """Denies added capabilities outside the configured allowlist."""

    name = "capability-allowlist"

    def __init__(self, allowed: Iterable[str]) -> None:
        self.allowed = {_normalise(capability) for capability in allowed}

    def evaluate(self, request: PolicyRequest) -> Decision:
        extra = sorted({_normalise(capability) for capability in request.spec.cap_add} - self.allowed)
        if extra:
            return Decision.deny(f"capabilities {', '.join(extra)} are outside the allowlist {sorted(self.allowed)}")
        return Decision.allow()


class NoDevices:
    """Denies exposing host devices, which bypass the container's file system and cgroup isolation."""

    name = "no-devices"

    def evaluate(self, request: PolicyRequest) -> Decision:
        if request.spec.devices:
            return Decision.deny(f"host devices {request.spec.devices} are not allowed; remove 'devices'")
        return Decision.allow()


class RegistryAllowlist:
    """Denies images from registries outside the caller's role's allowlist (security.allowed_registries)."""

    name = "registry-allowlist"

    def __init__(self, settings: Settings) -> None:
        self.security = settings.security

    def evaluate(self, request: PolicyRequest) -> Decision:
        allowed = self.security.registries_for(request.caller.role)
        if image_allowed(request.spec.image, allowed):
            return Decision.allow()
        registry = image_registry(request.spec.image)
        return Decision.deny(
            f"image {request.spec.image!r} comes from registry {registry!r}, which is not allowed for role "
            f"{request.caller.role!r}; allowed: {', '.join(allowed) or 'none'}"
        )


def image_registry(image: str) -> str:
    """Return the registry host of an image reference, the way the engine reads it: docker.io when none is named."""
    first, separator, _ = image.partition("/")
    if separator and ("." in first or ":" in first or first.lower() == "localhost"):
        registry = first.lower()
        return "docker.io" if registry in ("index.docker.io", "registry-1.docker.io") else registry
    return "docker.io"


def image_allowed(image: str, allowed: Iterable[str]) -> bool:
    """Tell whether `image` is covered by one of `allowed`: "*", a host, host:port, or a path prefix."""
    registry = image_registry(image)
    first, separator, rest = image.partition("/")
    path = rest if separator and first.lower() in (registry, "index.docker.io", "registry-1.docker.io") else image
    if registry == "docker.io" and "/" not in path.split(":")[0].split("@")[0]:
        path = "library/" + path
    full = f"{registry}/{path}"
    host = _without_port(registry)

    for entry in allowed:
        entry = entry.strip().lower().rstrip("/")
        if entry == "*":
            return True
        if "/" in entry:
            if full.startswith(entry + "/"):
                return True
        elif entry == registry or (entry == host and not _has_port(entry)):
            return True
    return False


def _has_port(host: str) -> bool:
    return host.rsplit("]", 1)[-1].count(":") == 1


def _without_port(registry: str) -> str:
    return registry.rsplit(":", 1)[0] if _has_port(registry) else registry


class IsolationByRole:
    """Denies an isolation level that the caller's role may not use (security.roles.<role>.isolation)."""

    name = "isolation-by-role"

    def __init__(self, settings: Settings) -> None:
        self.security = settings.security

    def evaluate(self, request: PolicyRequest) -> Decision:
        allowed = self.security.for_role(request.caller.role).isolation
        if request.spec.isolation in allowed:
            return Decision.allow()
        return Decision.deny(
            f"isolation {request.spec.isolation!r} is not allowed for role {request.caller.role!r}; "
            f"allowed: {', '.join(allowed) or 'none'}"
        )


class OwnerNetworkOnly:
    """Denies joining any network but the owner's own one or none, so tenants cannot share a network.

    Host and container namespaces are left to no-host-namespaces, which gives the reason for those.
    """

    name = "owner-network-only"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def evaluate(self, request: PolicyRequest) -> Decision:
        mode = request.spec.network_mode
        if mode is not None and (mode.strip().lower() in HOST_MODES or mode.strip().lower().startswith("container:")):
            return Decision.allow()
        owner = request.spec.labels.get("corebase.owner", request.caller.user)
        expected = owner_network(owner, self.settings)
        if mode in (NO_NETWORK, expected):
            return Decision.allow()
        joined = "the engine's default bridge network" if mode is None else f"the network {mode!r}"
        return Decision.deny(
            f"joining {joined} is not allowed; leave out 'networkMode' to join your own network, "
            "or set network \"none\""
        )


class RequireLimits:
    """Denies a spec without memory, CPU and process limits."""

    name = "require-limits"

    def evaluate(self, request: PolicyRequest) -> Decision:
        spec = request.spec
        missing = [
            name
            for name, value in (("memory", spec.memory), ("cpus", spec.nano_cpus), ("pidsLimit", spec.pids_limit))
            if not value
        ]
        if missing:
            return Decision.deny(
                f"limits are required for {', '.join(missing)}; set them in the request (such as "
                '"memory": "512m", "cpus": 1, "pidsLimit": 256) or in the template, or configure defaults under [containers]'
            )
        return Decision.allow()


def _normalise(capability: str) -> str:
    """Write a capability the engine's way: upper case, without the CAP_ prefix."""
    name = capability.strip().upper()
    return name.removeprefix("CAP_")
