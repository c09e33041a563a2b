"""The container service: every container operation the API offers, as validate, act, record.

The database row records what CoreBase intends, and the engine reports what exists. Reads refresh a row
from the engine so a container that ended on its own reports its exit code. Failed starts leave
nothing behind: the engine object is removed, and the row is deleted when the engine never held
the container or the request was at fault. Only a container that the engine created and then
failed to run for a server-side reason keeps its row, as `failed` with the reason, so an operator
can see what went wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from piccolo.engine.sqlite import SQLiteEngine, TransactionType

from corebase.api.schemas import ExecRequest, StartRequest
from corebase.auth.caller import Caller
from corebase.containers.activity import ActivityRecorder
from corebase.containers.files import check_path, single_file_archive, split_file_path
from corebase.containers.networks import POOL_OWNER, network_isolated, network_labels, owner_network
from corebase.containers.spec import LABEL_OWNER, build_spec, check_env, check_workdir
from corebase.containers.tables import ACTIVE_STATUSES, Container, row_values
from corebase.containers.timers import TIMER_COLUMNS, Timers, apply_timers, resolve_timers, start_clock
from corebase.quotas.service import QuotaService
from corebase.errors import (
    ApiError,
    ContainerNotFound,
    ContainerNotPaused,
    ContainerNotRunning,
    ContainerPaused,
    ContainerRunning,
    EngineTimeout,
    EngineUnavailable,
    InvalidField,
    NameInUse,
    PathNotFound,
    PathReadOnly,
    UploadTooLarge,
)
from corebase.runtime.cpu import cpu_percent
from corebase.runtime.protocol import ContainerRuntime, ExecSession
from corebase.runtime.types import (
    ContainerSpec,
    ContainerState,
    ExecExit,
    ExecResult,
    LogChunk,
    LogOptions,
    PathStat,
    StatsSample,
)
from corebase.security import Policy, PolicyRequest
from corebase.security.policy import Verdict, dry_run_policies, enforce_policies
from corebase.settings import Settings
from corebase.sizes import parse_size
from corebase.templates import TemplateSpec
from corebase.templates.catalog import TemplateCatalog

if TYPE_CHECKING:
    from corebase.pool.service import PoolService

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Statuses in which the engine may still hold the container, so reads ask the engine.
LIVE_STATUSES = ("created", "running", "paused", "restarting")
# Seconds a read waits for the engine's current state before it returns the stored row, so reads
# keep working while a hung engine is not yet known to be down.
REFRESH_WAIT = 3.0
# A kept stats sample older than this is not used for the CPU delta.
STATS_SAMPLE_MAX_AGE = 60.0
STATS_CACHE_SIZE = 10_000
# Seconds to wait for the first output of a log or exec stream before sending the response headers.
FIRST_OUTPUT_WAIT = 0.25


def new_container_id() -> str:
    return "ctr_" + secrets.token_hex(8)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Started(NamedTuple):
    """A started container and the secrets generated for it, which are returned to the caller once."""

    row: Container
    credentials: dict[str, str]


def generate_credentials(template: TemplateSpec | None) -> dict[str, str]:
    """Return a fresh random secret for each of the template's generated environment variables."""
    if template is None:
        return {}
    return {name: secrets.token_urlsafe(24) for name in template.generated_env}


