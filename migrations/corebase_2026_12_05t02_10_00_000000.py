from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Boolean, Real, Timestamptz
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-05T02:10:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Add container timers: ttl, expiry, idle timeout, last activity and auto-remove"

# Every new column of `containers`: its class, default, whether it may be null, and whether it has an index.
COLUMNS = (
    ("ttl", Real, None, True, False),
    ("expires_at", Timestamptz, None, True, True),
    ("idle_timeout", Real, None, True, False),
    ("last_activity_at", Timestamptz, None, True, False),
    ("auto_remove", Boolean, False, False, False),
)


async def forwards():
    manager = MigrationManager(
        migration_id=ID, app_name="corebase", description=DESCRIPTION
    )

    for name, column_class, default, null, index in COLUMNS:
        manager.add_column(
            table_class_name="Container",
            tablename="containers",
            column_name=name,
            db_column_name=name,
            column_class_name=column_class.__name__,
            column_class=column_class,
            params={
                "default": default,
                "null": null,
                "primary_key": False,
                "unique": False,
                "index": index,
                "index_method": IndexMethod.btree,
                "choices": None,
                "db_column_name": None,
                "secret": False,
            },
            schema=None,
        )

    return manager
