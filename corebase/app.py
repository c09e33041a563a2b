"""create_app(settings): the Litestar application with its plugins, storage and runtime."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware.base import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from corebase import __version__, db
from corebase.alerts.service import AlertService
from corebase.api.alerts import AlertController
from corebase.api.allow import AllowHeaderPlugin
from corebase.api.audit import AuditPlugin
from corebase.api.events import events_socket, logs_socket
from corebase.api.exec_socket import exec_socket
from corebase.api.files import FileController
from corebase.api.auth import PUBLIC_PATHS, BearerKeyMiddleware, provide_caller
from corebase.api.openapi import ProblemResponsesPlugin, RequestBodySchemaPlugin
from corebase.api.problems import EXCEPTION_HANDLERS
from corebase.api.query_forms import reject_repeated_query
from corebase.api.policies import PolicyController
from corebase.api.pools import PoolController
from corebase.api.prometheus import PrometheusPlugin
from corebase.api.ratelimit import RateLimitPlugin
from corebase.api.quotas import QuotaController
from corebase.api.reconcile import ReconcileController
from corebase.api.runtime import RuntimeController
from corebase.api.templates import TemplateController
from corebase.api.system import SystemController
from corebase.api.users import KeyController, UserController
from corebase.auth.access import require_access
from corebase.auth.keys import KeyVerifier, seed_admin_key
from corebase.containers.lifecycle import LifecycleService
from corebase.containers.reconciler import Reconciler
from corebase.containers.service import ContainerService
from corebase.errors import ApiError, ConfigError, PluginError
from corebase.events.bus import EventBus
from corebase.idempotency import IdempotencyService
from corebase.installation import installation_id
from corebase.metrics.service import MonitorService
from corebase.plugins import (
    AppContext,
    build_plugin_manager,
    collect_named,
    load_collector,
    load_pool_strategy,
    load_runtime,
)
from corebase.pool.service import PoolService
from corebase.runtime.guard import EngineGuard
from corebase.templates.catalog import TemplateCatalog
from corebase.settings import Settings
from corebase.sizes import parse_size

logger = logging.getLogger(__name__)


def create_app(settings: Settings, extra_plugins: Iterable[Any] = ()) -> Litestar:
    """Build the app. Plugins load and are validated here; storage and the engine connect at start-up."""
    manager = build_plugin_manager(settings, extra_plugins)
    context = AppContext(
        settings=settings,
        plugin_manager=manager,
        runtime=load_runtime(manager, settings),
        policies=collect_named(manager, "corebase_security_policies", settings, "security policy"),
        templates=collect_named(manager, "corebase_templates", settings, "template"),
        collector=load_collector(manager, settings),
        notifiers=collect_named(manager, "corebase_notifiers", settings, "notifier"),
    )
    extra_routes = [route for routes in manager.hook.corebase_routes(settings=settings) for route in routes or []]

    return Litestar(
        route_handlers=[
            SystemController,
            RuntimeController,
            FileController,
            TemplateController,
            PoolController,
            AlertController,
            PolicyController,
            UserController,
            KeyController,
            QuotaController,
            ReconcileController,
            events_socket,
            logs_socket,
            exec_socket,
            *extra_routes,
        ],
        dependencies={
            "caller": Provide(provide_caller, sync_to_thread=False),
            "containers": Provide(_provide_containers, sync_to_thread=False),
            "monitor": Provide(_provide_monitor, sync_to_thread=False),
            "alerts": Provide(_provide_alerts, sync_to_thread=False),
            "idempotency": Provide(_provide_idempotency, sync_to_thread=False),
        },
        middleware=[DefineMiddleware(BearerKeyMiddleware, exclude=PUBLIC_PATHS)],
        # One guard checks the caller's role and key scopes on every route; see corebase.auth.access.
        guards=[require_access],
        before_request=reject_repeated_query,
        exception_handlers=EXCEPTION_HANDLERS,
        # AuditPlugin comes last, so its recorder is the outermost middleware and records every rejection.
        plugins=[
            ProblemResponsesPlugin(),
            RequestBodySchemaPlugin(),
            AllowHeaderPlugin(),
            PrometheusPlugin(settings),
            RateLimitPlugin(settings),
            AuditPlugin(),
        ],
        lifespan=[_lifespan],
        state=State(
            {
                "context": context,
                "key_verifier": KeyVerifier(settings.auth.key_cache_seconds),
                "templates": TemplateCatalog(context.templates, settings.templates.images),
            }
        ),
        openapi_config=OpenAPIConfig(
            title="CoreBase",
            version=__version__,
            description="Containers on demand: start, exec, logs and stats on a Docker Engine.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
            components=Components(
                security_schemes={"apiKey": SecurityScheme(type="http", scheme="bearer", description="CoreBase API key")}
            ),
            security=[{"apiKey": []}],
        ),
        request_max_body_size=parse_size(settings.server.max_request_body),
        logging_config=None,
        debug=False,
    )


def _provide_containers(state: State) -> ContainerService:
    return state.containers


def _provide_monitor(state: State) -> MonitorService:
    return state.monitor


def _provide_alerts(state: State) -> AlertService:
    return state.alerts


def _provide_idempotency(state: State) -> IdempotencyService:
    return state.idempotency


@asynccontextmanager
async def _lifespan(app: Litestar) -> AsyncIterator[None]:
    context: AppContext = app.state.context
    settings = context.settings

    try:
        engine = await db.connect(settings)
    except ConfigError as exc:
        app.state.startup_error = str(exc)
        raise
    bus = EventBus(settings)
    # Services reach the engine through the guard; plugins' hooks get the runtime itself in context.runtime.
    runtime = EngineGuard(
        context.runtime, probe_interval=settings.docker.probe_interval, probe_timeout=settings.docker.probe_timeout
    )
    app.state.engine = context.state["engine"] = runtime
    try:
        await _prepare_database(settings)
        await bus.start()
        app.state.bus = context.state["bus"] = bus
        runtime.start_probe()
        engine_cpus = await _describe_engine(runtime)
        app.state.database = engine
        app.state.database_description = db.describe(settings)
        containers = ContainerService(settings, runtime, context.policies, app.state.templates, engine_cpus)
        pools = PoolService(settings, containers, load_pool_strategy(context.plugin_manager, settings))
        containers.pool = pools
        containers.installation_id = await installation_id()
        app.state.containers = context.state["containers"] = containers
        app.state.pools = context.state["pools"] = pools
        await pools.start()
        idempotency = IdempotencyService(settings.idempotency)
        app.state.idempotency = context.state["idempotency"] = idempotency
        idempotency.start()

        alerts = AlertService(settings, bus, context.notifiers)
        app.state.alerts = context.state["alerts"] = alerts
        await alerts.start()
        monitor = MonitorService(settings, runtime, context.collector, bus, containers, alerts=alerts)
        app.state.monitor = context.state["monitor"] = monitor
        await monitor.start()
        # The first pass runs at once in the background, so start-up does not wait for the engine.
        reconciler = Reconciler(settings, containers, bus, app.state.prometheus)
        monitor.watcher.reconnect_callbacks.append(reconciler.wake)
        app.state.reconciler = context.state["reconciler"] = reconciler
        await reconciler.start()
        lifecycle = LifecycleService(settings, containers, bus, app.state.get("audit"))
        app.state.lifecycle = context.state["lifecycle"] = lifecycle
        await lifecycle.start()
        await _call_all(context.plugin_manager.hook.corebase_startup(context=context))
        yield
    except (ConfigError, PluginError) as exc:
        app.state.startup_error = str(exc)
        raise
    finally:
        if "lifecycle" in context.state:
            await context.state["lifecycle"].stop()
        if "reconciler" in context.state:
            await context.state["reconciler"].stop()
        if "monitor" in context.state:
            await context.state["monitor"].stop()
        if "alerts" in context.state:
            await context.state["alerts"].stop()
        if "pools" in context.state:
            await context.state["pools"].stop()
        if "idempotency" in context.state:
            await context.state["idempotency"].stop()
        if "bus" in context.state:
            await bus.stop()
        await runtime.stop_probe()
        await _shutdown(context)
        await db.disconnect(engine)


async def _prepare_database(settings: Settings) -> None:
    if settings.database.auto_migrate:
        await db.migrate()
    else:
        pending = await db.pending_migrations()
        if pending:
            raise ConfigError(
                f"{len(pending)} database migration(s) are pending and database.auto_migrate is off; "
                "run 'corebase migrate' first"
            )
    key_file = await seed_admin_key(settings)
    if key_file is not None:
        print(f"CoreBase generated an admin API key; it is in {key_file}", flush=True)


async def _describe_engine(runtime: EngineGuard) -> int | None:
    """Log the engine's facts; an unreachable engine is a warning, not a failed start."""
    try:
        info = await runtime.info()
    except ApiError as exc:
        logger.warning("container engine unreachable at start-up: %s", exc)
        return None
    logger.info(
        "container engine: %s %s (API %s), %s CPUs, cgroup v%s",
        info.backend,
        info.version,
        info.api_version,
        info.cpus,
        info.cgroup_version or "?",
    )
    return info.cpus or None


async def _shutdown(context: AppContext) -> None:
    for implementation in reversed(context.plugin_manager.hook.corebase_shutdown.get_hookimpls()):
        try:
            result = implementation.function(context=context)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("shutdown hook of plugin %s failed", implementation.plugin_name)
    try:
        await context.runtime.close()
    except Exception:
        logger.exception("closing the container runtime failed")


async def _call_all(results: list[Any]) -> None:
    for result in results:
        if inspect.isawaitable(result):
            await result
