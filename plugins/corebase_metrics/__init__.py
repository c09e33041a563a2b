"""Built-in monitoring: the stats collector and the log and webhook alert notifiers.

Each is registered with ``trylast=True`` or by name, so an installed plugin can replace the
collector or add notifiers beside these.
"""

from __future__ import annotations

from corebase import hookimpl
from corebase.settings import Settings
from corebase_metrics.collector import StatsCollector
from corebase_metrics.notifiers import LogNotifier, WebhookNotifier

__all__ = ["LogNotifier", "StatsCollector", "WebhookNotifier", "corebase_collector", "corebase_notifiers"]


@hookimpl(trylast=True)
def corebase_collector(settings: Settings) -> StatsCollector:
    return StatsCollector(settings.monitoring.call_timeout, settings.monitoring.max_parallel)


@hookimpl
def corebase_notifiers(settings: Settings) -> list[WebhookNotifier | LogNotifier]:
    alerts = settings.alerts
    return [WebhookNotifier(alerts.webhook_timeout, alerts.webhook_hosts), LogNotifier()]
