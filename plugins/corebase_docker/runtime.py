"""DockerRuntime: the ContainerRuntime protocol over the Docker Engine API, through aiodocker."""

from __future__ import annotations

import asyncio
import builtins
import ipaddress
import json
import logging
import math
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AbstractContextManager, aclosing
from typing import Any

import aiodocker
import aiohttp

from corebase.errors import ContainerNotPaused, ContainerNotRunning, ContainerRunning, ImageNotFound, NameInUse
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
from corebase.settings import ContainerSettings, DockerSettings, NetworkSettings
from corebase.sizes import parse_size
from corebase_docker.archives import read_archive, stat_path, write_archive
from corebase_docker.client import open_client, raw_response, resolve_url
from corebase_docker.errors import start_rejection, translate_errors, unavailable
from corebase_docker.events import stream_events
from corebase_docker.execs import run_exec, stream_exec
from corebase_docker.images import pull_image
from corebase_docker.logs import read_logs
from corebase_docker.sessions import DockerExecSession, open_session
from corebase_docker.networks import SubnetPool, connect_network, disconnect_network, ensure_network, network_ready
from corebase_docker.specs import DEFAULT_LOG_MAX_FILES, DEFAULT_LOG_MAX_SIZE, create_body
from corebase_docker.state import state_from_inspect, state_from_list_entry
from corebase_docker.stats import is_running_sample, parse_stats

logger = logging.getLogger(__name__)


