"""Connecting Piccolo to SQLite or PostgreSQL and applying migrations."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sqlite3
from urllib.parse import urlsplit

import asyncpg
from piccolo.apps.migrations.commands.forwards import ForwardsMigrationManager
from piccolo.apps.migrations.tables import Migration
from piccolo.engine.base import Engine
from piccolo.engine.postgres import PostgresEngine
from piccolo.engine.sqlite import SQLiteEngine, TransactionType

from corebase import piccolo_conf
from corebase.errors import ConfigError
from corebase.piccolo_app import TABLES
from corebase.settings import Settings

logger = logging.getLogger(__name__)

os.environ.setdefault("PICCOLO_CONF", "corebase.piccolo_conf")

SQLITE_FILE = "corebase.sqlite"
# Seconds a write waits for another writer before SQLite gives up with "database is locked",
# which the API answers with 503 (sqlite3's default is 5, too short for a loaded machine).
SQLITE_BUSY_TIMEOUT = 30.0


def create_engine(settings: Settings) -> Engine:
    """Build the engine for `database.url`: PostgreSQL for postgres URLs, SQLite otherwise."""
    url = settings.database.url
    if not url:
        data_dir = settings.data_path
        data_dir.mkdir(parents=True, exist_ok=True)
        return SQLiteEngine(path=str(data_dir / SQLITE_FILE), timeout=SQLITE_BUSY_TIMEOUT)

    if urlsplit(url).scheme == "sqlite":
        return SQLiteEngine(path=url.split("://", 1)[1], timeout=SQLITE_BUSY_TIMEOUT)
    # load_settings accepts only sqlite and postgres URLs.
    return PostgresEngine(config={"dsn": url}, log_queries=False)


async def connect(settings: Settings) -> Engine:
    """Create the engine, open its pool and point every CoreBase table (and Piccolo's) at it.

    Raises ConfigError naming the database when it cannot be reached or opened.
    """
    try:
        engine = create_engine(settings)
        if isinstance(engine, PostgresEngine):
            await engine.start_connection_pool(min_size=1, max_size=10)
        else:
            # WAL lets readers proceed while a writer commits; the mode is stored in the file itself.
            await engine.run_ddl("PRAGMA journal_mode=WAL")
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, sqlite3.Error) as exc:
        fix = (
            "check COREBASE_DATABASE_URL, and that the database server runs and accepts its credentials"
            if settings.database.url
            else "check that --data-dir (setting server.data_dir) names a directory CoreBase can write"
        )
        raise ConfigError(f"cannot open the database {describe(settings)}: {str(exc) or type(exc).__name__}; {fix}") from None

    piccolo_conf.DB = engine
    for table in (*TABLES, Migration):
        table._meta.db = engine
    logger.info("database connected: %s", describe(settings))
    return engine


async def disconnect(engine: Engine) -> None:
    if isinstance(engine, PostgresEngine):
        await engine.close_connection_pool()


# Key of the PostgreSQL advisory lock that serialises migrations between processes.
MIGRATION_LOCK_KEY = 0x636F7265  # "core" in ASCII


async def migrate() -> list[str]:
    """Apply pending migrations to the connected database; return the ids applied.

    On PostgreSQL an advisory lock makes processes that start together migrate one after another,
    so the second finds the work done. SQLite serialises writers by itself.
    """
    engine = piccolo_conf.DB
    if not isinstance(engine, PostgresEngine):
        return await _migrate()
    connection = await asyncpg.connect(engine.config["dsn"])
    try:
        await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            return await _migrate()
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await connection.close()


async def _migrate() -> list[str]:
    manager = ForwardsMigrationManager(app_name="corebase")
    await manager.create_migration_table()
    before = set(await Migration.get_migrations_which_ran(app_name="corebase"))

    # Piccolo prints progress to stdout; CoreBase reports through its logger instead.
    with contextlib.redirect_stdout(io.StringIO()) as output:
        result = await manager.run()
    if not result.success:
        raise RuntimeError(f"database migration failed: {result.message}\n{output.getvalue()}")

    applied = sorted(set(await Migration.get_migrations_which_ran(app_name="corebase")) - before)
    for migration_id in applied:
        logger.info("applied migration %s", migration_id)
    return applied


async def pending_migrations() -> list[str]:
    """Return the ids of migrations not yet applied to the connected database."""
    manager = ForwardsMigrationManager(app_name="corebase")
    await manager.create_migration_table()
    app_config = manager.get_app_config("corebase")
    known = manager.get_migration_ids(manager.get_migration_modules(app_config.resolved_migrations_folder_path))
    ran = set(await Migration.get_migrations_which_ran(app_name="corebase"))
    return [migration_id for migration_id in known if migration_id not in ran]


def write_transaction():
    """Open a transaction for a read-then-write step, such as a limit check followed by an insert.

    On SQLite it is an immediate transaction, which takes the write lock at BEGIN, so no other
    writer can change what the step reads before it commits. PostgreSQL's default transaction
    does not serialise such steps; callers there add a lock of their own.
    """
    engine = piccolo_conf.DB
    if isinstance(engine, SQLiteEngine):
        return engine.transaction(transaction_type=TransactionType.immediate)
    return engine.transaction()


async def ping(engine: Engine) -> None:
    """Run a trivial query; raises the driver's error when the database cannot be reached."""
    await engine.run_ddl("SELECT 1")


def describe(settings: Settings) -> str:
    """Name the database without its password, for logs."""
    url = settings.database.url
    if not url:
        return f"sqlite {settings.data_path / SQLITE_FILE}"
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
