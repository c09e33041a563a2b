"""The Piccolo app that owns CoreBase's tables and migrations."""

from __future__ import annotations

from pathlib import Path

from piccolo.conf.apps import AppConfig

from corebase.alerts.tables import Alert, AlertDelivery, AlertRule
from corebase.audit.tables import AuditRecord
from corebase.auth.tables import ApiKey, User
from corebase.containers.tables import Container
from corebase.idempotency.tables import IdempotencyKey
from corebase.installation import Installation
from corebase.leases import Lease
from corebase.metrics.tables import RuntimeMetric
from corebase.pool.tables import Pool
from corebase.quotas.tables import UserQuota
from corebase.templates.tables import ContainerTemplate

TABLES = [Container, ContainerTemplate, RuntimeMetric, UserQuota, ApiKey, Pool, Lease, AlertRule, Alert, AlertDelivery, User, AuditRecord, Installation, IdempotencyKey]


def migrations_folder() -> Path:
    """Locate the migrations: inside the installed package, else at the top of the source tree."""
    packaged = Path(__file__).parent / "migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "migrations"


APP_CONFIG = AppConfig(
    app_name="corebase",
    migrations_folder_path=str(migrations_folder()),
    table_classes=TABLES,
)
