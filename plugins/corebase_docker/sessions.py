"""Interactive exec: a command with its stdin open, over the engine's hijacked exec connection.

Every session's command gets a MARKER_VARIABLE of its own. A second exec (see `ExecSignaller`)
delivers a signal to the processes that carry it: the command and the children that kept its
environment, or only the command in an image without a shell. A TTY session sends INT, QUIT and TSTP as the control characters
instead, which the terminal turns into signals for its foreground process group, as a keyboard
would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiodocker
import aiohttp
from aiodocker.execs import Exec
from aiodocker.stream import Stream

from corebase.runtime.types import LogChunk
from corebase_docker.execs import (
    MARKER_VARIABLE,
    START_FAILED_EXIT_CODE,
    ExecSignaller,
    StartMessage,
    new_marker,
    wait_exit_code,
)
from corebase_docker.frames import STREAM_NAMES

logger = logging.getLogger(__name__)

# Signals a TTY session sends as the control character the terminal turns into that signal.
CONTROL_CHARACTERS = {"INT": b"\x03", "QUIT": b"\x1c", "TSTP": b"\x1a"}


class DockerExecSession:
    """An ExecSession over one engine exec; build it with `open_session`."""

    def __init__(self, docker: aiodocker.Docker, exec_: Exec, stream: Stream, *, engine_id: str, tty: bool, user: str | None, marker: str) -> None:
        self.docker = docker
        self.tty = tty
        self.engine_id = engine_id
        self._exec = exec_
        self._stream = stream
        self._signaller = ExecSignaller(docker, exec_, engine_id, user=user, marker=marker)
        self._start_message = StartMessage()
        self._held: list[LogChunk] = []
        self._ended = False
        self._exit_code: int | None = None
        self._closed = False

    @property
    def exec_id(self) -> str:
        return self._exec.id

    async def read(self) -> LogChunk | None:
        while not self._held:
            if self._ended:
                return None
            message = await self._stream.read_out()
            if message is None:
                self._ended = True
                self._exit_code = await wait_exit_code(self._exec)
                if self._start_message.rejected and not self._exit_code:
                    self._exit_code = START_FAILED_EXIT_CODE
                self._held = self._start_message.release(self._exit_code)
                continue
            self._held = self._start_message.pass_on(STREAM_NAMES.get(message.stream, "stdout"), message.data)
        return self._held.pop(0)

    async def write(self, data: bytes) -> None:
        await self._stream.write_in(data)

    async def close_stdin(self) -> None:
        if self.tty:
            # With a terminal the engine ends the whole session, output included, when the client
            # shuts its side; an end-of-file character (Ctrl-D) closes the command's input instead.
            await self.write(b"\x04")
            return
        # aiodocker (0.27) closes both directions in Stream.close(), so the write side of its
        # connection is shut here. The engine then closes the command's stdin.
        response = self._stream._resp
        transport = response.connection.transport if response is not None and response.connection else None
        if transport is not None and transport.can_write_eof():
            transport.write_eof()

    async def resize(self, cols: int, rows: int) -> None:
        if not self.tty:
            return
        try:
            await self._exec.resize(h=rows, w=cols)
        except aiodocker.DockerError as exc:
            # A command that already ended has no terminal left to resize; its output and exit
            # code still follow, so the resize is dropped rather than failing the session.
            if "stopped" not in str(exc.message) and "not running" not in str(exc.message):
                raise
            logger.debug("terminal resize after exec %s ended: %s", self._exec.id, exc.message)

    async def signal(self, name: str) -> None:
        if self.tty and name in CONTROL_CHARACTERS:
            await self.write(CONTROL_CHARACTERS[name])
            return
        # The signaller logs why a signal was not delivered.
        await self._signaller.send(name, "session")

    async def exit_code(self) -> int | None:
        return self._exit_code if self._ended else await wait_exit_code(self._exec)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            info = await self._exec.inspect()
            if info.get("Running"):
                logger.info("ending exec %s in container %s, whose session closed", self.exec_id, self.engine_id)
                await self._signaller.send("KILL", "closed session")
        except (aiodocker.DockerError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            logger.warning("could not stop exec %s in container %s: %r", self.exec_id, self.engine_id, exc)
        finally:
            await self._stream.close()


async def open_session(
    docker: aiodocker.Docker,
    engine_id: str,
    command: list[str],
    *,
    tty: bool,
    env: dict[str, str] | None,
    workdir: str | None,
    user: str | None,
    cols: int | None,
    rows: int | None,
) -> DockerExecSession:
    """Create and start an exec with stdin attached, and set its terminal size.

    aiodocker exceptions propagate for the caller to translate (409 when the container is not
    running or is paused).
    """
    marker = new_marker()
    container = docker.containers.container(engine_id)
    exec_ = await container.exec(
        command,
        stdin=True,
        stdout=True,
        stderr=True,
        tty=tty,
        environment={**(env or {}), MARKER_VARIABLE: marker},
        workdir=workdir,
        user=user or "",
    )
    stream = exec_.start(detach=False)
    session = DockerExecSession(docker, exec_, stream, engine_id=engine_id, tty=tty, user=user, marker=marker)
    try:
        # Entering the stream sends the start request; the terminal exists only after it.
        await stream.__aenter__()
        if tty and cols and rows:
            await session.resize(cols, rows)
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.shield(session.close())
        raise
    return session
