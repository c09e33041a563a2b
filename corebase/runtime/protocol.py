"""The contract every container runtime backend implements.

A backend raises only errors from `corebase.errors` (ContainerNotFound, ImageNotFound,
ImagePullFailed, NameInUse, ContainerNotRunning, EngineUnavailable, EngineTimeout, EngineError),
so the core maps them to HTTP without knowing the backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Protocol, runtime_checkable

from corebase.runtime.types import (
    ContainerSpec,
    ContainerState,
    ExecExit,
    ExecResult,
    LogChunk,
    LogOptions,
    PathStat,
    RuntimeEvent,
    RuntimeInfo,
    StatsSample,
)


class ExecSession(Protocol):
    """A running interactive exec: its stdin, its output, its terminal size and its signals.

    `read` returns output pieces until the command's output ends, then None. With a TTY all
    output is stdout. A consumer that stops reading blocks the command's writes, and `write`
    waits while the command does not read, so neither side buffers without bound. After `read`
    returned None, `exit_code` returns the command's exit code. `close` ends the session and
    stops the command's processes if they still run; it may be called more than once.
    """

    tty: bool

    async def read(self) -> LogChunk | None: ...

    async def write(self, data: bytes) -> None:
        """Send bytes to the command's stdin."""

    async def close_stdin(self) -> None:
        """Close the command's stdin, so it reads end-of-file; its output stays open."""

    async def resize(self, cols: int, rows: int) -> None:
        """Set the terminal size; only a TTY session has one."""

    async def signal(self, name: str) -> None:
        """Send the signal `name` (such as "INT" or "TERM") to the command's processes."""

    async def exit_code(self) -> int | None: ...

    async def close(self) -> None: ...


@runtime_checkable
class ContainerRuntime(Protocol):
    """A container backend. Every method is a coroutine except `logs`, `exec_stream`, `read_archive` and
    `events`, which are async iterators."""

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

    async def pause(self, engine_id: str) -> None:
        """Freeze every process of a running container.

        Raises ContainerNotRunning when it is not running, with status "paused" when it is paused already.
        """

    async def unpause(self, engine_id: str) -> None:
        """Let a paused container's processes run again. Raises ContainerNotPaused when it is not paused."""

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

    async def open_exec(
        self,
        engine_id: str,
        command: list[str],
        *,
        tty: bool = False,
        env: dict[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        cols: int | None = None,
        rows: int | None = None,
    ) -> ExecSession:
        """Start an interactive command with its stdin open and return the session.

        With `tty` the command gets a terminal of `cols` by `rows` characters. Raises
        ContainerNotRunning (with status "paused" for a paused container) or ContainerNotFound.
        """

    async def stat_path(self, engine_id: str, path: str) -> PathStat:
        """Describe the absolute `path` in a container, running or not.

        Raises PathNotFound when it does not exist, ContainerNotFound when the container does not.
        """

    def read_archive(self, engine_id: str, path: str) -> AsyncIterator[bytes]:
        """Yield a tar archive of `path` (a file, or a directory with its contents) as it is read.

        Raises PathNotFound before the first piece when `path` does not exist.
        """

    async def write_archive(self, engine_id: str, path: str, archive: AsyncIterable[bytes]) -> None:
        """Extract the tar archive read from `archive` into the directory `path` of a container.

        The archive is passed on as it arrives. Raises PathNotFound when `path` does not exist,
        InvalidField for a `path` that is not a directory or an archive the engine cannot read,
        and PathReadOnly when the target is on a read-only file system.
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

    async def ensure_network(self, name: str, labels: dict[str, str], *, isolated: bool = False) -> None:
        """Create the bridge network `name` with `labels` unless it exists; concurrent calls leave one such network.

        An `isolated` network carries no traffic between its containers, only to and from outside.
        """

    async def connect_network(self, engine_id: str, name: str) -> None:
        """Attach a running or stopped container to the network `name`."""

    async def disconnect_network(self, engine_id: str, name: str) -> None:
        """Detach a container from the network `name`; do nothing when it is not attached."""

    async def close(self) -> None:
        """Release connections to the engine."""
