"""An example CoreBase plugin: one template, one security policy and one alert notifier.

CoreBase finds this module through the `corebase` entry-point group (see pyproject.toml) and
calls the hook implementations below once at start-up. Each returns a list, and CoreBase joins
the lists of all plugins, so these add to the built-in templates, policies and notifiers.
"""

from __future__ import annotations

from corebase import hookimpl
from corebase.settings import Settings
from corebase_example.notifiers import JsonLinesNotifier
from corebase_example.policies import PinnedImageTag
from corebase_example.templates import BUSYBOX_HTTPD

__all__ = ["corebase_notifiers", "corebase_security_policies", "corebase_templates"]


@hookimpl
def corebase_templates(settings: Settings):
    return [BUSYBOX_HTTPD]


@hookimpl
def corebase_security_policies(settings: Settings):
    return [PinnedImageTag()]


@hookimpl
def corebase_notifiers(settings: Settings):
    # Alert files go to a directory inside CoreBase's data directory, never to a path a rule names.
    return [JsonLinesNotifier(settings.data_path / "example-alerts")]
