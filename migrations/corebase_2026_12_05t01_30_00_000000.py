from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Varchar
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-05T01:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Add the installation table"


async def forwards():
    manager = MigrationManager(
        migration_id=ID, app_name="corebase", description=DESCRIPTION
    )

    manager.add_table(
        class_name="Installation", tablename="installation", schema=None, columns=None
    )

    manager.add_column(
        table_class_name="Installation",
        tablename="installation",
        column_name="id",
        db_column_name="id",
        column_class_name="Varchar",
        column_class=Varchar,
        params={
            "length": 32,
            "default": "",
            "null": False,
            "primary_key": True,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    return manager
