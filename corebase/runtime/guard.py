"""EngineGuard: a ContainerRuntime in front of another that fails fast while the engine is down.

The core makes every engine call through the guard. A call that cannot connect marks the engine
down, and from then on calls raise EngineUnavailable (503) at once instead of each waiting for its
own timeout. A background probe checks the engine every `probe_interval` seconds, and at once
after a failed call:

- a probe that fails, or two probes in a row that take longer than `probe_timeout`, mark the
  engine down and abort every call still waiting for it, streams included, with EngineUnavailable.
  One slow answer is retried at once instead, so a moment of load on a busy machine is not taken
  for an outage;
- a probe that succeeds marks the engine up again, and calls go through.

The probe runs while the engine is up too. Streams (engine events, followed logs) have no total
timeout, so without it a hung engine would keep them open and silent forever.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

from corebase.errors import ApiError, EngineTimeout, EngineUnavailable
from corebase.runtime.protocol import ContainerRuntime, ExecSession
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

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Timed-out health checks in a row that mark the engine down; a refused connection does at once.
SLOW_PROBES_FOR_OUTAGE = 2


class EngineGuard:
    """Wraps `runtime`, tracks whether its engine responds, and rejects calls while it does not.

    `available` is True until a call or a probe fails. Call `start_probe()` inside the event loop,
    because only the probe marks the engine up again after a failure. `stop_probe()` ends the
    probe and waits for the abandoned calls, and `close()` also closes the wrapped runtime.
    """

    def __init__(self, runtime: ContainerRuntime, *, probe_interval: float, probe_timeout: float) -> None:
        self.runtime = runtime
        self.name = runtime.name
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.available = True
        self.down_since: datetime | None = None
        self.reason: str | None = None
        self.outages = 0
        self._down_at = 0.0
        self._up = asyncio.Event()
        self._up.set()
        self._wake = asyncio.Event()
        # Resolved when a probe fails, which aborts every call waiting on it. Recovery replaces it.
        self._outage: asyncio.Future[None] | None = None
        # Resolved by end_followed_logs(), which ends followed log streams as if their containers had exited.
        self._draining: asyncio.Future[None] | None = None
        self._probe_task: asyncio.Task | None = None
        # Calls given up on (by an outage or a cancelled caller) that are still finishing their clean-up.
        self._abandoned: set[asyncio.Task] = set()
        # Health checks in a row that timed out; see SLOW_PROBES_FOR_OUTAGE.
        self._slow_probes = 0

    # --- the probe --------------------------------------------------------------------------

    def start_probe(self) -> None:
        """Start checking the engine in the background. A second call does nothing."""
        if self._probe_task is None:
            self._probe_task = asyncio.create_task(self._probe_loop(), name="corebase-engine-probe")

    async def stop_probe(self) -> None:
        """Stop the probe, and wait for the abandoned calls, which are cancelled already, to finish."""
        if self._probe_task is not None:
            self._probe_task.cancel()
            await asyncio.gather(self._probe_task, return_exceptions=True)
            self._probe_task = None
        if self._abandoned:
            await asyncio.gather(*self._abandoned, return_exceptions=True)

    async def probe(self) -> bool:
        """Check the engine once, mark it up or down, and return whether it responded.

        Uses the runtime's `ping()` when it has one (a cheaper request), else `info()`.
        """
        check = getattr(self.runtime, "ping", None) or self.runtime.info
        try:
            async with asyncio.timeout(self.probe_timeout):
                await check()
        except TimeoutError:
            self._slow_probes += 1
            if self._slow_probes < SLOW_PROBES_FOR_OUTAGE:
                logger.info("the container engine health check took over %g s; checking again", self.probe_timeout)
                self._wake.set()
                return self.available
            self._mark_down(
                f"the container engine health check timed out after {self.probe_timeout:g} s, so the engine "
                "hangs or is overloaded. Raise docker.probe_timeout if it is only slow",
                abort=True,
            )
            return False
        except ApiError as exc:
            self._slow_probes = 0
            self._mark_down(exc.detail, abort=True)
            return False
        self._slow_probes = 0
        self._mark_up()
        return True

    async def wait_until_available(self) -> None:
        """Return once the engine is marked up, at once when it is up already."""
        await self._up.wait()

    async def _probe_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.probe_interval)
            self._wake.clear()
            try:
                await self.probe()
            except Exception:
                logger.exception("the container engine health check failed unexpectedly")

    def _mark_down(self, reason: str, *, abort: bool) -> None:
        if self.available:
            self.available = False
            self.outages += 1
            self.down_since = datetime.now(timezone.utc)
            self._down_at = time.monotonic()
            self._up.clear()
            logger.warning(
                "container engine unavailable: %s. Engine requests fail with 503 until a health check succeeds", reason
            )
        self.reason = reason
        if abort and self._outage is not None and not self._outage.done():
            self._outage.set_result(None)
        self._wake.set()

    def _mark_up(self) -> None:
        if self.available:
            return
        logger.info("container engine is reachable again after %.1f s", time.monotonic() - self._down_at)
        self.available = True
        self.reason = None
        self.down_since = None
        self._outage = None
        self._up.set()

    def unavailable(self) -> EngineUnavailable:
        """Build the 503 error for a request made while the engine is down."""
        since = self.down_since.strftime("%Y-%m-%dT%H:%M:%SZ") if self.down_since else "now"
        return EngineUnavailable(
            f"{self.reason or 'the container engine is unreachable'}. The engine is unreachable since {since}, "
            f"and CoreBase checks it again every {self.probe_interval:g} s, so retry after that",
            retry_after=max(1, math.ceil(self.probe_interval)),
        )

    # --- guarded calls ----------------------------------------------------------------------

    def _outage_future(self) -> asyncio.Future[None]:
        if self._outage is None:
            self._outage = asyncio.get_running_loop().create_future()
        return self._outage

    def _draining_future(self) -> asyncio.Future[None]:
        if self._draining is None:
            self._draining = asyncio.get_running_loop().create_future()
        return self._draining

    def end_followed_logs(self) -> None:
        """End every followed log stream, open or opened later, as if its container had exited.

        A server that shuts down calls this, because it waits for open responses to finish, and a
        followed log runs for as long as its container does.
        """
        draining = self._draining_future()
        if not draining.done():
            draining.set_result(None)

    async def _call(self, function: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run one engine call unless the engine is down, and give up on it when a probe fails."""
        if not self.available:
            raise self.unavailable()
        outage = self._outage_future()
        call = asyncio.ensure_future(function(*args, **kwargs))
        try:
            await asyncio.wait((call, outage), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self._abandon(call)
            raise
        if not call.done():
            self._abandon(call)
            raise self.unavailable()
        return self._result(call)

    def _result(self, call: asyncio.Future[T]) -> T:
        try:
            return call.result()
        except ApiError as exc:
            self._note_failure(exc)
            raise

    def _abandon(self, call: asyncio.Future) -> None:
        """Cancel a call that no caller waits for any more, and keep a reference until its clean-up has run."""
        call.cancel()
        if call.done():
            return
        self._abandoned.add(call)
        call.add_done_callback(self._forget)

    def _forget(self, call: asyncio.Future) -> None:
        self._abandoned.discard(call)
        if not call.cancelled() and call.exception() is not None:
            logger.debug("an abandoned engine call failed: %r", call.exception())

    async def _stream(self, stream: AsyncIterator[T], *, endless: bool = False) -> AsyncIterator[T]:
        """Yield from an engine stream, ending it with EngineUnavailable when a probe fails.

        One task reads the whole stream and hands items over one at a time, so the stream runs in
        a single task, as timeouts held across its items require, and never reads far ahead. An
        `endless` stream also ends, without an error, once end_followed_logs() is called.
        """
        draining = self._draining_future() if endless else None
        if draining is not None and draining.done():
            await _close(stream)
            return
        if not self.available:
            await _close(stream)
            raise self.unavailable()
        handover: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        outage = self._outage_future()
        consumer_gone = False

        async def read() -> None:
            try:
                async for item in stream:
                    await handover.put(item)
                last: Any = _END
            except asyncio.CancelledError:
                # Only a cancel caused by the outage or by draining is handed over, because after
                # any other cancel no consumer reads the queue.
                if consumer_gone:
                    raise
                if outage.done():
                    last = self.unavailable()
                elif draining is not None and draining.done():
                    last = _END
                else:
                    raise
            except Exception as exc:
                last = exc
            finally:
                await _close(stream)
            await handover.put(last)

        reader = asyncio.create_task(read(), name="corebase-engine-stream")
        abort = lambda _: reader.cancel()  # noqa: E731
        outage.add_done_callback(abort)
        if draining is not None:
            draining.add_done_callback(abort)
        try:
            while (item := await handover.get()) is not _END:
                if isinstance(item, BaseException):
                    self._note_failure(item)
                    raise item
                yield item
        finally:
            consumer_gone = True
            outage.remove_done_callback(abort)
            if draining is not None:
                draining.remove_done_callback(abort)
            if not reader.done():
                reader.cancel()
                # Cancelling only closes the stream's response, so this wait is short.
                await asyncio.wait((reader,))

    def _note_failure(self, error: BaseException) -> None:
        """Mark the engine down after a failed connection, and wake the probe after a timeout."""
        if isinstance(error, EngineUnavailable):
            self._mark_down(error.detail, abort=False)
        elif isinstance(error, EngineTimeout):
            self._wake.set()

    # --- ContainerRuntime ---------------------------------------------------------------------

    async def info(self) -> RuntimeInfo:
        return await self._call(self.runtime.info)

    async def create(self, spec: ContainerSpec) -> str:
        return await self._call(self.runtime.create, spec)

    async def start(self, engine_id: str) -> None:
        await self._call(self.runtime.start, engine_id)

    async def stop(self, engine_id: str, timeout: float | None = None) -> None:
        await self._call(self.runtime.stop, engine_id, timeout)

    async def restart(self, engine_id: str, timeout: float | None = None) -> None:
        await self._call(self.runtime.restart, engine_id, timeout)

    async def rename(self, engine_id: str, name: str) -> None:
        await self._call(self.runtime.rename, engine_id, name)

    async def remove(self, engine_id: str, force: bool = False) -> None:
        await self._call(self.runtime.remove, engine_id, force)

    async def pause(self, engine_id: str) -> None:
        await self._call(self.runtime.pause, engine_id)

    async def unpause(self, engine_id: str) -> None:
        await self._call(self.runtime.unpause, engine_id)

    async def inspect(self, engine_id: str) -> ContainerState:
        return await self._call(self.runtime.inspect, engine_id)

    async def list(self, labels: dict[str, str]) -> builtins.list[ContainerState]:
        return await self._call(self.runtime.list, labels)

    async def exec(
        self,
        engine_id: str,
        command: builtins.list[str],
        *,
        env: dict[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        max_output: int | None = None,
    ) -> ExecResult:
        return await self._call(
            self.runtime.exec,
            engine_id,
            command,
            env=env,
            workdir=workdir,
            user=user,
            timeout=timeout,
            max_output=max_output,
        )

    def exec_stream(
        self,
        engine_id: str,
        command: builtins.list[str],
        *,
        env: dict[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[LogChunk | ExecExit]:
        return self._stream(
            self.runtime.exec_stream(engine_id, command, env=env, workdir=workdir, user=user, timeout=timeout)
        )

    async def open_exec(
        self,
        engine_id: str,
        command: builtins.list[str],
        *,
        tty: bool = False,
        env: dict[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        cols: int | None = None,
        rows: int | None = None,
    ) -> ExecSession:
        session = await self._call(
            self.runtime.open_exec,
            engine_id,
            command,
            tty=tty,
            env=env,
            workdir=workdir,
            user=user,
            cols=cols,
            rows=rows,
        )
        return _GuardedSession(self, session)

    async def stat_path(self, engine_id: str, path: str) -> PathStat:
        return await self._call(self.runtime.stat_path, engine_id, path)

    def read_archive(self, engine_id: str, path: str) -> AsyncIterator[bytes]:
        return self._stream(self.runtime.read_archive(engine_id, path))

    async def write_archive(self, engine_id: str, path: str, archive: AsyncIterable[bytes]) -> None:
        await self._call(self.runtime.write_archive, engine_id, path, archive)

    def logs(self, engine_id: str, options: LogOptions) -> AsyncIterator[LogChunk]:
        return self._stream(self.runtime.logs(engine_id, options), endless=options.follow)

    def events(self, labels: dict[str, str], since_ns: int | None = None) -> AsyncIterator[RuntimeEvent]:
        return self._stream(self.runtime.events(labels, since_ns))

    async def stats(self, engine_id: str) -> StatsSample:
        return await self._call(self.runtime.stats, engine_id)

    async def pull(self, image: str) -> None:
        await self._call(self.runtime.pull, image)

    async def ensure_network(self, name: str, labels: dict[str, str], *, isolated: bool = False) -> None:
        await self._call(self.runtime.ensure_network, name, labels, isolated=isolated)

    async def connect_network(self, engine_id: str, name: str) -> None:
        await self._call(self.runtime.connect_network, engine_id, name)

    async def disconnect_network(self, engine_id: str, name: str) -> None:
        await self._call(self.runtime.disconnect_network, engine_id, name)

    async def close(self) -> None:
        """Stop the probe, then close the wrapped runtime."""
        await self.stop_probe()
        await self.runtime.close()


class _GuardedSession:
    """An ExecSession whose calls fail at once while the engine is down, and end when a probe fails."""

    def __init__(self, guard: EngineGuard, session: ExecSession) -> None:
        self._guard = guard
        self._session = session
        self.tty = session.tty

    async def read(self) -> LogChunk | None:
        return await self._guard._call(self._session.read)

    async def write(self, data: bytes) -> None:
        await self._guard._call(self._session.write, data)

    async def close_stdin(self) -> None:
        await self._guard._call(self._session.close_stdin)

    async def resize(self, cols: int, rows: int) -> None:
        await self._guard._call(self._session.resize, cols, rows)

    async def signal(self, name: str) -> None:
        await self._guard._call(self._session.signal, name)

    async def exit_code(self) -> int | None:
        return await self._guard._call(self._session.exit_code)

    async def close(self) -> None:
        # Closing must run while the engine is down too, so it is not guarded.
        await self._session.close()


# Marks the end of a stream in EngineGuard._stream's hand-over queue.
_END = object()


async def _close(stream: AsyncIterator[Any]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
