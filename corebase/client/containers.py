"""`client.containers`: start, inspect, run commands in, copy files into and out of, read logs and stats of,
pause and stop containers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import msgspec

from corebase.api.schemas import (
    STAT_HEADER,
    ContainerPage,
    ContainerRecord,
    ExecRecord,
    MountRequest,
    PathStatRecord,
    StatsHistory,
    StatsRecord,
    StatsTotals,
    UploadRecord,
)
from corebase.client._call import Call, body, path, query
from corebase.client._resource import Resource, S, endpoint, paged, stream
from corebase.client._session import AsyncSession
from corebase.client.sessions import AsyncExecSession, ExecSession

Moment = datetime | float | str
"""A time: a datetime with a time zone, Unix seconds, or an RFC 3339 string."""


class LogChunk(msgspec.Struct, frozen=True):
    """Output as the engine delivered it: usually one or more whole lines of one stream."""

    stream: Literal["stdout", "stderr"]
    text: str


class Containers(Resource[S]):
    @endpoint
    def start(
        self,
        image: str | None = None,
        *,
        template: str | None = None,
        name: str | None = None,
        project_id: str | None = None,
        command: Sequence[str] | None = None,
        entrypoint: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        ports: Mapping[str | int, int | None] | None = None,
        memory: int | str | None = None,
        cpus: float | None = None,
        labels: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        tty: bool | None = None,
        mounts: Sequence[MountRequest | Mapping[str, Any]] | None = None,
        volumes: Sequence[str] | None = None,
        isolation: Literal["standard", "sandboxed"] | None = None,
        network: Literal["owner", "none"] | None = None,
        ttl: float | str | None = None,
        idle_timeout: float | str | None = None,
        auto_remove: bool | None = None,
        idempotency_key: str | None = None,
    ) -> Call[ContainerRecord]:
        """Create and start a container from an image or a template, and return its record.

        `ports` maps a container port ("3000" or "3000/udp") to a host port, or to None for any
        free one. `memory` is bytes or a string such as "512m". A template's database password
        is in the record's `credentials`, in this response only. With `idempotency_key`, a
        retried request names the same operation, so a server that supports the
        Idempotency-Key header starts the container once. `ttl` (remove after) and
        `idle_timeout` (stop after no activity) are seconds or strings such as "1h"; with
        `auto_remove`, the container is removed once it exits.
        """
        fields = body(
            image=image,
            template=template,
            name=name,
            project_id=project_id,
            command=_list(command),
            entrypoint=_list(entrypoint),
            env=_dict(env),
            ports={str(port): host for port, host in ports.items()} if ports is not None else None,
            memory=memory,
            cpus=cpus,
            labels=_dict(labels),
            workdir=workdir,
            user=user,
            tty=tty,
            mounts=_mounts(mounts),
            volumes=_list(volumes),
            isolation=isolation,
            network=network,
            ttl=ttl,
            idle_timeout=idle_timeout,
            auto_remove=auto_remove,
        )
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        # A start may pull the image, which the server bounds with docker.pull_timeout.
        return Call("POST", "/api/runtime/start", ContainerRecord, body=fields, headers=headers, wait=None)

    @endpoint
    def get(self, container_id: str) -> Call[ContainerRecord]:
        """Read a container's record, by id or name, with its state refreshed from the engine."""
        return Call("GET", path("/api/runtime/containers", container_id), ContainerRecord)

    @endpoint
    def stop(self, container_id: str, *, timeout: float | None = None) -> Call[ContainerRecord]:
        """Stop a container: SIGTERM, then SIGKILL after `timeout` seconds (the server's default when None)."""
        fields = body(container_id=container_id, timeout=timeout)
        return Call("POST", "/api/runtime/stop", ContainerRecord, body=fields, wait=timeout or 0.0)

    @endpoint
    def restart(self, container_id: str, *, timeout: float | None = None) -> Call[ContainerRecord]:
        """Restart a container, running or not; `timeout` is the stop's grace period in seconds."""
        fields = body(container_id=container_id, timeout=timeout)
        return Call("POST", "/api/runtime/restart", ContainerRecord, body=fields, wait=timeout or 0.0)

    @endpoint
    def pause(self, container_id: str) -> Call[ContainerRecord]:
        """Freeze a running container's processes; exec and live stats answer 409 until `resume`."""
        return Call("POST", "/api/runtime/pause", ContainerRecord, body=body(container_id=container_id))

    @endpoint
    def resume(self, container_id: str) -> Call[ContainerRecord]:
        """Let a paused container's processes run again."""
        return Call("POST", "/api/runtime/resume", ContainerRecord, body=body(container_id=container_id))

    @endpoint
    def remove(self, container_id: str, *, force: bool = False) -> Call[ContainerRecord]:
        """Remove a container; `force` removes a running one."""
        return Call("POST", "/api/runtime/remove", ContainerRecord, body=body(container_id=container_id, force=force))

    @endpoint
    def exec(
        self,
        container_id: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
    ) -> Call[ExecRecord]:
        """Run a command (an argv list, not a shell line) to completion, and return its exit code and output.

        `timeout` is in seconds; without it the server's exec.default_timeout applies. A command
        that runs past it comes back with `timed_out` true and no exit code.
        """
        fields = body(container_id=container_id, command=list(command), env=_dict(env), workdir=workdir, user=user, timeout=timeout)
        return Call("POST", "/api/runtime/exec", ExecRecord, body=fields, wait=timeout)

    def session(
        self,
        container_id: str,
        command: Sequence[str],
        *,
        tty: bool = False,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        cols: int | None = None,
        rows: int | None = None,
    ) -> ExecSession | AsyncExecSession:
        """Prepare an interactive exec session; it connects when its `with` (or `async with`) block starts.

        `Client` returns an ExecSession, `AsyncClient` an AsyncExecSession. With `tty`, the command
        gets a terminal of `cols` by `rows` characters. See `corebase.client.sessions`.
        """
        fields = body(command=list(command), tty=tty, env=_dict(env), workdir=workdir, user=user, cols=cols, rows=rows)
        start = {"type": "start", **fields}
        http = self._session.http
        base = http.base_url
        url = base.copy_with(
            scheme="wss" if base.scheme == "https" else "ws",
            path=base.path.rstrip("/") + "/api/runtime/exec/ws",
            params={"containerId": container_id},
        )
        headers = {name: value for name, value in http.headers.items() if name.lower() in ("authorization", "user-agent")}
        session_class = AsyncExecSession if isinstance(self._session, AsyncSession) else ExecSession
        return session_class(str(url), headers, start)

    @endpoint
    def upload(self, container_id: str, path: str, source: bytes | Path, *, archive: bool = False) -> Call[UploadRecord]:
        """Copy `source` (bytes, or a local file's Path) into the container.

        Without `archive`, it becomes the file `path`. With `archive`, it is a tar archive that the
        server extracts into the existing directory `path`. The server limits uploads to its
        files.max_upload setting and raises TooLarge above it.
        """
        return Call(
            "PUT",
            path_of_files(container_id),
            UploadRecord,
            params={"path": path},
            content=source,
            content_type="application/x-tar" if archive else "application/octet-stream",
            wait=None,
        )

    @stream
    def download(self, container_id: str, path: str) -> Call[bytes]:
        """Iterate over the bytes of a tar archive of `path`, a file or a directory, as the server sends them."""
        return Call("GET", path_of_files(container_id), bytes, params={"path": path}, wait=None)

    @endpoint
    def stat(self, container_id: str, path: str) -> Call[PathStatRecord]:
        """Describe `path` in the container (type, size, mode, modification time) without copying it."""
        return Call("GET", path_of_files(container_id), PathStatRecord, params={"path": path}, from_header=STAT_HEADER)

    @stream
    def logs(
        self,
        container_id: str,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: Moment | None = None,
        until: Moment | None = None,
        timestamps: bool = False,
        stdout: bool = True,
        stderr: bool = True,
    ) -> Call[LogChunk]:
        """Iterate over a container's output; with `follow`, keep waiting for more until the container exits.

        `tail` keeps that many lines from the end. With `timestamps`, each line starts with the
        engine's RFC 3339 time.
        """
        params = query(
            container_id=container_id,
            follow=follow,
            tail=tail,
            since=since,
            until=until,
            timestamps=timestamps,
            stdout=stdout,
            stderr=stderr,
            format="ndjson",
        )
        return Call("GET", "/api/runtime/logs", LogChunk, params=params, wait=None if follow else 0.0)

    @endpoint
    def stats(self, container_id: str) -> Call[StatsRecord]:
        """Read a running container's current CPU, memory, network, block I/O and process figures."""
        return Call("GET", "/api/runtime/stats", StatsRecord, params=query(container_id=container_id))

    @endpoint
    def stats_history(
        self,
        container_id: str,
        *,
        start: Moment | None = None,
        end: Moment | None = None,
        step: int | None = None,
    ) -> Call[StatsHistory]:
        """Read the stored samples of a container, running or not, as points `step` seconds apart.

        Without `start`, the range is the hour before `end`, and `end` defaults to now. Without
        `step`, the server picks one that gives a readable number of points.
        """
        if start is None and end is None:
            # The server reads the current figures when a request names no range, so name one.
            start = datetime.now(timezone.utc) - timedelta(hours=1)
        # "from" and "to" are Python keywords, so the arguments are named start and end.
        params = {**query(container_id=container_id, step=step), **query(**{"from": start, "to": end})}
        return Call("GET", "/api/runtime/stats", StatsHistory, params=params)

    @endpoint
    def stats_totals(self, *, group_by: Literal["project", "owner"] = "project") -> Call[StatsTotals]:
        """Add up the newest samples of the caller's running containers per project or per owner."""
        return Call("GET", "/api/runtime/stats/totals", StatsTotals, params=query(group_by=group_by))

    @endpoint
    def list(
        self, *, project_id: str | None = None, status: str | None = None, limit: int = 50, offset: int = 0
    ) -> Call[ContainerPage]:
        """Read one page of containers, newest first; without `status`, failed and removed ones are left out."""
        params = query(project_id=project_id, status=status, limit=limit, offset=offset)
        return Call("GET", "/api/runtime/containers", ContainerPage, params=params)

    iterate = paged(list, ContainerRecord)


def path_of_files(container_id: str) -> str:
    return path("/api/runtime/containers", container_id) + "/files"


def _list(values: Sequence[str] | None) -> list[str] | None:
    return list(values) if values is not None else None


def _mounts(mounts: Sequence[MountRequest | Mapping[str, Any]] | None) -> list[Any] | None:
    if not mounts:
        return None
    return [dict(mount) if isinstance(mount, Mapping) else mount for mount in mounts]


def _dict(values: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return dict(values) if values is not None else None
