"""The plugin host: builds the pluggy manager and collects what plugins provide.

Load order: hook specs, then the built-in plugins by import name, then every other plugin in the
"corebase" entry-point group. Built-ins appear in that group too, and pluggy skips a name that is
already registered, so each loads once. A name in `plugins.disabled` is blocked before anything
loads. Set COREBASE_TRACE_HOOKS=1 to log every hook call at DEBUG level.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from corebase import hookspecs
from corebase.errors import PluginError
from corebase.metrics.types import Collector
from corebase.pool.strategy import PoolStrategy
from corebase.runtime.protocol import ContainerRuntime
from corebase.security import Policy
from corebase.settings import Settings
from corebase.templates import TemplateSpec

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "corebase"
BUILTIN_PLUGINS = ("corebase_docker", "corebase_policies", "corebase_templates", "corebase_pool", "corebase_metrics")


@dataclass
class AppContext:
    """The components start-up builds, passed to plugins' startup and shutdown hooks."""

    settings: Settings
    plugin_manager: pluggy.PluginManager
    runtime: ContainerRuntime
    policies: list[Policy]
    templates: list[TemplateSpec]
    collector: Collector
    notifiers: list[Any] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)


def build_plugin_manager(settings: Settings, extra_plugins: Iterable[Any] = ()) -> pluggy.PluginManager:
    """Create a plugin manager with the specs, built-ins, `extra_plugins` and installed plugins, validated."""
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    for name in settings.plugins.disabled:
        manager.set_blocked(name)

    for name in BUILTIN_PLUGINS:
        if manager.is_blocked(name):
            continue
        _register(manager, importlib.import_module(name), name)
    for plugin in extra_plugins:
        _register(manager, plugin, None)
    if settings.plugins.autoload:
        try:
            manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except pluggy.PluginValidationError as exc:
            raise PluginError(_describe_validation(exc)) from None

    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(_describe_validation(exc)) from None

    if os.environ.get("COREBASE_TRACE_HOOKS"):
        manager.trace.root.setwriter(lambda message: logger.debug("hook: %s", message.rstrip()))
        manager.enable_tracing()
    logger.info("plugins loaded: %s", ", ".join(sorted(name for name, _ in manager.list_name_plugin() if name)))
    return manager


def _register(manager: pluggy.PluginManager, plugin: Any, name: str | None) -> None:
    try:
        manager.register(plugin, name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(_describe_validation(exc)) from None
    except ValueError as exc:
        raise PluginError(f"plugin {name or plugin!r} could not be registered: {exc}") from None


def _describe_validation(exc: pluggy.PluginValidationError) -> str:
    """Name the plugin, the hook and the fix; pluggy's own message names the hook only."""
    plugin_name = getattr(exc.plugin, "__name__", None) or repr(exc.plugin)
    message = str(exc)
    if "unknown hook" in message:
        known = ", ".join(sorted(name for name in dir(hookspecs) if name.startswith("corebase_")))
        return f"plugin {plugin_name}: {message}; is the name misspelt? The hooks are: {known}"
    return f"plugin {plugin_name}: {message}"


def load_runtime(manager: pluggy.PluginManager, settings: Settings) -> ContainerRuntime:
    """Return the first runtime a plugin provides; fail with the fix when none does."""
    return _first_result(manager, settings, "corebase_runtime", ContainerRuntime, "container runtime", "corebase_docker")


def load_pool_strategy(manager: pluggy.PluginManager, settings: Settings) -> PoolStrategy:
    """Return the first pool strategy a plugin provides; fail with the fix when none does."""
    return _first_result(manager, settings, "corebase_pool_strategy", PoolStrategy, "pool strategy", "corebase_pool")


def load_collector(manager: pluggy.PluginManager, settings: Settings) -> Collector:
    """Return the first metrics collector a plugin provides; fail with the fix when none does."""
    return _first_result(manager, settings, "corebase_collector", Collector, "metrics collector", "corebase_metrics")


def _first_result(
    manager: pluggy.PluginManager, settings: Settings, hook_name: str, protocol: type, kind: str, builtin: str
) -> Any:
    component = getattr(manager.hook, hook_name)(settings=settings)
    if component is None:
        raise PluginError(
            f"no plugin provides a {kind} (hook {hook_name}); enable the built-in '{builtin}' plugin "
            f"or install a {kind} plugin"
        )
    if not isinstance(component, protocol):
        raise PluginError(f"the {kind} {component!r} does not implement {protocol.__module__}.{protocol.__qualname__}")
    return component


def collect_named(manager: pluggy.PluginManager, hook_name: str, settings: Settings, kind: str) -> list[Any]:
    """Call a list-returning hook on every plugin and join the results, rejecting duplicate names.

    The error for a duplicate names the item and both plugins that provide it.
    """
    hook = getattr(manager.hook, hook_name)
    providers: dict[str, str] = {}
    items: list[Any] = []
    # pluggy calls the last registered first; walk in registration order so built-ins come first.
    for implementation in hook.get_hookimpls():
        plugin_name = implementation.plugin_name
        for item in implementation.function(settings=settings) or []:
            item_name = item.name
            if item_name in providers:
                raise PluginError(
                    f"two plugins provide a {kind} named {item_name!r}: {providers[item_name]} and {plugin_name}; "
                    f"disable one with plugins.disabled or rename the {kind}"
                )
            providers[item_name] = plugin_name
            items.append(item)
    return items


def describe_plugins(manager: pluggy.PluginManager) -> list[dict[str, Any]]:
    """List every loaded plugin with its version and the hooks it implements."""
    from corebase import __version__

    distributions = {id(plugin): dist for plugin, dist in manager.list_plugin_distinfo()}
    described = []
    for name, plugin in manager.list_name_plugin():
        if plugin is None or name is None:
            continue
        dist = distributions.get(id(plugin))
        if dist is not None:
            version = dist.version
        elif name in BUILTIN_PLUGINS:
            version = __version__
        else:
            version = getattr(plugin, "__version__", None)
        hooks = sorted(caller.name for caller in manager.get_hookcallers(plugin) or [])
        described.append({"name": name, "version": version, "hooks": hooks})
    return sorted(described, key=lambda item: item["name"])
