from piccolo.apps.migrations.auto.migration_manager import MigrationManager

ID = "2026-12-04T22:27:09:000000"
VERSION = "1.38.0"
DESCRIPTION = "Index runtime metrics by container, resolution and time"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="corebase", description=DESCRIPTION)

    async def metric_lookup_index():
        # History and latest-sample queries select one container at one resolution over a time range.
        # Piccolo runs raw steps before column changes, so this index needs a migration of its own.
        from piccolo.engine.finder import engine_finder

        await engine_finder().run_ddl(
            "CREATE INDEX runtime_metrics_lookup ON runtime_metrics (container_id, resolution, epoch)"
        )

    manager.add_raw(metric_lookup_index)

    return manager
