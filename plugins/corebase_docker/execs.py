"""Non-interactive exec: run a command in a running container and stream or collect its output."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
from aiodocker.execs import Exec
from aiodocker.stream import Message, Stream

from corebase.runtime.text import TextDecoder
from corebase.runtime.types import ExecExit, ExecResult, LogChunk, StreamName
from corebase_docker.frames import STREAM_NAMES

logger = logging.getLogger(__name__)

# Engine 20.10 reports a command that cannot be started (missing, not executable) as exit code 126
# and writes "OCI runtime exec failed: ..." into the exec's stdout stream. Other engine versions
# may use 127 for a missing command, so both codes are accepted.
_START_FAILED_EXIT_CODES = (126, 127)
START_FAILED_EXIT_CODE = _START_FAILED_EXIT_CODES[0]
_START_FAILED_PREFIX = "OCI runtime exec failed"

# Seconds to wait for the engine to record the exit code after the output stream ends, or the
# host PID after the command starts (engine 20.10 records it after the output begins).
_EXIT_CODE_WAIT = 2.0
_PID_WAIT = 2.0
_INSPECT_POLL = 0.05

# The variable that marks the processes of one exec, so `signal_marked` can find them. The engine
# has no API to signal an exec, and the PID that exec inspect reports is a host PID, which means
# nothing inside the container's PID namespace.
MARKER_VARIABLE = "COREBASE_EXEC_ID"

# Run by `sh -c` with $1 the marker value and $2 the signal name. It reads /proc, so it needs
# no ps; `tr` turns each environment into lines for an exact match.
_KILL_SCRIPT = (
    'for dir in /proc/[0-9]*; do '
    f'if tr "\\0" "\\n" < "$dir/environ" 2>/dev/null | grep -qx "{MARKER_VARIABLE}=$1"; then '
    'kill -s "$2" "${dir#/proc/}" 2>/dev/null; '
    'fi; done; exit 0'
)
# Seconds the signalling exec may take.
_SIGNAL_TIMEOUT = 10.0


class OutputBuffer:
    """Keep at most `limit` bytes of stdout and of stderr, decoded as UTF-8.

    Bytes past the limit are dropped and `truncated` set. A character cut at the limit is dropped
    whole instead of becoming U+FFFD.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.truncated = False
        self._decoder = TextDecoder()
        self._sizes: dict[StreamName, int] = {"stdout": 0, "stderr": 0}
        self._parts: dict[StreamName, list[str]] = {"stdout": [], "stderr": []}
        self._cut: dict[StreamName, bool] = {"stdout": False, "stderr": False}

    def add(self, stream: StreamName, data: bytes) -> None:
        """Append `data` to `stream`, keeping only what fits under the limit."""
        if self.limit is not None:
            room = max(self.limit - self._sizes[stream], 0)
            if len(data) > room:
                data = data[:room]
                self.truncated = True
                self._cut[stream] = True
        if data:
            self._sizes[stream] += len(data)
            self._parts[stream].append(self._decoder.decode(stream, data))

    def text(self, stream: StreamName) -> str:
        """Return everything kept for `stream`; call once, after the last `add`."""
        if not self._cut[stream]:
            self._parts[stream].append(self._decoder.finish(stream))
        return "".join(self._parts[stream])


async def run_exec(
    docker: aiodocker.Docker,
    engine_id: str,
    command: list[str],
    *,
    env: dict[str, str] | None,
    workdir: str | None,
    user: str | None,
    timeout: float | None,
    max_output: int | None,
    mark: bool = True,
) -> ExecResult:
    """Run `command` in container `engine_id` and return its exit code and output.

    Keeps at most `max_output` bytes of each stream and drains the rest. Stops after `timeout`
    seconds and returns `timed_out` with no exit code. aiodocker exceptions propagate for the
    caller to translate (409 when the container is not running).
    """
    output = OutputBuffer(max_output)
    end = ExecExit(exit_code=None)
    items = stream_exec(docker, engine_id, command, env=env, workdir=workdir, user=user, timeout=timeout, mark=mark)
    async with aclosing(items):
        async for item in items:
            if isinstance(item, ExecExit):
                end = item
            else:
                output.add(item.stream, item.data)

    return ExecResult(
        exit_code=end.exit_code,
        stdout=output.text("stdout"),
        stderr=output.text("stderr"),
        truncated=output.truncated,
        timed_out=end.timed_out,
    )


