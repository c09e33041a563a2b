"""The contract every container runtime backend implements.

A backend raises only errors from `corebase.errors` (ContainerNotFound, ImageNotFound,
ImagePullFailed, NameInUse, ContainerNotRunning, EngineUnavailable, EngineTimeout, EngineError),
so the core maps them to HTTP without knowing the backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from corebase.runtime.types import (
    ContainerSpec,
    ContainerState,
    ExecExit,
    ExecResult,
    LogChunk,
    LogOptions,
    RuntimeEvent,
    RuntimeInfo,
    StatsSample,
)


@runtime_checkable
class ContainerRuntime(Protocol):
    """A container backend. Every method is a coroutine except `logs`, `exec_stream` and `events`, async iterators."""

    name: str

    async def info(self) -> RuntimeInfo:
        """Return engine facts; raise EngineUnavailable when the engine cannot be reached."""

    async def create(self, spec: ContainerSpec) -> str:
        """Create (not start) a container, pulling its image per `spec.pull_policy`; return the engine id.

        Raises ImageNotFound, ImagePullFailed or NameInUse. Leaves nothing behind when it raises.
        """

    async def start(self, engine_id: str) -> None:
        """Start a created or stopped container."""

    async def stop(self, engine_id: str, timeout: float | None = None) -> None:
        """Send the stop signal, then SIGKILL after `timeout` seconds (the engine default when None).

        Raises ContainerNotRunning when the container is not running.
        """

    async def restart(self, engine_id: str, timeout: float | None = None) -> None:
        """Stop (with the same grace period as `stop`) and start again."""

    async def rename(self, engine_id: str, name: str) -> None:
        """Give a container a new name; raise NameInUse when another container has it."""

    async def remove(self, engine_id: str, force: bool = False) -> None:
        """Remove a container and its anonymous volumes; `force` kills a running one first."""

    async def inspect(self, engine_id: str) -> ContainerState:
        """Return the container's current state; raise ContainerNotFound when it is gone."""

    async def list(self, labels: dict[str, str]) -> list[ContainerState]:
        """List containers, running or not, that carry every one of `labels`."""

    async def exec(
        self,
        engine_id: str,
        command: list[str],
        *,
        env: dict[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        max_output: int | None = None,
    ) -> ExecResult:
        """Run a command to completion and collect stdout and stderr separately.

        Output past `max_output` bytes per stream is dropped and `truncated` set. After `timeout`
        seconds the result has `timed_out` set. A command that cannot be run returns the engine's
        non-zero exit code and its message on stderr.
        """

    def exec_stream(
        self,
        engine_id: str,
        command: list[str],
        *,
        env: dict[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[LogChunk | ExecExit]:
        """Run a command and yield its output as it arrives, then one ExecExit as the last item.

        Output pieces keep stdout and stderr apart and may end inside a UTF-8 character. A
        consumer that stops reading blocks the command's writes instead of making the backend buffer.
        After `timeout` seconds, counted from the start, the ExecExit has `timed_out` set. A
        command that cannot be run ends with the engine's non-zero exit code and its message on
        stderr. Closing the iterator early stops the command where the backend can.
        """

    def logs(self, engine_id: str, options: LogOptions) -> AsyncIterator[LogChunk]:
        """Yield log output in order; with `follow` it ends when the container exits."""

    def events(self, labels: dict[str, str], since_ns: int | None = None) -> AsyncIterator[RuntimeEvent]:
        """Yield container events for containers carrying every one of `labels`, as they happen.

        With `since_ns`, first replay the events from that time (nanoseconds since the epoch), the
        event at exactly that time included. The iterator runs until the connection drops, then
        raises EngineUnavailable; the caller reconnects.
        """

    async def stats(self, engine_id: str) -> StatsSample:
        """Take one reading of the container's counters without waiting for a second one."""

    async def pull(self, image: str) -> None:
        """Pull an image; raise ImageNotFound or ImagePullFailed from the pull's progress messages."""

    async def ensure_network(self, name: str, labels: dict[str, str]) -> None:
        """Create the bridge network `name` with `labels` unless it exists; concurrent calls leave one such network."""

    async def connect_network(self, engine_id: str, name: str) -> None:
        """Attach a running or stopped container to the network `name`."""

    async def disconnect_network(self, engine_id: str, name: str) -> None:
        """Detach a container from the network `name`; do nothing when it is not attached."""

    async def close(self) -> None:
        """Release connections to the engine."""