class DockerRuntime:
    """A ContainerRuntime backed by one Docker Engine.

    Every engine call times out after `timeout` seconds, except pulls (`pull_timeout`), stops and
    restarts (their grace period plus `timeout`), exec output (the exec's own timeout), and
    followed logs and the event stream, which have no total limit. Connecting and, for those
    streams, waiting for the response headers still time out after `timeout` seconds. The aiodocker
    client is created on first use, inside the event loop.
    """

    name = "docker"

    def __init__(
        self,
        url: str = "",
        *,
        timeout: float = 30.0,
        pull_timeout: float = 600.0,
        stop_timeout: float = 10.0,
        log_max_size: int = DEFAULT_LOG_MAX_SIZE,
        log_max_files: int = DEFAULT_LOG_MAX_FILES,
        subnet_pool: SubnetPool | None = None,
    ) -> None:
        self.url = resolve_url(url)
        self.subnet_pool = subnet_pool
        self.timeout = timeout
        self.pull_timeout = pull_timeout
        self.stop_timeout = stop_timeout
        self.log_max_size = log_max_size
        self.log_max_files = log_max_files
        self._docker: aiodocker.Docker | None = None
        self._network_locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def from_settings(
        cls, docker: DockerSettings, containers: ContainerSettings, networks: NetworkSettings | None = None
    ) -> DockerRuntime:
        """Build a runtime from the `docker`, `containers` and `networks` settings sections."""
        pool = None
        if networks is not None and networks.subnet_pool:
            pool = SubnetPool(ipaddress.IPv4Network(networks.subnet_pool), networks.subnet_size)
        return cls(
            docker.url,
            timeout=docker.timeout,
            pull_timeout=docker.pull_timeout,
            stop_timeout=containers.stop_timeout,
            log_max_size=parse_size(containers.log_max_size),
            log_max_files=containers.log_max_files,
            subnet_pool=pool,
        )

    # --- engine -------------------------------------------------------------------------------

    async def info(self) -> RuntimeInfo:
        docker = self._client()
        with self._errors("read engine info"):
            info = await docker.system.info()
            version = await docker.version()
        return RuntimeInfo(
            backend=self.name,
            version=str(info.get("ServerVersion") or version.get("Version") or ""),
            api_version=str(version.get("ApiVersion") or ""),
            os=str(info.get("OperatingSystem") or version.get("Os") or ""),
            cgroup_version=str(info.get("CgroupVersion") or ""),
            cpus=int(info.get("NCPU") or 0),
            memory_bytes=int(info.get("MemTotal") or 0),
            runtimes=sorted(info.get("Runtimes") or {}),
        )

    async def ping(self) -> None:
        """Check that the engine answers `GET /_ping`, its cheapest request; EngineGuard's probe uses it."""
        docker = self._client()
        with self._errors("ping the engine"):
            await docker._query_json("_ping", versioned_api=False)

    async def pull(self, image: str) -> None:
        docker = self._client()
        with self._errors(f"pull image {image!r}"):
            await pull_image(docker, image, timeout=self.pull_timeout)

    async def ensure_network(self, name: str, labels: dict[str, str], *, isolated: bool = False) -> None:
        docker = self._client()
        with self._errors(f"inspect network {name!r}"):
            if await network_ready(docker, name, labels):
                return

        # One creation at a time per name in this process, so parallel starts make one network.
        lock = self._network_locks.setdefault(name, asyncio.Lock())
        async with lock:
            with self._errors(f"create network {name!r}"):
                await ensure_network(docker, name, labels, self.subnet_pool, isolated=isolated)

    async def connect_network(self, engine_id: str, name: str) -> None:
        docker = self._client()
        with self._errors(f"connect to network {name!r} container", engine_id):
            await connect_network(docker, engine_id, name)

    async def disconnect_network(self, engine_id: str, name: str) -> None:
        docker = self._client()
        with self._errors(f"disconnect from network {name!r} container", engine_id):
            await disconnect_network(docker, engine_id, name)

    async def close(self) -> None:
        if self._docker is not None:
            docker, self._docker = self._docker, None
            await docker.close()

    # --- lifecycle ----------------------------------------------------------------------------

    async def create(self, spec: ContainerSpec) -> str:
        body = create_body(
            spec, stop_timeout=self.stop_timeout, log_max_size=self.log_max_size, log_max_files=self.log_max_files
        )
        if spec.pull_policy == "always":
            await self.pull(spec.image)

        try:
            return await self._create_container(spec, body)
        except ImageNotFound:
            if spec.pull_policy != "missing":
                raise
        logger.info("image %s is missing for container %s; pulling it", spec.image, spec.name)
        await self.pull(spec.image)
        return await self._create_container(spec, body)

    async def start(self, engine_id: str) -> None:
        docker = self._client()
        with self._errors("start container", engine_id):
            try:
                await docker.containers.container(engine_id).start()
            except aiodocker.DockerError as exc:
                rejection = start_rejection(exc)
                if rejection is None:
                    raise
                raise rejection from exc

    async def stop(self, engine_id: str, timeout: float | None = None) -> None:
        await self._stop_or_restart("stop", engine_id, timeout)

    async def restart(self, engine_id: str, timeout: float | None = None) -> None:
        await self._stop_or_restart("restart", engine_id, timeout)

    async def rename(self, engine_id: str, name: str) -> None:
        docker = self._client()
        with self._errors("rename container", engine_id):
            try:
                # aiodocker has no rename call, so the endpoint is requested directly.
                await docker._query_json(
                    f"containers/{engine_id}/rename", method="POST", params={"name": name}, timeout=self.timeout
                )
            except aiodocker.DockerError as exc:
                if exc.status == 409:
                    raise NameInUse(name) from exc
                raise

    async def remove(self, engine_id: str, force: bool = False) -> None:
        docker = self._client()
        with self._errors("remove container", engine_id):
            try:
                await docker.containers.container(engine_id).delete(force=force, v=True)
            except aiodocker.DockerError as exc:
                if exc.status == 409 and "running container" in exc.message:
                    raise ContainerRunning(engine_id) from exc
                if exc.status == 409 and "already in progress" in exc.message:
                    # Another request is removing it; the result is the same.
                    logger.debug("removal of %s is already in progress", engine_id)
                    return
                raise

    async def pause(self, engine_id: str) -> None:
        docker = self._client()
        with self._errors("pause container", engine_id):
            try:
                await docker.containers.container(engine_id).pause()
            except aiodocker.DockerError as exc:
                # The engine answers 409 "... is not running" or "... is already paused".
                if exc.status == 409 and "already paused" in exc.message:
                    raise ContainerNotRunning(engine_id, status="paused") from exc
                raise

    async def unpause(self, engine_id: str) -> None:
        docker = self._client()
        with self._errors("unpause container", engine_id):
            try:
                await docker.containers.container(engine_id).unpause()
            except aiodocker.DockerError as exc:
                # The engine answers 500 "... is not paused" for a running or stopped container.
                if "not paused" in exc.message:
                    raise ContainerNotPaused(engine_id) from exc
                raise

    # --- state --------------------------------------------------------------------------------

    async def inspect(self, engine_id: str) -> ContainerState:
        docker = self._client()
        with self._errors("inspect container", engine_id):
            container = await docker._query_json(f"containers/{engine_id}/json")
        return state_from_inspect(container)

    # The method `list` hides the built-in inside this class, hence `builtins.list` in annotations.
    async def list(self, labels: dict[str, str]) -> builtins.list[ContainerState]:
        docker = self._client()
        filters = {"label": [f"{key}={value}" for key, value in sorted(labels.items())]}
        with self._errors("list containers"):
            entries = await docker._query_json("containers/json", params={"all": True, "filters": json.dumps(filters)})
        return [state_from_list_entry(entry) for entry in entries]

    async def events(self, labels: dict[str, str], since_ns: int | None = None) -> AsyncIterator[RuntimeEvent]:
        docker = self._client()
        async with aclosing(stream_events(docker, self.url, labels, since_ns, timeout=self.timeout)) as events:
            async for event in events:
                yield event

    async def stats(self, engine_id: str) -> StatsSample:
        docker = self._client()
        with self._errors("read stats of container", engine_id):
            # one-shot (API 1.41 and later) skips the engine's second reading, so this returns at once.
            raw = await docker._query_json(
                f"containers/{engine_id}/stats", params={"stream": False, "one-shot": True}
            )
        # For a container being removed, the engine returns an empty body ("null").
        if not isinstance(raw, dict) or not is_running_sample(raw):
            raise ContainerNotRunning(engine_id)
        return parse_stats(raw)

    # --- processes and output -----------------------------------------------------------------

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
        docker = self._client()
        with self._errors("exec in container", engine_id):
            return await run_exec(
                docker,
                engine_id,
                command,
                env=env,
                workdir=workdir,
                user=user,
                timeout=timeout,
                max_output=max_output,
            )

    async def exec_stream(
        self,
        engine_id: str,
        command: builtins.list[str],
        *,
        env: dict[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[LogChunk | ExecExit]:
        docker = self._client()
        with self._errors("exec in container", engine_id):
            # aclosing: a consumer that stops early must kill the command now, not when the
            # inner generator is collected.
            items = stream_exec(docker, engine_id, command, env=env, workdir=workdir, user=user, timeout=timeout)
            async with aclosing(items):
                async for item in items:
                    yield item

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
    ) -> DockerExecSession:
        docker = self._client()
        with self._errors("exec in container", engine_id):
            session = await open_session(
                docker, engine_id, command, tty=tty, env=env, workdir=workdir, user=user, cols=cols, rows=rows
            )
        return _TranslatedSession(session, self)

    # --- files --------------------------------------------------------------------------------

    async def stat_path(self, engine_id: str, path: str) -> PathStat:
        docker = self._client()
        with self._errors(f"read {path!r} in container", engine_id):
            return await stat_path(docker, engine_id, path, timeout=self.timeout)

    async def read_archive(self, engine_id: str, path: str) -> AsyncIterator[bytes]:
        docker = self._client()
        with self._errors(f"copy {path!r} from container", engine_id):
            async with aclosing(read_archive(docker, engine_id, path, timeout=self.timeout)) as chunks:
                async for chunk in chunks:
                    yield chunk

    async def write_archive(self, engine_id: str, path: str, archive: AsyncIterable[bytes]) -> None:
        docker = self._client()
        with self._errors(f"copy to {path!r} in container", engine_id):
            await write_archive(docker, engine_id, path, archive, timeout=self.timeout)

    async def logs(self, engine_id: str, options: LogOptions) -> AsyncIterator[LogChunk]:
        docker = self._client()
        with self._errors("read logs of container", engine_id):
            async with aclosing(read_logs(docker, engine_id, options, timeout=self.timeout)) as chunks:
                async for chunk in chunks:
                    yield chunk

    # --- helpers ------------------------------------------------------------------------------

    def _client(self) -> aiodocker.Docker:
        if self._docker is None:
            try:
                self._docker = open_client(self.url, self.timeout)
            except ValueError as exc:
                raise unavailable(self.url, exc) from exc
        return self._docker

    def _errors(
        self, operation: str, engine_id: str | None = None, timeout: float | None = None
    ) -> AbstractContextManager[None]:
        return translate_errors(
            operation,
            endpoint=self.url,
            timeout=self.timeout if timeout is None else timeout,
            engine_id=engine_id,
        )

    async def _create_container(self, spec: ContainerSpec, body: dict[str, Any]) -> str:
        """Send the create request; raise ImageNotFound, NameInUse or a translated engine error.

        When the response is lost (timeout, broken connection, cancellation) the engine may have
        created the container anyway, so it is looked up by name and removed.
        """
        docker = self._client()
        with self._errors(f"create container {spec.name!r}"):
            try:
                created = await docker._query_json(
                    "containers/create", "POST", params={"name": spec.name}, data=body
                )
            except aiodocker.DockerError as exc:
                if exc.status == 404 and "no such image" in exc.message.lower():
                    raise ImageNotFound(spec.image, _missing_image_detail(spec, exc.message)) from exc
                if exc.status == 409:
                    raise NameInUse(spec.name) from exc
                raise
            except (asyncio.TimeoutError, aiohttp.ClientConnectionError, asyncio.CancelledError):
                await self._remove_lost_container(spec)
                raise

        for warning in created.get("Warnings") or []:
            logger.warning("engine warning creating container %s: %s", spec.name, warning)
        logger.info("created container %s (%s) from %s", spec.name, created["Id"][:12], spec.image)
        return str(created["Id"])

    async def _remove_lost_container(self, spec: ContainerSpec) -> None:
        """Remove the container named `spec.name` if it carries exactly `spec.labels`.

        The label check keeps an older container that already had the name from being removed.
        """
        docker = self._client()
        try:
            container = await docker._query_json(f"containers/{spec.name}/json")
            if (container.get("Config") or {}).get("Labels") != spec.labels:
                return
            await docker.containers.container(container["Id"]).delete(force=True, v=True)
            logger.warning("removed container %s, created while its create request failed", spec.name)
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                logger.error("cannot remove container %s after its create request failed: %s", spec.name, exc)
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
            logger.error("cannot remove container %s after its create request failed: %r", spec.name, exc)

    async def _stop_or_restart(self, action: str, engine_id: str, timeout: float | None) -> None:
        """Stop or restart within the grace period, with the HTTP deadline extended by that period.

        Without `timeout` the engine uses the container's StopTimeout, which containers created
        here set to `stop_timeout`.
        """
        params = {} if timeout is None else {"t": math.ceil(timeout)}
        grace = self.stop_timeout if timeout is None else timeout
        deadline = grace + self.timeout

        docker = self._client()
        with self._errors(f"{action} container", engine_id, timeout=deadline):
            async with raw_response(
                docker,
                f"containers/{engine_id}/{action}",
                "POST",
                params=params,
                timeout=aiohttp.ClientTimeout(total=deadline),
            ) as response:
                status = response.status

        # 304 Not Modified: the container was already stopped.
        if status == 304:
            raise ContainerNotRunning(engine_id)


class _TranslatedSession:
    """A DockerExecSession whose engine errors reach the caller as CoreBase errors."""

    def __init__(self, session: DockerExecSession, runtime: DockerRuntime) -> None:
        self._session = session
        self._runtime = runtime
        self.tty = session.tty

    async def read(self) -> LogChunk | None:
        with self._errors("read exec output of container"):
            return await self._session.read()

    async def write(self, data: bytes) -> None:
        with self._errors("write exec input in container"):
            await self._session.write(data)

    async def close_stdin(self) -> None:
        with self._errors("close exec input in container"):
            await self._session.close_stdin()

    async def resize(self, cols: int, rows: int) -> None:
        with self._errors("resize exec terminal in container"):
            await self._session.resize(cols, rows)

    async def signal(self, name: str) -> None:
        with self._errors(f"send {name} to exec in container"):
            await self._session.signal(name)

    async def exit_code(self) -> int | None:
        with self._errors("read exec exit code in container"):
            return await self._session.exit_code()

    async def close(self) -> None:
        await self._session.close()

    def _errors(self, operation: str) -> AbstractContextManager[None]:
        return self._runtime._errors(operation, self._session.engine_id)


def _missing_image_detail(spec: ContainerSpec, message: str) -> str:
    if spec.pull_policy == "never":
        return (
            f"image {spec.image!r} is not on the engine ({message}) and the pull policy is \"never\"; "
            "build or pull it first, or use pull policy \"missing\""
        )
    return f"image {spec.image!r} is not on the engine: {message}"