class ContainerService:
    def __init__(
        self,
        settings: Settings,
        runtime: ContainerRuntime,
        policies: list[Policy],
        templates: TemplateCatalog,
        engine_cpus: int | None = None,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.policies = policies
        self.templates = templates
        self.engine_cpus = engine_cpus
        # Set by the app when pools are enabled; PoolService needs this service, so it comes later.
        self.pool: PoolService | None = None
        # Set by the app from the database: the installation id every new container is labelled with.
        self.installation_id: str | None = None
        self.quotas = QuotaService(settings.quotas)
        self.activity = ActivityRecorder(settings.lifecycle.activity_interval)
        self._samples: OrderedDict[str, tuple[float, StatsSample]] = OrderedDict()
        # OCI runtimes the engine was last seen to have, such as {"runc", "runsc"}.
        self._engine_runtimes: set[str] = set()
        # Claimed pool members leaving the pool network after their claim's response.
        self._leaving: set[asyncio.Task] = set()

    # --- start -------------------------------------------------------------------------------

    async def start(self, caller: Caller, request: StartRequest, *, idempotency_key: str | None = None) -> Started:
        """Start a container: claim one from the template's pool when it can, else create one.

        On any failure of a cold start, whatever was made is removed and the error re-raised.
        `idempotency_key` (the id of the request's idempotency_keys row) is written with the row,
        together with the generated credentials, so that `find_keyed` finds the container even when
        this process dies before the response is stored.
        """
        template = await self.templates.get_visible(caller, request.template) if request.template is not None else None
        container_id = new_container_id()
        # A value the request sets itself replaces the generated one, and the caller knows it already.
        credentials = {
            name: value for name, value in generate_credentials(template).items() if name not in request.env
        }
        spec = build_spec(
            request,
            self.settings,
            container_id=container_id,
            owner=caller.user,
            engine_cpus=self.engine_cpus,
            template=template,
            credentials=credentials,
            installation=self.installation_id,
        )
        timers = resolve_timers(
            self.settings.lifecycle,
            template,
            ttl=request.ttl,
            idle_timeout=request.idle_timeout,
            auto_remove=request.auto_remove,
        )
        # Pool members are built for no one, so the caller's own spec is checked before a claim too.
        await self.check_spec(caller, spec, request.template)

        missed_pool = None
        if template is not None and self.pool is not None and self.pool.can_serve(request):
            claimed = await self.pool.claim(caller, request, template, idempotency_key=idempotency_key)
            if claimed is not None:
                await _start_timers_of_claim(claimed.row, timers)
                return claimed
            missed_pool = template.name

        row = await self.insert_creating(
            container_id,
            spec,
            caller,
            project_id=request.project_id,
            labels=request.labels,
            template=template,
            source="cold",
            credentials=credentials,
            missed_pool=missed_pool,
            timers=timers,
            idempotency_key=idempotency_key,
        )
        await self.launch(row, spec)
        logger.info("started container %s image=%s owner=%s source=cold", row.id, spec.image, caller.user)
        return Started(row, credentials)

    async def check_spec(self, caller: Caller, spec: ContainerSpec, template: str | None) -> None:
        """Enforce the policies that apply to the caller's role, then check the engine can run the spec.

        Raises PolicyDenied with every reason, or InvalidField (422) for an isolation level the engine lacks.
        """
        exempt = self.settings.security.for_role(caller.role).exempt_policies
        await enforce_policies(self.policies, PolicyRequest(spec=spec, caller=caller, template=template), exempt)
        await self._check_engine_runtime(spec)

    async def evaluate(self, caller: Caller, request: StartRequest) -> list[Verdict]:
        """Build the spec `request` would start and return every policy's verdict; nothing is created."""
        template = await self.templates.get_visible(caller, request.template) if request.template is not None else None
        spec = build_spec(
            request,
            self.settings,
            container_id=new_container_id(),
            owner=caller.user,
            engine_cpus=self.engine_cpus,
            template=template,
            credentials=generate_credentials(template),
            installation=self.installation_id,
        )
        exempt = self.settings.security.for_role(caller.role).exempt_policies
        return await dry_run_policies(
            self.policies, PolicyRequest(spec=spec, caller=caller, template=request.template), exempt
        )

    async def _check_engine_runtime(self, spec: ContainerSpec) -> None:
        """Raise InvalidField when the spec names an OCI runtime the engine does not have registered.

        The engine's list is read again on every miss, so a runtime registered while CoreBase runs is found.
        """
        if spec.runtime is None or spec.runtime in self._engine_runtimes:
            return
        self._engine_runtimes = set((await self.runtime.info()).runtimes)
        if spec.runtime not in self._engine_runtimes:
            raise InvalidField(
                "isolation",
                f"isolation {spec.isolation!r} needs the engine runtime {spec.runtime!r}, which this engine does not "
                f"have (it has {', '.join(sorted(self._engine_runtimes)) or 'none'}); ask for isolation \"standard\", "
                "or register the runtime with the engine",
            )

    async def _ensure_network(self, spec: ContainerSpec) -> None:
        """Create the owner's network on first use, when the spec joins it; other modes need nothing."""
        owner = spec.labels.get(LABEL_OWNER, "")
        network = owner_network(owner, self.settings)
        if network is not None and spec.network_mode == network:
            await self.runtime.ensure_network(network, network_labels(owner), isolated=network_isolated(owner))

    async def join_owner_network(self, row: Container, owner: str) -> None:
        """Move a claimed pool member from the pool's network to its new owner's network.

        The new network is joined before the old one is left, so a failure leaves the member where it
        was. The isolated pool network is left in the background, because the member reaches no
        other container over it and the disconnect would add an engine call of 40 ms or more. Any
        other network is left before the claim returns, and a failure there makes the claim fail.
        """
        network = owner_network(owner, self.settings)
        if network is None or row.network in (None, network):
            return
        previous = row.network
        await self.runtime.ensure_network(network, network_labels(owner))
        await self.runtime.connect_network(row.docker_id, network)
        if previous == owner_network(POOL_OWNER, self.settings):
            task = asyncio.create_task(self._leave_network(row, previous), name=f"corebase-leave-{row.id}")
            self._leaving.add(task)
            task.add_done_callback(self._leaving.discard)
        else:
            await self.runtime.disconnect_network(row.docker_id, previous)
        row.network = network

    async def _leave_network(self, row: Container, network: str) -> None:
        try:
            await self.runtime.disconnect_network(row.docker_id, network)
        except Exception as exc:
            # NOTE: the member stays on the pool network until it is removed. Its bridge passes no
            # traffic between containers, so it reaches no idle member there.
            logger.warning("claimed container %s could not leave network %s: %s", row.id, network, exc)

    async def launch(self, row: Container, spec: ContainerSpec) -> None:
        """Create and start the engine container for a `creating` row, then store its state.

        While the engine works, the row's `updated_at` is renewed, so the reconciler can tell this
        start from one whose process died. On failure the engine container is removed, the row
        deleted or marked failed, and the error re-raised.
        """
        engine_id = None
        grace = self.settings.reconcile.creating_grace
        try:
            async with _recording_progress(row.id, every=grace / 3):
                await self._ensure_network(spec)
                engine_id = await self.runtime.create(spec)
                row.docker_id = engine_id
                await self.runtime.start(engine_id)
                state = await self.runtime.inspect(engine_id)
        except BaseException as exc:
            await asyncio.shield(self._abandon(row, engine_id, exc))
            raise

        _apply_state(row, state)
        start_clock(row, row.started_at or utcnow())
        if not await _save_if_creating(row):
            # The reconciler took this start as interrupted and marked the row failed, so the
            # container it would have stood for must go too.
            await asyncio.shield(self._remove_quietly(row, engine_id))
            raise EngineTimeout(
                f"the start of container {row.id} made no progress for {grace:g} s (reconcile.creating_grace), "
                "so it was taken as interrupted and its container removed; start it again"
            )

    async def insert_creating(
        self,
        container_id: str,
        spec: ContainerSpec,
        caller: Caller,
        *,
        project_id: str | None = None,
        labels: dict[str, str] | None = None,
        template: TemplateSpec | None = None,
        source: str | None = None,
        pool: str | None = None,
        credentials: dict[str, str] | None = None,
        missed_pool: str | None = None,
        timers: Timers | None = None,
        idempotency_key: str | None = None,
    ) -> Container:
        """Write the `creating` row of a container about to be created, after checking its name is free.

        A pool member passes `pool`, and keeps its generated `credentials` until it is claimed. A
        start with an `idempotency_key` keeps them until its response is stored (see
        `forget_credentials`). A cold start that a pool could have served but had no idle member
        for passes `missed_pool`, so the pool counts it as a miss.
        """
        now = utcnow()
        row = Container(
            id=container_id,
            name=spec.name,
            image=spec.image,
            template=template.name if template else None,
            template_version=template.version if template else None,
            project_id=project_id,
            owner=caller.user,
            status="creating",
            source=source,
            pool=pool or missed_pool,
            pool_state="warming" if pool else None,
            pending_credentials=credentials if pool or idempotency_key else None,
            idempotency_key=idempotency_key,
            command=spec.command,
            labels=dict(labels or {}),
            ports=[],
            tty=spec.tty,
            memory=spec.memory,
            nano_cpus=spec.nano_cpus,
            pids_limit=spec.pids_limit,
            isolation=spec.isolation,
            network=spec.network_mode,
            created_at=now,
            updated_at=now,
        )
        apply_timers(row, timers or Timers())
        # The name check and the insert share one write transaction, so on SQLite two requests for
        # one name cannot both pass. On PostgreSQL the engine's own unique names are the backstop.
        # The quota check runs in it too, so the new row counts for the caller's next start once
        # it commits. Pool members belong to no user until claimed, so their rows are not charged.
        async with _write_transaction():
            if await Container.exists().where(
                (Container.name == spec.name) & Container.status.is_in(list(ACTIVE_STATUSES))
            ):
                raise NameInUse(spec.name)
            if pool is None:
                await self.quotas.reserve(caller, spec.memory, spec.nano_cpus)
            await row.save()
        return row

    async def _abandon(self, row: Container, engine_id: str | None, exc: BaseException) -> None:
        """Undo a start that failed after its row was written."""
        if engine_id is not None:
            await self._remove_quietly(row, engine_id)

        if engine_id is None or (isinstance(exc, ApiError) and exc.status < 500):
            await Container.delete().where(Container.id == row.id)
            return
        row.status = "failed"
        row.error = str(exc) or type(exc).__name__
        row.updated_at = utcnow()
        await row.save()
        logger.warning("start of container %s failed: %s", row.id, row.error)

    async def _remove_quietly(self, row: Container, engine_id: str) -> None:
        """Remove the engine container of a failed start; a failure is logged, because the start's own error matters more."""
        try:
            await self.runtime.remove(engine_id, force=True)
        except ContainerNotFound:
            pass
        except (EngineUnavailable, EngineTimeout) as exc:
            # Expected while the engine is down, so no traceback. The reconciler finds the container later.
            logger.warning(
                "could not remove container %s (engine %s) after a failed start, because the engine cannot be "
                "reached: %s", row.id, engine_id, exc,
            )
        except Exception:
            logger.exception("could not remove container %s (engine %s) after a failed start", row.id, engine_id)

    # --- reads -------------------------------------------------------------------------------

    async def get(self, caller: Caller, reference: str) -> Container:
        row = await self._find(caller, reference, include_removed=True)
        await self._refresh(row)
        return row

    async def list(
        self,
        caller: Caller,
        *,
        project_id: str | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[Container], int]:
        """Return one page of the caller's containers, newest first, and the total matching."""
        condition = _visible_to(caller)
        if project_id is not None:
            condition &= Container.project_id == project_id
        if status is not None:
            condition &= Container.status == status
        else:
            condition &= Container.status.is_in(list(ACTIVE_STATUSES))

        total = await Container.count().where(condition)
        rows = await (
            _select().where(condition).order_by(Container.created_at, ascending=False).limit(limit).offset(offset)
        )
        await self._refresh_many(rows)
        if status is not None:
            rows = [row for row in rows if row.status == status]
        return rows, total

    async def sync(self, container_id: str) -> Container | None:
        """Bring one row up to date with the engine after an engine event; return it, or None when unknown."""
        row = await _select().where(Container.id == container_id).first()
        if row is not None:
            await self._refresh(row)
        return row

    async def _refresh(self, row: Container) -> None:
        """Bring a row up to date with the engine; keep the stored state when the engine is unreachable."""
        if row.status not in LIVE_STATUSES or row.docker_id is None:
            return
        try:
            async with asyncio.timeout(REFRESH_WAIT):
                state = await self.runtime.inspect(row.docker_id)
        except ContainerNotFound:
            await self._mark_gone(row)
            return
        except (EngineUnavailable, EngineTimeout, TimeoutError) as exc:
            logger.warning("could not refresh container %s from the engine: %s", row.id, exc or f"timed out after {REFRESH_WAIT:g} s")
            return
        read_status = row.status
        if _apply_state(row, state):
            await _save_state(row, read_status)

    async def refresh_rows(self, rows: list[Container]) -> None:
        """Bring rows in a live status up to date with one engine list call; an unreachable engine leaves them."""
        await self._refresh_many(rows)

    async def _refresh_many(self, rows: list[Container]) -> None:
        live = [row for row in rows if row.status in LIVE_STATUSES and row.docker_id]
        if not live:
            return
        try:
            async with asyncio.timeout(REFRESH_WAIT):
                listed = await self.runtime.list({"corebase.managed": "true"})
        except (EngineUnavailable, EngineTimeout, TimeoutError) as exc:
            logger.warning("could not refresh the container list from the engine: %s", exc or f"timed out after {REFRESH_WAIT:g} s")
            return
        states = {state.engine_id: state for state in listed}
        for row in live:
            state = states.get(row.docker_id)
            if state is None:
                await self._mark_gone(row)
            elif state.status != row.status:
                # The list lacks exit details (OOM, times), so a changed container is inspected.
                await self._refresh(row)

    async def _mark_gone(self, row: Container) -> None:
        row.status = "removed"
        row.error = "the container was removed outside CoreBase"
        row.removed_at = row.updated_at = utcnow()
        await row.save()
        logger.warning("container %s (engine %s) no longer exists in the engine", row.id, row.docker_id)

    # --- lifecycle ---------------------------------------------------------------------------

    async def stop(self, caller: Caller, reference: str, timeout: float | None) -> Container:
        row = await self._find(caller, reference)
        grace = self.settings.containers.stop_timeout if timeout is None else timeout
        async with self._engine_errors(row):
            await self.runtime.stop(row.docker_id, grace)
        await self._refresh_after_change(row)
        logger.info("stopped container %s exit_code=%s by %s", row.id, row.exit_code, caller.user)
        return row

    async def restart(self, caller: Caller, reference: str, timeout: float | None) -> Container:
        row = await self._find(caller, reference)
        grace = self.settings.containers.stop_timeout if timeout is None else timeout
        async with self._engine_errors(row):
            await self.runtime.restart(row.docker_id, grace)
        await self._refresh_after_change(row)
        await self.activity.touch(row.id)
        logger.info("restarted container %s by %s", row.id, caller.user)
        return row

    async def pause(self, caller: Caller, reference: str) -> Container:
        """Freeze every process of a running container; a paused container stays as it is."""
        row = await self._find(caller, reference)
        try:
            async with self._engine_errors(row):
                await self.runtime.pause(row.docker_id)
        except ContainerNotRunning:
            # _EngineErrors has read the container's state from the engine.
            if row.status != "paused":
                raise
        await self._refresh_after_change(row)
        await self.activity.touch(row.id)
        logger.info("paused container %s by %s", row.id, caller.user)
        return row

    async def resume(self, caller: Caller, reference: str) -> Container:
        """Let a paused container run again; a running container stays as it is."""
        row = await self._find(caller, reference)
        try:
            async with self._engine_errors(row):
                await self.runtime.unpause(row.docker_id)
        except ContainerNotPaused:
            await self._refresh(row)
            if row.status != "running":
                raise ContainerNotRunning(
                    row.id, row.status, f"container {row.id!r} is not paused but {row.status}, so there is nothing to "
                    "resume; start or restart it instead"
                ) from None
        await self._refresh_after_change(row)
        await self.activity.touch(row.id)
        logger.info("resumed container %s by %s", row.id, caller.user)
        return row

    async def remove(self, caller: Caller, reference: str, force: bool) -> Container:
        row = await self._find(caller, reference, include_removed=True)
        if row.status == "removed":
            raise ContainerNotFound(reference, f"container {reference!r} was removed already")
        if row.docker_id is not None and row.status != "failed":
            try:
                async with self._engine_errors(row):
                    await self.runtime.remove(row.docker_id, force=force)
            except ContainerNotFound:
                pass
        row.status = "removed"
        row.removed_at = row.updated_at = utcnow()
        await row.save()
        self._samples.pop(row.id, None)
        self.activity.forget(row.id)
        logger.info("removed container %s by %s", row.id, caller.user)
        return row

    async def _refresh_after_change(self, row: Container) -> None:
        try:
            state = await self.runtime.inspect(row.docker_id)
        except ContainerNotFound:
            await self._mark_gone(row)
            return
        read_status = row.status
        _apply_state(row, state)
        await _save_state(row, read_status)

    # --- exec, logs, stats -------------------------------------------------------------------

    async def exec(self, caller: Caller, request: ExecRequest) -> tuple[ExecResult, float]:
        """Run a command in a running container; return the result and its duration in milliseconds."""
        options = self._exec_options(request)
        row = await self._find(caller, request.container_id)
        _check_not_paused(row, "run commands")

        started = time.perf_counter()
        async with self.activity.session(row.id), self._engine_errors(row):
            result = await self.runtime.exec(
                row.docker_id, request.command, **options, max_output=parse_size(self.settings.exec.max_output)
            )
        duration_ms = (time.perf_counter() - started) * 1000
        logger.info("exec in container %s exit_code=%s by %s", row.id, result.exit_code, caller.user)
        return result, duration_ms

    async def exec_stream(self, caller: Caller, request: ExecRequest) -> AsyncIterator[LogChunk | ExecExit]:
        """Start a command in a running container and return its output stream, which ends with an ExecExit.

        The output is not limited by `exec.max_output`, because nothing keeps it. Errors before the
        first output raise here, as for `logs`.
        """
        options = self._exec_options(request)
        row = await self._find(caller, request.container_id)
        _check_not_paused(row, "run commands")
        stream = self.runtime.exec_stream(row.docker_id, request.command, **options)
        opened = await self._open_stream(row, stream)
        return self.activity.stream(row.id, _log_exec_end(opened, row.id, caller.user))

    async def open_exec(
        self,
        caller: Caller,
        reference: str,
        command: list[str],
        *,
        tty: bool = False,
        env: dict[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        cols: int | None = None,
        rows: int | None = None,
    ) -> tuple[Container, ExecSession]:
        """Start an interactive command in a running container and return its row and session.

        The caller closes the session. Counting it as activity while it is open is the caller's
        part too, with `self.activity.session(row.id)`.
        """
        check_env(env or {})
        check_workdir(workdir)
        row = await self._find(caller, reference)
        _check_not_paused(row, "run commands")
        async with self._engine_errors(row):
            session = await self.runtime.open_exec(
                row.docker_id, command, tty=tty, env=env or None, workdir=workdir, user=user, cols=cols, rows=rows
            )
        logger.info("opened exec session in container %s tty=%s by %s", row.id, tty, caller.user)
        return row, session

    def _exec_options(self, request: ExecRequest) -> dict[str, Any]:
        """Return the runtime's keyword arguments for `request`; raise InvalidField for a timeout above the maximum."""
        limits = self.settings.exec
        if request.timeout is not None and request.timeout > limits.max_timeout:
            raise InvalidField("timeout", f"timeout {request.timeout:g} is above the maximum of {limits.max_timeout:g} seconds")
        return {
            "env": request.env or None,
            "workdir": request.workdir,
            "user": request.user,
            "timeout": request.timeout or limits.default_timeout,
        }

    async def logs(self, caller: Caller, reference: str, options: LogOptions) -> AsyncIterator[LogChunk]:
        """Check the container and open its log stream.

        Errors the engine reports before the first output raise here, as `_open_stream` describes.
        """
        row = await self._find(caller, reference)
        opened = await self._open_stream(row, self.runtime.logs(row.docker_id, options))
        return self.activity.stream(row.id, opened)

    async def _open_stream(self, row: Container, stream: AsyncIterator[T]) -> AsyncIterator[T]:
        """Wait up to FIRST_OUTPUT_WAIT seconds for the stream's first item, and return the whole stream.

        An error the engine reports in that time raises here, mapped like any engine error, so the
        client gets a proper error status instead of a broken stream.
        """
        first = asyncio.ensure_future(anext(stream))
        await asyncio.wait({first}, timeout=FIRST_OUTPUT_WAIT)
        if first.done() and first.exception() is not None and not isinstance(first.exception(), StopAsyncIteration):
            await stream.aclose()
            async with self._engine_errors(row):
                first.result()
        return _continue_stream(first, stream)

    async def stats(self, caller: Caller, reference: str) -> tuple[Container, StatsSample, float | None]:
        """Read a running container's counters; CPU percent comes from this reading and the one before."""
        row = await self._find(caller, reference)
        _check_not_paused(row, "report its current usage")
        await self.activity.touch(row.id)
        async with self._engine_errors(row):
            current = await self.runtime.stats(row.docker_id)
            stored = self._samples.get(row.id)
            previous = stored[1] if stored and time.monotonic() - stored[0] < STATS_SAMPLE_MAX_AGE else None
            percent = cpu_percent(previous, current)
            if percent is None:
                await asyncio.sleep(self.settings.stats.sample_interval)
                previous, current = current, await self.runtime.stats(row.docker_id)
                percent = cpu_percent(previous, current)

        self._samples[row.id] = (time.monotonic(), current)
        self._samples.move_to_end(row.id)
        while len(self._samples) > STATS_CACHE_SIZE:
            self._samples.popitem(last=False)
        return row, current, percent

    async def find_keyed(self, owner: str, idempotency_key: str) -> Container | None:
        """Return `owner`'s newest container started under `idempotency_key`, removed ones included."""
        return (
            await _select()
            .where((Container.owner == owner) & (Container.idempotency_key == idempotency_key))
            .order_by(Container.created_at, ascending=False)
            .first()
        )

    async def forget_credentials(self, container_id: str) -> None:
        """Drop the credentials a keyed start kept on its row, once its response is stored elsewhere."""
        await Container.update({Container.pending_credentials: None}).where(
            (Container.id == container_id) & Container.pool_state.is_null()
        )

    async def find(self, caller: Caller, reference: str, include_removed: bool = False) -> Container:
        """Find the caller's container by id or name without asking the engine, as `_find` does."""
        return await self._find(caller, reference, include_removed)

    # --- files -------------------------------------------------------------------------------

    async def stat_path(self, caller: Caller, reference: str, path: str | None) -> tuple[Container, PathStat]:
        """Describe an absolute path in a container, running or stopped."""
        path = check_path(path)
        row = await self._find(caller, reference)
        async with self._engine_errors(row):
            stat = await self.runtime.stat_path(row.docker_id, path)
        await self.activity.touch(row.id)
        return row, stat

    async def download(self, caller: Caller, reference: str, path: str | None) -> tuple[PathStat, AsyncIterator[bytes]]:
        """Describe `path` and open the tar stream of it; a missing path raises before any of the stream is sent."""
        row, stat = await self.stat_path(caller, reference, path)
        chunks = await self._open_stream(row, self.runtime.read_archive(row.docker_id, path))
        logger.info("copying %s from container %s by %s", path, row.id, caller.user)
        return stat, self.activity.stream(row.id, chunks)

    async def upload(
        self,
        caller: Caller,
        reference: str,
        path: str | None,
        body: AsyncIterable[bytes],
        *,
        size: int | None,
        single_file: bool,
    ) -> Container:
        """Copy an upload into a container: a tar archive extracted into the directory `path`, or one file at `path`.

        `size` is the request's Content-Length, which must be known and within `files.max_upload`
        before any byte is read, so a refused upload leaves nothing in the container.
        """
        target = check_path(path)
        limit = parse_size(self.settings.files.max_upload)
        if size is None:
            raise InvalidField(
                "Content-Length",
                "the upload has no Content-Length; send the body with its length (curl --data-binary @FILE does)",
                status=411,
            )
        if size > limit:
            raise UploadTooLarge(size, limit)
        if single_file:
            target, name = split_file_path(target)
            body = single_file_archive(name, size, body)

        row = await self._find(caller, reference)
        async with self.activity.session(row.id), self._engine_errors(row):
            await self.runtime.write_archive(row.docker_id, target, body)
        logger.info("copied %d bytes to %s in container %s by %s", size, path, row.id, caller.user)
        return row

    # --- helpers -----------------------------------------------------------------------------

    async def _find(self, caller: Caller, reference: str, include_removed: bool = False) -> Container:
        """Find a container the caller may see by CoreBase id, or by the name of an active one."""
        visible = _visible_to(caller)
        row = await _select().where(visible & (Container.id == reference)).first()
        if row is None:
            row = (
                await _select()
                .where(visible & (Container.name == reference) & Container.status.is_in(list(ACTIVE_STATUSES)))
                .first()
            )
        if row is None:
            raise ContainerNotFound(reference)
        if not include_removed and row.status == "removed":
            raise ContainerNotFound(reference, f"container {reference!r} was removed; it can no longer be used")
        if not include_removed and (row.docker_id is None or row.status == "failed"):
            raise ContainerNotRunning(row.id, row.status)
        return row

    def _engine_errors(self, row: Container) -> _EngineErrors:
        return _EngineErrors(self, row)


class _EngineErrors:
    """Re-raise a runtime's not-found and not-running errors with CoreBase's id instead of the engine's."""

    def __init__(self, service: ContainerService, row: Container) -> None:
        self.service = service
        self.row = row

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type, exc, traceback) -> bool:
        if isinstance(exc, ContainerNotFound):
            await self.service._mark_gone(self.row)
            raise ContainerNotFound(self.row.id, f"container {self.row.id!r} no longer exists in the engine") from None
        if isinstance(exc, ContainerNotRunning):
            await self.service._refresh(self.row)
            _check_not_paused(self.row, "run commands")
            raise ContainerNotRunning(self.row.id, self.row.status) from None
        if isinstance(exc, ContainerRunning):
            raise ContainerRunning(self.row.id) from None
        if isinstance(exc, PathNotFound):
            raise PathNotFound(self.row.id, exc.extra["path"], exc.hint) from None
        if isinstance(exc, PathReadOnly):
            raise PathReadOnly(self.row.id, exc.extra["path"], exc.reason) from None
        return False


def _check_not_paused(row: Container, action: str) -> None:
    """Raise ContainerPaused when the row's status is paused, so the container cannot do `action`."""
    if row.status == "paused":
        raise ContainerPaused(row.id, action)


async def _start_timers_of_claim(row: Container, timers: Timers) -> None:
    """Give a claimed pool member the timers of its request, counted from the claim."""
    apply_timers(row, timers)
    start_clock(row, utcnow())
    await Container.update({column: getattr(row, column._meta.name) for column in TIMER_COLUMNS}).where(
        Container.id == row.id
    )


def _select():
    """Select whole rows with JSON columns decoded into lists and dicts."""
    return Container.objects().output(load_json=True)


def _visible_to(caller: Caller):
    """Build the condition for rows a caller may see: all of them for an admin, otherwise their own.

    Pool members waiting to be claimed belong to no caller, so no listing shows them.
    """
    unpooled = Container.pool_state.is_null()
    if caller.is_admin:
        return unpooled
    return unpooled & (Container.owner == caller.user)


@contextlib.asynccontextmanager
async def _recording_progress(container_id: str, every: float) -> AsyncIterator[None]:
    """Renew the `creating` row's `updated_at` every `every` seconds while the body runs."""
    task = asyncio.create_task(_record_progress(container_id, every), name=f"corebase-progress-{container_id}")
    try:
        yield
    finally:
        task.cancel()


async def _record_progress(container_id: str, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await Container.update({Container.updated_at: utcnow()}).where(
                (Container.id == container_id) & (Container.status == "creating")
            )
        except Exception as exc:  # a database error; the next beat tries again
            logger.warning("could not record the progress of starting container %s: %s", container_id, exc)


async def _save_if_creating(row: Container) -> bool:
    """Write every column of a started row, unless the stored row is no longer `creating`; return whether it was written."""
    saved = await Container.update(row_values(row)).where((Container.id == row.id) & (Container.status == "creating")).returning(
        Container.id
    )
    return bool(saved)


def _write_transaction():
    engine = Container._meta.db
    if isinstance(engine, SQLiteEngine):
        return engine.transaction(transaction_type=TransactionType.immediate)
    return engine.transaction()


async def _save_state(row: Container, read_status: str) -> bool:
    """Write the engine state that `_apply_state` copied onto `row`, unless its status changed meanwhile.

    A refresh reads the row, then waits for the engine. A remove or stop that another request
    finishes in that time must not be undone by the older state (a removed row that became
    `exited` again, with no engine container). Only the columns the engine state sets are written,
    so a claim's new owner and name stay. Returns whether the row was written.
    """
    columns = (
        Container.status,
        Container.exit_code,
        Container.oom_killed,
        Container.started_at,
        Container.finished_at,
        Container.ports,
        Container.error,
        Container.updated_at,
    )
    values = {column: getattr(row, column._meta.name) for column in columns}
    written = await (
        Container.update(values)
        .where((Container.id == row.id) & (Container.status == read_status))
        .returning(Container.id)
    )
    return bool(written)


def _apply_state(row: Container, state: ContainerState) -> bool:
    """Copy the engine's view onto the row; return whether anything changed."""
    ended = state.status in ("exited", "dead")
    values = {
        "status": state.status,
        "exit_code": state.exit_code if ended else None,
        "oom_killed": state.oom_killed if ended else False,
        "started_at": state.started_at,
        "finished_at": state.finished_at if ended else None,
        "ports": [_port_json(port) for port in sorted(state.ports, key=_port_order)] or row.ports,
    }
    if state.error:
        values["error"] = state.error
    changed = {key: value for key, value in values.items() if getattr(row, key) != value}
    for key, value in changed.items():
        setattr(row, key, value)
    if changed or row.status == "creating":
        row.updated_at = utcnow()
    return bool(changed)


def _port_order(port) -> tuple:
    return (port.container_port, port.protocol, port.host_ip)


def _port_json(port) -> dict:
    return {
        "containerPort": port.container_port,
        "protocol": port.protocol,
        "hostIp": port.host_ip,
        "hostPort": port.host_port,
    }


async def _continue_stream(first: asyncio.Future[T], stream: AsyncIterator[T]) -> AsyncIterator[T]:
    try:
        try:
            yield await first
        except StopAsyncIteration:
            return
        async for item in stream:
            yield item
    finally:
        if not first.done():
            first.cancel()
            with contextlib.suppress(BaseException):
                await first
        await stream.aclose()


async def _log_exec_end(
    stream: AsyncIterator[LogChunk | ExecExit], container_id: str, user: str
) -> AsyncIterator[LogChunk | ExecExit]:
    """Pass a streamed exec on, logging its exit code as the buffered exec does."""
    async with contextlib.aclosing(stream):
        async for item in stream:
            if isinstance(item, ExecExit):
                logger.info(
                    "streamed exec in container %s exit_code=%s timed_out=%s by %s",
                    container_id, item.exit_code, item.timed_out, user,
                )
            yield item
