from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Varchar
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-05T05:40:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Add the idempotency key of the start request to containers"


async def forwards():
    manager = MigrationManager(
        migration_id=ID, app_name="corebase", description=DESCRIPTION
    )

    manager.add_column(
        table_class_name="Container",
        tablename="containers",
        column_name="idempotency_key",
        db_column_name="idempotency_key",
        column_class_name="Varchar",
        column_class=Varchar,
        params={
            "length": 64,
            "default": None,
            "null": True,
            "primary_key": False,
            "unique": False,
            "index": True,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    return manager
