"""/health, /api/plugins and /api/monitoring."""

from __future__ import annotations

import asyncio
import logging

from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec

from corebase import __version__, db, leases
from corebase.api.schemas import ComponentHealth, HealthRecord, MonitoringRecord, PluginRecord
from corebase.auth.caller import Caller
from corebase.errors import ApiError, DatabaseUnavailable
from corebase.metrics.service import LEASE_NAME
from corebase.plugins import AppContext, describe_plugins
from corebase.runtime.guard import EngineGuard

logger = logging.getLogger(__name__)

# Seconds each health probe may take, so /health responds quickly when a component hangs.
HEALTH_PROBE_TIMEOUT = 3.0


class SystemController(Controller):
    tags = ["system"]

    # An empty security requirement documents that the route needs no API key.
    @get(
        "/health",
        exclude_from_auth=True,
        security=[{}],
        summary="Database and engine reachability (no authentication)",
        responses={503: ResponseSpec(HealthRecord, description="The database or the engine is unreachable")},
    )
    async def health(self, state: State) -> Response[HealthRecord]:
        database, engine = await asyncio.gather(_probe_database(state), _probe_engine(state.engine))
        healthy = database.ok and engine.ok
        record = HealthRecord(
            status="ok" if healthy else "degraded", version=__version__, database=database, engine=engine
        )
        if healthy:
            return Response(record)
        return Response(record, status_code=503, headers={"Retry-After": _retry_after(state.engine, database, engine)})

    @get("/api/plugins", summary="Loaded plugins, their versions and the hooks each implements")
    async def plugins(self, state: State, caller: NamedDependency[Caller]) -> list[PluginRecord]:
        context: AppContext = state.context
        return [PluginRecord(**item) for item in describe_plugins(context.plugin_manager)]

    @get("/api/monitoring", summary="This process's part in monitoring: leadership, sampling, event stream")
    async def monitoring(self, state: State, caller: NamedDependency[Caller]) -> MonitoringRecord:
        monitor = state.monitor
        return MonitoringRecord(
            process=monitor.holder,
            leader=monitor.leader,
            leader_process=await leases.current_holder(LEASE_NAME),
            enabled=monitor.settings.enabled,
            interval=monitor.settings.interval,
            collector=monitor.collector.name,
            bus=state.bus.kind,
            bus_connected=state.bus.connected,
            rounds=monitor.rounds,
            last_round_seconds=round(monitor.last_round_seconds, 6),
            engine_events_connected=monitor.watcher.connected.is_set(),
            engine_events_reconnects=monitor.watcher.reconnects,
        )


def _retry_after(guard: EngineGuard, database: ComponentHealth, engine: ComponentHealth) -> str:
    """Seconds to wait: the longest Retry-After of the 503 errors the other routes give for the failed components."""
    waits = []
    if not database.ok:
        waits.append(int(DatabaseUnavailable("").headers["Retry-After"]))
    if not engine.ok:
        waits.append(int(guard.unavailable().headers["Retry-After"]))
    return str(max(waits))


async def _probe_database(state: State) -> ComponentHealth:
    try:
        await asyncio.wait_for(db.ping(state.database), HEALTH_PROBE_TIMEOUT)
    except Exception as exc:  # any driver error means unreachable
        logger.warning("health: database unreachable: %s", exc)
        return ComponentHealth(ok=False, detail=f"unreachable: {exc or type(exc).__name__}")
    return ComponentHealth(ok=True, detail=state.database_description)


async def _probe_engine(engine: EngineGuard) -> ComponentHealth:
    """Ask the engine for its version, or report at once the outage the guard already knows of."""
    try:
        info = await asyncio.wait_for(engine.info(), HEALTH_PROBE_TIMEOUT)
    except (ApiError, TimeoutError) as exc:
        return ComponentHealth(ok=False, detail=f"unreachable: {exc or 'timed out'}")
    return ComponentHealth(ok=True, detail=f"{info.backend} {info.version} (API {info.api_version})")
