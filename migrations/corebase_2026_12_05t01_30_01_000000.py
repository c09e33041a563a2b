import secrets

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

ID = "2026-12-05T01:30:01:000000"
VERSION = "1.38.0"
DESCRIPTION = "Give the installation its random id"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="corebase", description=DESCRIPTION)

    async def create_id():
        # Migrations run once per database, one process at a time, so each database gets exactly
        # one id. Piccolo runs raw steps before table changes, hence a migration of its own.
        from piccolo.engine.finder import engine_finder

        await engine_finder().run_ddl(f"INSERT INTO installation (id) VALUES ('inst_{secrets.token_hex(8)}')")

    manager.add_raw(create_id)

    return manager
