from piccolo.apps.migrations.auto.migration_manager import MigrationManager

ID = "2026-12-04T23:49:29:000000"
VERSION = "1.38.0"
DESCRIPTION = "Create a user for every user that already has API keys"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="corebase", description=DESCRIPTION)

    async def users_from_keys():
        # Before users had rows of their own, a key carried its user's role. The strongest role
        # among a user's keys becomes the user's role. Piccolo runs raw steps before column
        # changes, so this needs a migration of its own after the one creating the table.
        from piccolo.engine.finder import engine_finder

        await engine_finder().run_ddl(
            """
            INSERT INTO users (name, role, created_at, updated_at)
            SELECT "user",
                   CASE WHEN SUM(CASE WHEN role = 'admin' THEN 1 ELSE 0 END) > 0 THEN 'admin'
                        WHEN SUM(CASE WHEN role = 'developer' THEN 1 ELSE 0 END) > 0 THEN 'developer'
                        ELSE 'viewer' END,
                   MIN(created_at), MIN(created_at)
            FROM api_keys GROUP BY "user"
            """
        )

    manager.add_raw(users_from_keys)

    return manager
