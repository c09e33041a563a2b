"""Every hook a CoreBase plugin can implement, grouped by capability.

Each docstring is the hook's contract: when it runs, its arguments, what it returns and how the
results of several plugins combine. pluggy never awaits, so hooks that provide a component return
an object whose methods do the async work. `corebase_startup` and `corebase_shutdown` may return an
awaitable, which the host awaits. `docs/plugins.md` documents each hook with its exact signature.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from corebase.alerts.notifiers import Notifier
    from corebase.metrics.types import Collector
    from corebase.plugins import AppContext
    from corebase.pool.strategy import PoolStrategy
    from corebase.runtime import ContainerRuntime
    from corebase.security import Policy
    from corebase.settings import Settings
    from corebase.templates import TemplateSpec

PROJECT_NAME = "corebase"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --- runtime ---------------------------------------------------------------------------------


@hookspec(firstresult=True)
def corebase_runtime(settings: Settings) -> ContainerRuntime | None:
    """Provide the container runtime backend.

    Called once at start-up with the validated settings. Return a ContainerRuntime, or None to let
    another plugin provide it. The first non-None result wins; the built-in Docker runtime is
    registered with ``trylast=True`` so an installed plugin replaces it. Start-up fails when no
    plugin returns a runtime.
    """


# --- templates -------------------------------------------------------------------------------


@hookspec
def corebase_templates(settings: Settings) -> list[TemplateSpec]:
    """Provide container templates.

    Called once at start-up. Return a list of TemplateSpec. The lists of all plugins are joined;
    two templates with the same name stop start-up with an error naming both plugins.
    """


# --- pools -----------------------------------------------------------------------------------


@hookspec(firstresult=True)
def corebase_pool_strategy(settings: Settings) -> PoolStrategy | None:
    """Provide the autoscaling strategy that sets each pool's idle target.

    Called once at start-up. Return a PoolStrategy, or None to let another plugin provide it. The
    first non-None result wins; the built-in strategy is registered with ``trylast=True``. The
    strategy's `target` runs on every pool manager pass and must not block.
    """


# --- monitoring ------------------------------------------------------------------------------


@hookspec(firstresult=True)
def corebase_collector(settings: Settings) -> Collector | None:
    """Provide the metrics collector that takes each round of container samples.

    Called once at start-up. Return a Collector, or None to let another plugin provide it. The
    first non-None result wins; the built-in collector is registered with ``trylast=True``. The
    host calls its `sample` once per `monitoring.interval` in the process that leads monitoring,
    then stores the samples, evaluates alert rules and publishes them as events.
    """


@hookspec
def corebase_notifiers(settings: Settings) -> list[Notifier]:
    """Provide alert notifiers, the kinds of target an alert rule can notify.

    Called once at start-up. Return a list of Notifier objects; all lists are joined, and two
    notifiers with the same name stop start-up. A rule names a notifier in its `notifiers` list
    (``{"type": "webhook", ...}``); the notifier checks that entry when the rule is saved and
    sends each alert change, with retries and a delivery log kept by the host.
    """


# --- security --------------------------------------------------------------------------------


@hookspec
def corebase_security_policies(settings: Settings) -> list[Policy]:
    """Provide security policies that check every container spec before it is created.

    Called once at start-up. Return a list of Policy objects. The lists of all plugins are joined;
    two policies with the same name stop start-up. Every policy receives every spec and one deny
    rejects it, with the reasons of every denying policy returned to the caller.
    """


# --- application -----------------------------------------------------------------------------


@hookspec
def corebase_routes(settings: Settings) -> list[Any]:
    """Provide extra Litestar route handlers or controllers.

    Called once while the app is built. Return a list of handlers or Controller classes; all lists
    are joined and registered on the app. Extra routes require authentication like every other
    route unless they set ``exclude_from_auth=True`` in their handler options. The role guard
    applies too: GET, HEAD and OPTIONS need the viewer role, other methods developer, and
    ``opt={"access": "admin"}`` makes a route admin-only.
    """


@hookspec
def corebase_startup(context: AppContext) -> Any:
    """Run start-up work after storage and the runtime are ready, before requests are served.

    Called once per server process. May return an awaitable, which the host awaits. Every plugin's
    implementation runs; an exception stops start-up.
    """


@hookspec
def corebase_shutdown(context: AppContext) -> Any:
    """Release what `corebase_startup` acquired.

    Called once when the server stops, after in-flight requests finish. May return an awaitable.
    Every implementation runs even when an earlier one raises; errors are logged.
    """
