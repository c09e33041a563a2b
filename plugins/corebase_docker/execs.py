"""Non-interactive exec: run a command in a running container and collect its output."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

import aiodocker
from aiodocker.execs import Exec

from corebase.runtime.text import TextDecoder
from corebase.runtime.types import ExecResult, StreamName
from corebase_docker.frames import STREAM_NAMES

logger = logging.getLogger(__name__)

# Engine 20.10 reports a command that cannot be started (missing, not executable) as exit code 126
# and writes "OCI runtime exec failed: ..." into the exec's stdout stream. Other engine versions
# may use 127 for a missing command, so both codes are accepted.
_START_FAILED_EXIT_CODES = (126, 127)
_START_FAILED_PREFIX = "OCI runtime exec failed"

# Seconds to wait for the engine to record the exit code after the output stream ends.
_EXIT_CODE_WAIT = 2.0
_EXIT_CODE_POLL = 0.05


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
) -> ExecResult:
    """Run `command` in container `engine_id` and return its exit code and output.

    Stops reading after `timeout` seconds and returns `timed_out` with no exit code. aiodocker
    exceptions propagate for the caller to translate (409 when the container is not running).
    """
    container = docker.containers.container(engine_id)
    exec_ = await container.exec(
        command,
        stdout=True,
        stderr=True,
        environment=env or None,
        workdir=workdir,
        user=user or "",
    )
    output = OutputBuffer(max_output)
    start_error: str | None = None

    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            async with exec_.start(detach=False) as stream:
                while (message := await stream.read_out()) is not None:
                    output.add(STREAM_NAMES.get(message.stream, "stdout"), message.data)
    except TimeoutError:
        if not deadline.expired():
            raise
        logger.info("exec %s in container %s timed out after %g s", exec_.id, engine_id, timeout)
        await _kill_timed_out(exec_, engine_id)
        return _result(None, output, timed_out=True)
    except aiodocker.DockerError as exc:
        # Some engines reject a command that cannot start on the start request instead of in the
        # stream. The exec's exit code is then read below like any other.
        if exc.status in (404, 409) or "exec failed" not in exc.message:
            raise
        start_error = exc.message

    exit_code = await _wait_exit_code(exec_)
    if start_error is not None:
        output.add("stderr", start_error.encode() + b"\n")
        exit_code = exit_code or _START_FAILED_EXIT_CODES[0]
    return _result(exit_code, output)


def _result(exit_code: int | None, output: OutputBuffer, timed_out: bool = False) -> ExecResult:
    stdout = output.text("stdout")
    stderr = output.text("stderr")

    # The engine's own message about a command it could not start arrives on stdout; it belongs
    # on stderr with the non-zero exit code.
    if exit_code in _START_FAILED_EXIT_CODES and stdout.startswith(_START_FAILED_PREFIX) and not stderr:
        stdout, stderr = "", stdout.replace("\r\n", "\n")

    return ExecResult(
        exit_code=exit_code,
        stdout=stdout,
        stderr=stderr,
        truncated=output.truncated,
        timed_out=timed_out,
    )


async def _wait_exit_code(exec_: Exec) -> int | None:
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
        await asyncio.sleep(_EXIT_CODE_POLL)


async def _kill_timed_out(exec_: Exec, engine_id: str) -> None:
    """Kill a timed-out exec's process through its host PID, when that PID is surely the exec's.

    The engine has no API to stop an exec. Its PID is a host PID, which names the exec only when
    CoreBase shares the engine's PID namespace, so the process is killed only when its
    /proc/<pid>/cgroup names the container.
    """
    try:
        info: dict[str, Any] = await exec_.inspect()
    except aiodocker.DockerError as exc:
        logger.warning("cannot inspect timed-out exec %s to kill it: %s", exec_.id, exc)
        return
    pid = int(info.get("Pid") or 0)
    container_id = str(info.get("ContainerID") or engine_id)
    if not info.get("Running") or pid <= 0:
        return

    try:
        cgroups = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        cgroups = ""
    if container_id not in cgroups:
        # NOTE: the process is left running: CoreBase runs in another PID namespace (for
        # example in a container with the engine socket mounted) or the PID was reused.
        logger.warning(
            "timed-out exec %s (host pid %d) left running: /proc/%d/cgroup does not name container %s",
            exec_.id, pid, pid, container_id,
        )
        return

    try:
        # NOTE: only the exec's main process is killed; children it started keep running until
        # they exit or the container stops.
        os.kill(pid, signal.SIGKILL)
        logger.info("killed timed-out exec %s (host pid %d) in container %s", exec_.id, pid, container_id)
    except (ProcessLookupError, PermissionError) as exc:
        logger.warning("cannot kill timed-out exec %s (host pid %d): %s", exec_.id, pid, exc)