async def stream_exec(
    docker: aiodocker.Docker,
    engine_id: str,
    command: list[str],
    *,
    env: dict[str, str] | None,
    workdir: str | None,
    user: str | None,
    timeout: float | None,
    mark: bool = True,
) -> AsyncIterator[LogChunk | ExecExit]:
    """Run `command` in container `engine_id`, yield its output as it arrives, then one ExecExit.

    Nothing is buffered beyond the frame being read: aiodocker (0.27) stops reading from the
    engine while its queue contains more than 128 KiB, so a consumer that does not iterate
    blocks the command's writes instead of filling memory. `timeout` counts from the start, the
    consumer's time included. Past it the command is killed (see `ExecSignaller`) and the ExecExit
    has `timed_out` set. A consumer that stops iterating early kills the command the same way.
    `mark` gives the command a MARKER_VARIABLE of its own for that kill. The signalling exec
    itself runs unmarked. aiodocker exceptions propagate for the caller to translate (409 when
    the container is not running).
    """
    marker = new_marker() if mark else None
    container = docker.containers.container(engine_id)
    exec_ = await container.exec(
        command,
        stdout=True,
        stderr=True,
        environment={**(env or {}), MARKER_VARIABLE: marker} if marker else env or None,
        workdir=workdir,
        user=user or "",
    )
    signaller = ExecSignaller(docker, exec_, engine_id, user=user, marker=marker)
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    stream = exec_.start(detach=False)
    start_message = StartMessage()
    ended = False
    try:
        try:
            while (message := await _read_before(stream, deadline)) is not None:
                for chunk in start_message.pass_on(STREAM_NAMES.get(message.stream, "stdout"), message.data):
                    yield chunk
        except _DeadlinePassed:
            logger.info("exec %s in container %s timed out after %g s", exec_.id, engine_id, timeout)
            ended = True
            await stream.close()
            await signaller.send("KILL", "timed-out")
            for chunk in start_message.release(None):
                yield chunk
            yield ExecExit(exit_code=None, timed_out=True)
            return
        except aiodocker.DockerError as exc:
            # Some engines reject a command that cannot start on the start request instead of in
            # the stream. The exec's exit code is then read below like any other.
            if exc.status in (404, 409) or "exec failed" not in exc.message:
                raise
            start_message.failed_on_start(exc.message)

        ended = True
        await stream.close()
        exit_code = await wait_exit_code(exec_)
        if start_message.rejected and not exit_code:
            exit_code = START_FAILED_EXIT_CODE
        for chunk in start_message.release(exit_code):
            yield chunk
        yield ExecExit(exit_code=exit_code)
    finally:
        await stream.close()
        if not ended:
            # The consumer stopped early or the read failed, so the output has no reader any more.
            await asyncio.shield(signaller.send("KILL", "abandoned"))


class _DeadlinePassed(Exception):
    """The exec's timeout passed while its output was being read."""


async def _read_before(stream: Stream, deadline: float | None) -> Message | None:
    """Read the next message of `stream`, or raise _DeadlinePassed once the loop time `deadline` is reached."""
    limit = asyncio.timeout_at(deadline)
    try:
        async with limit:
            return await stream.read_out()
    except TimeoutError:
        if limit.expired():
            raise _DeadlinePassed from None
        raise


class StartMessage:
    """Move the engine's message about a command it could not start from stdout to stderr.

    Engine 20.10 writes "OCI runtime exec failed: ..." as the first output on stdout and exits
    with 126 or 127. Such a first piece is held back until the exit code is known, then passed
    on as stderr when the code confirms the failure, and as stdout otherwise.
    """

    def __init__(self) -> None:
        self._first = True
        self._held: bytes | None = None
        self.rejected = False

    def pass_on(self, stream: StreamName, data: bytes) -> list[LogChunk]:
        """Return the pieces to pass on now that `data` arrived on `stream`."""
        if self._first and stream == "stdout" and data.startswith(_START_FAILED_PREFIX.encode()):
            self._first = False
            self._held = data
            return []
        self._first = False
        pieces = [LogChunk(stream="stdout", data=self._held)] if self._held is not None else []
        self._held = None
        return [*pieces, LogChunk(stream=stream, data=data)]

    def failed_on_start(self, message: str) -> None:
        """Record the engine's rejection of the exec start request, reported on stderr at the end."""
        self.rejected = True
        self._held = (self._held or b"") + message.encode() + b"\n"
        self._first = False

    def release(self, exit_code: int | None) -> list[LogChunk]:
        """Return what is held back, on stderr when `exit_code` confirms a command that could not start."""
        if self._held is None:
            return []
        data, self._held = self._held, None
        if self.rejected or exit_code in _START_FAILED_EXIT_CODES:
            return [LogChunk(stream="stderr", data=data.replace(b"\r\n", b"\n"))]
        return [LogChunk(stream="stdout", data=data)]


