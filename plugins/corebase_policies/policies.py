"""The default policies. Each looks at the complete spec, so it judges what the engine would get."""

from __future__ import annotations

from collections.abc import Iterable

from corebase.security import Decision, PolicyRequest

HOST_MODES = ("host",)


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
    """Denies every bind mount of a host path, the Docker socket above all."""

    name = "no-host-mounts"

    def evaluate(self, request: PolicyRequest) -> Decision:
        reasons = [
            f"mounting the host path {mount.source!r} at {mount.target!r} is not allowed; use a named volume or tmpfs"
            for mount in request.spec.mounts
            if mount.type == "bind"
        ]
        return Decision.deny(*reasons) if reasons else Decision.allow()


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
            return Decision.deny(f"limits are required for {', '.join(missing)}")
        return Decision.allow()


def _normalise(capability: str) -> str:
    """Write a capability the engine's way: upper case, without the CAP_ prefix."""
    name = capability.strip().upper()
    return name.removeprefix("CAP_")
