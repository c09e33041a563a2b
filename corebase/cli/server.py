"""`corebase serve`, `corebase migrate` and `corebase audit verify`: the commands that run on the server's machine."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from corebase import __version__
from corebase.errors import ConfigError, PluginError
from corebase.settings import Settings, load_settings

logger = logging.getLogger("corebase")


def register(commands: argparse._SubParsersAction) -> None:
    """Add serve, migrate and audit verify, which work on the local settings and database."""
    serve_parser = commands.add_parser("serve", help="run the API server")
    _add_common(serve_parser)
    serve_parser.add_argument("--host", help="address to listen on (default 127.0.0.1, setting server.host)")
    serve_parser.add_argument("--port", type=int, help="TCP port to listen on (default 8420, setting server.port)")
    serve_parser.set_defaults(run=run_server_command)

    migrate_parser = commands.add_parser("migrate", help="apply pending database migrations and exit")
    _add_common(migrate_parser)
    migrate_parser.set_defaults(run=run_server_command)

    audit = commands.add_parser("audit", help="work with the audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verify = audit_commands.add_parser(
        "verify", help="check the local audit log's hash chain; exit 1 naming the first broken record"
    )
    _add_common(verify)
    verify.set_defaults(run=run_server_command)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML settings file (default: $COREBASE_CONFIG, if set)")
    parser.add_argument("--data-dir", help="directory for the SQLite database and generated keys (setting server.data_dir)")


def run_server_command(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, overrides=_overrides(args))
        configure_logging(settings)
        if args.command == "serve":
            return serve(settings)
        if args.command == "audit":
            return asyncio.run(verify_audit(settings))
        return asyncio.run(migrate(settings))
    except (ConfigError, PluginError) as exc:
        print(f"corebase: {exc}", file=sys.stderr)
        return 2


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    server: dict[str, Any] = {}
    if args.data_dir:
        server["data_dir"] = args.data_dir
    if getattr(args, "host", None):
        server["host"] = args.host
    if getattr(args, "port", None) is not None:
        server["port"] = args.port
    return {"server": server} if server else {}


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("corebase").setLevel(settings.server.log_level.upper())
    for name in ("corebase_docker", "corebase_policies", "corebase_templates", "corebase_pool", "corebase_metrics"):
        logging.getLogger(name).setLevel(settings.server.log_level.upper())


def serve(settings: Settings) -> int:
    import uvicorn

    from corebase.app import create_app
    from corebase.server import CoreBaseServer, limit_malloc_arenas, run

    limit_malloc_arenas()
    app = create_app(settings)
    logger.info("CoreBase %s listening on http://%s:%s", __version__, settings.server.host, settings.server.port)
    config = uvicorn.Config(
        _plain_startup_errors(app),
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level,
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=30,
        # Compressing every event for every WebSocket client costs more CPU and memory than it saves.
        ws_per_message_deflate=False,
    )
    server = CoreBaseServer(config, app)
    run(server)
    # uvicorn exits quietly when start-up fails; report it as a failure to the shell.
    return 0 if server.started else 1


def _plain_startup_errors(app):
    """Wrap the app so that a known start-up failure is logged as its message, not as a traceback.

    Litestar reports a failed start-up to uvicorn with the formatted traceback; for the errors the
    lifespan records in `app.state.startup_error` (settings, migrations, unreachable services)
    the message alone says what to fix.
    """

    async def asgi(scope, receive, send):
        if scope["type"] != "lifespan":
            return await app(scope, receive, send)

        async def send_plain(message):
            error = app.state.get("startup_error")
            if message["type"] == "lifespan.startup.failed" and error:
                message = {**message, "message": f"CoreBase could not start: {error}"}
            await send(message)

        return await app(scope, receive, send_plain)

    return asgi


async def migrate(settings: Settings) -> int:
    from corebase import db

    engine = await db.connect(settings)
    try:
        applied = await db.migrate()
    finally:
        await db.disconnect(engine)
    if applied:
        print(f"applied {len(applied)} migration(s): {', '.join(applied)}")
    else:
        print("the database is up to date")
    return 0


async def verify_audit(settings: Settings) -> int:
    """Walk the audit log's hash chain; return 0 when it is intact and 1 at the first break."""
    from corebase import db
    from corebase.audit.log import verify_chain

    import sqlite3

    import asyncpg

    engine = await db.connect(settings)
    try:
        count, broken = await verify_chain()
    except (sqlite3.OperationalError, asyncpg.UndefinedTableError) as exc:
        raise ConfigError(
            f"cannot read the audit log of {db.describe(settings)}: {exc}; check --data-dir or "
            "COREBASE_DATABASE_URL, and run 'corebase migrate' if the database is new"
        ) from None
    finally:
        await db.disconnect(engine)
    if broken is not None:
        print(
            f"audit log broken at record {broken.record_id}: {broken.reason} "
            f"({count} records verified before the break was found)",
            file=sys.stderr,
        )
        return 1
    print(f"audit log intact: {count} records verified")
    return 0