async def wait_exit_code(exec_: Exec) -> int | None:
    """Return the exec's exit code, polling briefly while the engine is still recording it."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + _EXIT_CODE_WAIT
    while True:
        info = await exec_.inspect()
        exit_code = info.get("ExitCode")
        if not info.get("Running") and exit_code is not None:
            return int(exit_code)
        if loop.time() >= give_up_at:
            logger.warning("exec %s ended its output but reports no exit code: %s", exec_.id, info)
            return None
        await asyncio.sleep(_INSPECT_POLL)


def new_marker() -> str:
    """Return a fresh value for an exec's MARKER_VARIABLE."""
    return secrets.token_hex(8)


async def signal_marked(docker: aiodocker.Docker, engine_id: str, marker: str, name: str, user: str | None) -> ExecResult:
    """Send signal `name` to every process in the container whose environment contains `marker`.

    That is the marked command and the processes it started that kept its environment. A second
    exec runs `kill` for them as `user`, so it needs `sh`, `tr`, `grep` and `kill` in the image.
    Its exit code is 0 when the script ran. aiodocker exceptions propagate.
    """
    return await run_exec(
        docker,
        engine_id,
        ["sh", "-c", _KILL_SCRIPT, "sh", marker, name],
        env=None,
        workdir=None,
        user=user,
        timeout=_SIGNAL_TIMEOUT,
        max_output=4096,
        mark=False,
    )


class ExecSignaller:
    """Signal one exec's processes, by their marker or else by the exec's host PID.

    The marked processes get the signal first (see `signal_marked`), which reaches the command's
    children and works from any PID namespace. Where that script cannot run, in an image without a
    shell, the command's main process gets it through its host PID instead, when that PID is
    surely the exec's: CoreBase shares the engine's PID namespace and /proc/<pid>/cgroup names the
    container.
    """

    def __init__(self, docker: aiodocker.Docker, exec_: Exec, engine_id: str, *, user: str | None, marker: str | None) -> None:
        self.docker = docker
        self.exec_ = exec_
        self.engine_id = engine_id
        self.user = user
        self.marker = marker

    async def send(self, name: str, reason: str) -> bool:
        """Send signal `name` (such as KILL or TERM) and return whether it was delivered.

        `reason` (such as "timed-out" or "abandoned") goes into the log lines.
        """
        if self.marker is not None:
            try:
                result = await signal_marked(self.docker, self.engine_id, self.marker, name, self.user)
            except (aiodocker.DockerError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                logger.info("cannot run the signal script for %s exec %s: %r", reason, self.exec_.id, exc)
            else:
                if result.exit_code == 0:
                    logger.info("sent %s to %s exec %s in container %s", name, reason, self.exec_.id, self.engine_id)
                    return True
                logger.info(
                    "signal script for %s exec %s failed (exit code %s): %s",
                    reason, self.exec_.id, result.exit_code, result.stderr.strip(),
                )
        return await self._signal_host_pid(name, reason)

    async def _signal_host_pid(self, name: str, reason: str) -> bool:
        try:
            info = await self._running_info()
        except (aiodocker.DockerError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            logger.warning("cannot inspect %s exec %s to send it %s: %r", reason, self.exec_.id, name, exc)
            return False
        pid = int(info.get("Pid") or 0)
        container_id = str(info.get("ContainerID") or self.engine_id)
        if not info.get("Running"):
            return False
        try:
            cgroups = Path(f"/proc/{pid}/cgroup").read_text() if pid > 0 else ""
        except OSError:
            cgroups = ""
        if container_id not in cgroups:
            # NOTE: the process gets no signal: CoreBase runs in another PID namespace (for
            # example in a container with the engine socket mounted), the PID was reused or the
            # engine never reported it.
            logger.warning(
                "%s exec %s (host pid %d) not sent %s: /proc/%d/cgroup does not name container %s",
                reason, self.exec_.id, pid, name, pid, container_id,
            )
            return False
        try:
            # NOTE: only the exec's main process gets the signal; children it started keep running
            # until they exit or the container stops.
            os.kill(pid, signal.Signals[f"SIG{name}"])
        except (ProcessLookupError, PermissionError) as exc:
            logger.warning("cannot send %s to %s exec %s (host pid %d): %s", name, reason, self.exec_.id, pid, exc)
            return False
        logger.info("sent %s to %s exec %s (host pid %d) in container %s", name, reason, self.exec_.id, pid, container_id)
        return True

    async def _running_info(self) -> dict[str, Any]:
        """Inspect the exec, again while it runs without a PID: engine 20.10 records the PID after
        the command's output has begun."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + _PID_WAIT
        while True:
            info: dict[str, Any] = await self.exec_.inspect()
            if not info.get("Running") or int(info.get("Pid") or 0) > 0 or loop.time() >= give_up_at:
                return info
            await asyncio.sleep(_INSPECT_POLL)
