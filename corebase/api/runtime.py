"""/api/runtime: start, stop, restart, pause, resume, remove, list, inspect, exec, logs and stats of containers."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from litestar import Controller, MediaType, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.response import Stream
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from corebase.api.idempotency import REPLAY_HEADER_SPEC, IdempotencyKeyHeader, start_response
from corebase.api.logs import TAIL_PATTERN, TIME_PATTERN, check_window, parse_log_time, parse_tail
from corebase.api.openapi import ENGINE_STATUSES, problem_responses
from corebase.api.records import container_record, stats_record, stored_stats_record
from corebase.api.schemas import (
    ContainerPage,
    ContainerRecord,
    ContainerRequest,
    ExecRecord,
    ExecRequest,
    Offset,
    RemoveRequest,
    StartRequest,
    StatsHistory,
    StatsRecord,
    StatsTotals,
    StopRequest,
)
from corebase.api.streams import NDJSON, ndjson_exec, ndjson_output, raw_output
from corebase.auth.caller import Caller
from corebase.containers.service import ContainerService
from corebase.containers.spec import check_env, check_user, check_workdir
from corebase.errors import ContainerNotRunning, ContainerPaused, InvalidField
from corebase.idempotency import IdempotencyService
from corebase.metrics import queries
from corebase.metrics.queries import STEP_PATTERN
from corebase.metrics.service import MonitorService
from corebase.runtime.types import LogOptions

CallerDependency = NamedDependency[Caller]
ContainerServiceDependency = NamedDependency[ContainerService]
MonitorDependency = NamedDependency[MonitorService]
IdempotencyDependency = NamedDependency[IdempotencyService]
ContainerIdQuery = Annotated[str, QueryParameter(name="containerId", description="CoreBase container id or name")]
# Problem statuses of the handlers that act on one container: missing, in the wrong state, or an engine failure.
CONTAINER_PROBLEMS = problem_responses(404, 409, *ENGINE_STATUSES)


class RuntimeController(Controller):
    path = "/api/runtime"
    tags = ["runtime"]

    @post(
        "/start",
        status_code=HTTP_201_CREATED,
        summary="Create and start a container",
        description="With an Idempotency-Key header, a retry of the same request returns the first response, "
        "marked Idempotent-Replayed: true, instead of starting another container. The same key with another body "
        "is a 422, and a retry while the first request runs a 409. Only a 201 is stored: after an error the key "
        "is free again. Keys belong to their user and are kept for idempotency.key_ttl seconds.",
        responses=problem_responses(404, 409, 422, *ENGINE_STATUSES),
        response_headers=[REPLAY_HEADER_SPEC],
    )
    async def start(
        self,
        request: Request,
        data: JSONBody[StartRequest],
        caller: CallerDependency,
        containers: ContainerServiceDependency,
        idempotency: IdempotencyDependency,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Response[ContainerRecord]:
        return await start_response(request, data, caller, containers, idempotency, idempotency_key)

    @post(
        "/stop",
        status_code=HTTP_200_OK,
        summary="Stop a container, killing it after the grace period",
        responses=CONTAINER_PROBLEMS,
    )
    async def stop(self, data: JSONBody[StopRequest], caller: CallerDependency, containers: ContainerServiceDependency) -> ContainerRecord:
        return container_record(await containers.stop(caller, data.container_id, data.timeout))

    @post("/restart", status_code=HTTP_200_OK, summary="Restart a container", responses=CONTAINER_PROBLEMS)
    async def restart(self, data: JSONBody[StopRequest], caller: CallerDependency, containers: ContainerServiceDependency) -> ContainerRecord:
        return container_record(await containers.restart(caller, data.container_id, data.timeout))

    @post(
        "/pause",
        status_code=HTTP_200_OK,
        summary="Pause a running container",
        description="Freezes every process of the container; its status becomes paused. Exec and live stats answer "
        "409 until it is resumed. Pausing a paused container changes nothing.",
        responses=CONTAINER_PROBLEMS,
    )
    async def pause(self, data: JSONBody[ContainerRequest], caller: CallerDependency, containers: ContainerServiceDependency) -> ContainerRecord:
        return container_record(await containers.pause(caller, data.container_id))

    @post(
        "/resume",
        status_code=HTTP_200_OK,
        summary="Resume a paused container",
        description="Lets the container's processes run again. Resuming a running container changes nothing; a "
        "stopped one is a 409.",
        responses=CONTAINER_PROBLEMS,
    )
    async def resume(self, data: JSONBody[ContainerRequest], caller: CallerDependency, containers: ContainerServiceDependency) -> ContainerRecord:
        return container_record(await containers.resume(caller, data.container_id))

    @post("/remove", status_code=HTTP_200_OK, summary="Remove a container", responses=CONTAINER_PROBLEMS)
    async def remove(self, data: JSONBody[RemoveRequest], caller: CallerDependency, containers: ContainerServiceDependency) -> ContainerRecord:
        return container_record(await containers.remove(caller, data.container_id, data.force))

    @get("/containers", summary="List containers", responses=problem_responses(*ENGINE_STATUSES))
    async def list_containers(
        self,
        caller: CallerDependency,
        containers: ContainerServiceDependency,
        project_id: Annotated[str | None, QueryParameter(name="projectId")] = None,
        status: Annotated[
            Literal["creating", "created", "running", "paused", "restarting", "exited", "dead", "failed", "removed"]
            | None,
            QueryParameter(description="Only this status; without it, every status but failed and removed"),
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        offset: Offset = 0,
    ) -> ContainerPage:
        rows, total = await containers.list(caller, project_id=project_id, status=status, limit=limit, offset=offset)
        return ContainerPage(items=[container_record(row) for row in rows], total=total, limit=limit, offset=offset)

    @get("/containers/{container_id:str}", summary="Inspect one container", responses=CONTAINER_PROBLEMS)
    async def get_container(self, container_id: FromPath[str], caller: CallerDependency, containers: ContainerServiceDependency) -> ContainerRecord:
        return container_record(await containers.get(caller, container_id))

    @post(
        "/exec",
        status_code=HTTP_200_OK,
        summary="Run a command in a running container",
        responses=problem_responses(404, 409, 422, *ENGINE_STATUSES),
    )
    async def exec(self, data: JSONBody[ExecRequest], caller: CallerDependency, containers: ContainerServiceDependency) -> ExecRecord:
        _check_exec(data)
        result, duration_ms = await containers.exec(caller, data)
        return ExecRecord(
            exit_code=result.exit_code,
            stdout=result.stdout,
            stderr=result.stderr,
            truncated=result.truncated,
            timed_out=result.timed_out,
            duration_ms=round(duration_ms, 3),
        )

    @post(
        "/exec/stream",
        status_code=HTTP_200_OK,
        summary="Run a command in a running container and stream its output",
        description="The same request as POST /exec. The response is NDJSON, sent as the command writes: one "
        '{"stream", "text"} object per piece of output, then one {"exitCode", "timedOut", "durationMs", "error"} '
        "object. exec.max_output does not apply, because the server keeps none of the output; the timeout does, "
        "and it counts the time a slow client takes to read.",
        responses=problem_responses(404, 409, 422, *ENGINE_STATUSES),
    )
    async def exec_stream(
        self, data: JSONBody[ExecRequest], caller: CallerDependency, containers: ContainerServiceDependency
    ) -> Stream:
        _check_exec(data)
        started = time.perf_counter()
        items = await containers.exec_stream(caller, data)
        return Stream(ndjson_exec(items, started), media_type=NDJSON)

    @get(
        "/logs",
        summary="Read or follow a container's logs",
        description="Plain text by default, exactly as the container wrote it; format=ndjson gives one JSON "
        "object per chunk with its stream. With follow=true the response streams until the container exits.",
        responses=problem_responses(404, 409, 422, *ENGINE_STATUSES),
    )
    async def logs(
        self,
        caller: CallerDependency,
        containers: ContainerServiceDependency,
        container_id: ContainerIdQuery,
        tail: Annotated[
            str | None, QueryParameter(description="Number of lines from the end, or 'all'", pattern=TAIL_PATTERN)
        ] = None,
        since: Annotated[str | None, QueryParameter(description="RFC 3339 time or Unix seconds", pattern=TIME_PATTERN)] = None,
        until: Annotated[str | None, QueryParameter(description="RFC 3339 time or Unix seconds", pattern=TIME_PATTERN)] = None,
        timestamps: FromQuery[bool] = False,
        stdout: FromQuery[bool] = True,
        stderr: FromQuery[bool] = True,
        follow: FromQuery[bool] = False,
        format: FromQuery[Literal["text", "ndjson"]] = "text",
    ) -> Stream:
        if not stdout and not stderr:
            raise InvalidField("stdout", "stdout and stderr are both false; select at least one stream")
        options = LogOptions(
            stdout=stdout,
            stderr=stderr,
            follow=follow,
            tail=parse_tail(tail),
            since=parse_log_time("since", since),
            until=parse_log_time("until", until),
            timestamps=timestamps,
        )
        check_window(options.since, options.until)
        chunks = await containers.logs(caller, container_id, options)
        if format == "ndjson":
            return Stream(ndjson_output(chunks), media_type=NDJSON)
        return Stream(raw_output(chunks), media_type=MediaType.TEXT)

    @get(
        "/stats",
        summary="Read a container's resource usage now, or its history",
        description="Without from, to or step: the collector's latest sample when it is fresh, else a live "
        "reading (the container must be running). With any of them: the stored history in steps of step "
        "seconds, for running, stopped and removed containers alike.",
        responses=problem_responses(404, 409, 422, *ENGINE_STATUSES),
    )
    async def stats(
        self,
        caller: CallerDependency,
        containers: ContainerServiceDependency,
        monitor: MonitorDependency,
        container_id: ContainerIdQuery,
        start: Annotated[
            str | None,
            QueryParameter(
                name="from", description="RFC 3339 time or Unix seconds; default one hour before to", pattern=TIME_PATTERN
            ),
        ] = None,
        end: Annotated[
            str | None, QueryParameter(name="to", description="RFC 3339 time or Unix seconds; default now", pattern=TIME_PATTERN)
        ] = None,
        step: Annotated[
            str | None, QueryParameter(description="Whole seconds per point, 1 to 2678400", pattern=STEP_PATTERN)
        ] = None,
    ) -> StatsRecord | StatsHistory:
        if start is not None or end is not None or step is not None:
            row = await containers.find(caller, container_id, include_removed=True)
            return await queries.history(monitor.store, row.id, start, end, step)

        row = await containers.find(caller, container_id)
        if row.status == "running":
            stored = await monitor.store.latest(row.id)
            # A container's first sample has no CPU percent, because that needs the reading before it.
            fresh = stored is not None and time.time() - stored.epoch <= monitor.fresh_for
            if fresh and stored.cpu_percent is not None:
                return stored_stats_record(stored)
        try:
            row, sample, percent = await containers.stats(caller, container_id)
        except ContainerPaused:
            raise
        except ContainerNotRunning as exc:
            status = exc.extra.get("containerStatus")
            raise ContainerNotRunning(
                row.id,
                status,
                f"container {row.id!r} is not running (status {status}), so it has no current usage; "
                f"read its stored history with from, to and step, or start it first",
            ) from None
        return stats_record(row.id, sample, percent)

    @get("/stats/totals", summary="Add up the latest samples of running containers per project or owner")
    async def stats_totals(
        self,
        caller: CallerDependency,
        monitor: MonitorDependency,
        group_by: Annotated[Literal["project", "owner"], QueryParameter(name="groupBy")] = "project",
    ) -> StatsTotals:
        return await queries.totals(monitor.store, caller, group_by, monitor.fresh_for)


def _check_exec(request: ExecRequest) -> None:
    """Reject the env, workdir and user that POST /start would reject, before the engine reports them as output."""
    check_env(request.env)
    check_workdir(request.workdir)
    check_user(request.user)
