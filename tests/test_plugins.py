"""The plugin host: loading order, entry points, blocking, and the start-up errors it raises."""

from __future__ import annotations

import inspect
import re
import sys
import textwrap
from pathlib import Path

import pytest

from corebase import hookimpl, hookspecs
from corebase.errors import PluginError
from corebase.plugins import build_plugin_manager, collect_named, describe_plugins, load_collector, load_runtime
from corebase.settings import load_settings
from corebase.templates import TemplateSpec

DOCS = Path(__file__).parent.parent / "docs" / "plugins.md"


def settings(**plugins):
    return load_settings(environ={}, overrides={"plugins": plugins} if plugins else None)


def install_entry_point_plugin(tmp_path: Path, monkeypatch, module_name: str, source: str, version: str = "1.2.3") -> None:
    """Make an importable module with an installed distribution that lists it in the corebase group."""
    (tmp_path / f"{module_name}.py").write_text(textwrap.dedent(source))
    dist_info = tmp_path / f"{module_name}-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module_name}\nVersion: {version}\n")
    (dist_info / "entry_points.txt").write_text(f"[corebase]\n{module_name} = {module_name}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module_name, raising=False)


def test_builtins_load_and_provide_a_runtime():
    manager = build_plugin_manager(settings())
    names = {item["name"] for item in describe_plugins(manager)}
    assert {"corebase_docker", "corebase_policies", "corebase_templates", "corebase_pool", "corebase_metrics"} <= names
    assert load_runtime(manager, settings()).name == "docker"


def test_describe_lists_versions_and_hooks():
    manager = build_plugin_manager(settings())
    described = {item["name"]: item for item in describe_plugins(manager)}
    assert described["corebase_docker"]["hooks"] == ["corebase_runtime"]
    assert described["corebase_policies"]["hooks"] == ["corebase_security_policies"]
    assert described["corebase_templates"]["hooks"] == ["corebase_templates"]
    assert described["corebase_pool"]["hooks"] == ["corebase_pool_strategy"]
    assert described["corebase_metrics"]["hooks"] == ["corebase_collector", "corebase_notifiers"]
    assert described["corebase_docker"]["version"]


def test_entry_point_plugin_loads_with_its_version(tmp_path, monkeypatch):
    install_entry_point_plugin(
        tmp_path,
        monkeypatch,
        "cbtest_extra_templates",
        """
        from corebase import hookimpl
        from corebase.templates import TemplateSpec

        @hookimpl
        def corebase_templates(settings):
            return [TemplateSpec(name="extra", image="corebase-test/busybox:1", category="custom")]
        """,
    )
    manager = build_plugin_manager(settings())
    described = {item["name"]: item for item in describe_plugins(manager)}
    assert described["cbtest_extra_templates"]["version"] == "1.2.3"
    assert described["cbtest_extra_templates"]["hooks"] == ["corebase_templates"]
    templates = collect_named(manager, "corebase_templates", settings(), "template")
    assert [template.name for template in templates][-1] == "extra"
    assert "python" in [template.name for template in templates]


def test_autoload_off_skips_entry_points(tmp_path, monkeypatch):
    install_entry_point_plugin(
        tmp_path,
        monkeypatch,
        "cbtest_not_loaded",
        """
        from corebase import hookimpl

        @hookimpl
        def corebase_templates(settings):
            return []
        """,
    )
    manager = build_plugin_manager(settings(autoload=False))
    names = {item["name"] for item in describe_plugins(manager)}
    assert "cbtest_not_loaded" not in names
    assert "corebase_docker" in names


def test_disabled_plugin_is_not_loaded():
    manager = build_plugin_manager(settings(disabled=["corebase_policies"]))
    names = {item["name"] for item in describe_plugins(manager)}
    assert "corebase_policies" not in names
    assert collect_named(manager, "corebase_security_policies", settings(), "security policy") == []


def test_missing_runtime_fails_with_the_fix():
    manager = build_plugin_manager(settings(disabled=["corebase_docker"]))
    with pytest.raises(PluginError, match="no plugin provides a container runtime.*corebase_docker"):
        load_runtime(manager, settings())


def test_misspelt_hook_names_plugin_and_hook():
    class Misspelt:
        __name__ = "misspelt_plugin"

        @hookimpl
        def corebase_template(self, settings):
            return []

    with pytest.raises(PluginError) as caught:
        build_plugin_manager(settings(), extra_plugins=[Misspelt()])
    message = str(caught.value)
    assert "corebase_template" in message
    assert "misspelt" in message
    assert "corebase_templates" in message


def test_wrong_hook_arguments_are_rejected():
    class WrongArguments:
        @hookimpl
        def corebase_templates(self, settings, unexpected):
            return []

    with pytest.raises(PluginError, match="unexpected"):
        build_plugin_manager(settings(), extra_plugins=[WrongArguments()])


def test_duplicate_template_names_name_both_plugins():
    def provider(label):
        class Provider:
            @hookimpl
            def corebase_templates(self, settings):
                return [TemplateSpec(name="cbtest-dup", image="corebase-test/busybox:1", category="runtime")]

        provider_instance = Provider()
        return label, provider_instance

    manager = build_plugin_manager(settings())
    for label, plugin in (provider("first_templates"), provider("second_templates")):
        manager.register(plugin, label)
    with pytest.raises(PluginError, match="'cbtest-dup': first_templates and second_templates"):
        collect_named(manager, "corebase_templates", settings(), "template")


def test_duplicate_policy_names_name_both_plugins():
    from corebase_policies.policies import NoPrivileged

    class SecondPolicies:
        @hookimpl
        def corebase_security_policies(self, settings):
            return [NoPrivileged()]

    manager = build_plugin_manager(settings())
    manager.register(SecondPolicies(), "second_policies")
    with pytest.raises(PluginError, match="'no-privileged': corebase_policies and second_policies"):
        collect_named(manager, "corebase_security_policies", settings(), "security policy")


def test_installed_runtime_replaces_the_builtin():
    class OtherRuntime:
        name = "other"

    class RuntimePlugin:
        @hookimpl
        def corebase_runtime(self, settings):
            return OtherRuntime()

    manager = build_plugin_manager(settings(), extra_plugins=[RuntimePlugin()])
    with pytest.raises(PluginError, match="does not implement"):
        load_runtime(manager, settings())


def hook_names() -> list[str]:
    return sorted(name for name, value in vars(hookspecs).items() if name.startswith("corebase_") and callable(value))


def test_public_hook_names_are_pinned():
    assert hook_names() == [
        "corebase_collector",
        "corebase_notifiers",
        "corebase_pool_strategy",
        "corebase_routes",
        "corebase_runtime",
        "corebase_security_policies",
        "corebase_shutdown",
        "corebase_startup",
        "corebase_templates",
    ]


@pytest.mark.parametrize("name", hook_names())
def test_every_hook_is_documented_with_its_signature(name):
    function = getattr(hookspecs, name)
    signature = f"def {name}{inspect.signature(function)}".replace("'", "")
    text = DOCS.read_text()
    assert signature in re.sub(r"\s+", " ", text), f"docs/plugins.md lacks '{signature}'"


def test_installed_collector_replaces_the_builtin():
    class CountingCollector:
        name = "counting"

        async def sample(self, runtime, targets):
            return []

    class CollectorPlugin:
        @hookimpl
        def corebase_collector(self, settings):
            return CountingCollector()

    manager = build_plugin_manager(settings(), extra_plugins=[CollectorPlugin()])
    assert load_collector(manager, settings()).name == "counting"
    assert load_collector(build_plugin_manager(settings()), settings()).name == "stats"


def test_missing_collector_names_the_builtin():
    blocked = settings(disabled=["corebase_metrics"])
    with pytest.raises(PluginError, match="no plugin provides a metrics collector.*corebase_metrics"):
        load_collector(build_plugin_manager(blocked), blocked)


def test_builtin_notifiers_are_webhook_and_log():
    notifiers = collect_named(build_plugin_manager(settings()), "corebase_notifiers", settings(), "notifier")
    assert sorted(notifier.name for notifier in notifiers) == ["log", "webhook"]
