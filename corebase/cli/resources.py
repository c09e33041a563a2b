"""`corebase templates`, `pools`, `users` and `keys`."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

from corebase.cli.context import Context, UsageError, command, identifier
from corebase.cli.output import Column
from corebase.client.errors import NotFound

ROLES = ("viewer", "developer", "admin")
CATEGORIES = ("runtime", "database", "static", "system", "custom")

TEMPLATE_COLUMNS: list[Column] = [
    ("NAME", lambda record: record.name),
    ("VERSION", lambda record: record.version),
    ("CATEGORY", lambda record: record.category),
    ("IMAGE", lambda record: record.image),
    ("OWNER", lambda record: "built-in" if record.builtin else record.owner),
    ("DESCRIPTION", lambda record: record.description),
]
POOL_COLUMNS: list[Column] = [
    ("TEMPLATE", lambda record: record.template),
    ("IDLE", lambda record: record.idle),
    ("STARTING", lambda record: record.in_flight),
    ("TARGET", lambda record: record.target),
    ("MIN IDLE", lambda record: record.min_idle),
    ("MAX IDLE", lambda record: record.max_idle),
    ("MAX TOTAL", lambda record: record.max_total),
    ("HITS", lambda record: record.hits),
    ("MISSES", lambda record: record.misses),
    ("LAST ERROR", lambda record: record.last_error),
]
USER_COLUMNS: list[Column] = [
    ("NAME", lambda record: record.name),
    ("ROLE", lambda record: record.role),
    ("CREATED", lambda record: record.created_at),
    ("DISABLED", lambda record: record.disabled_at),
]
KEY_COLUMNS: list[Column] = [
    ("ID", lambda record: record.id),
    ("NAME", lambda record: record.name),
    ("USER", lambda record: record.user),
    ("SCOPES", lambda record: record.scopes or "(role)"),
    ("PREFIX", lambda record: record.prefix),
    ("LAST USED", lambda record: record.last_used_at),
    ("EXPIRES", lambda record: record.expires_at),
    ("REVOKED", lambda record: record.revoked_at),
]


def register(commands: argparse._SubParsersAction, options: argparse.ArgumentParser) -> None:
    _register_templates(commands, options)
    _register_pools(commands, options)
    _register_users(commands, options)
    _register_keys(commands, options)


def _group(commands: argparse._SubParsersAction, name: str, summary: str) -> argparse._SubParsersAction:
    parser = commands.add_parser(name, help=summary)
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


# --- templates -----------------------------------------------------------------------------------


def _register_templates(commands: argparse._SubParsersAction, options: argparse.ArgumentParser) -> None:
    templates = _group(commands, "templates", "list, show and create container templates")

    ls = templates.add_parser("ls", parents=[options], help="list the built-in and your own templates")
    ls.add_argument("--category", choices=CATEGORIES, help="only this category")
    command(ls, lambda context: _list(context, context.client.templates.list(category=context.args.category), TEMPLATE_COLUMNS, "no templates"))

    show = templates.add_parser("show", parents=[options], help="show a template")
    show.add_argument("name", type=identifier, help="template name")
    show.add_argument("--version", type=int, help="an earlier version (default: the latest)")
    command(show, lambda context: _show(context, context.client.templates.get(context.args.name, version=context.args.version)))

    create = templates.add_parser(
        "create",
        parents=[options],
        help="create a custom template from a JSON or TOML file",
        description="Create a custom template. The file contains the API's template fields (name, image, "
        "command, env, ports, memory, maxMemory, ...): TOML when its name ends in .toml, else JSON; "
        "'-' reads JSON from stdin.",
    )
    create.add_argument("-f", "--file", required=True, help="template file, or - for stdin")
    command(create, run_template_create)


def run_template_create(context: Context) -> None:
    record = context.client.templates.create(read_document(context.args.file))
    context.out.result(record, lambda: context.out.note(f"Created template {record.name!r} version {record.version}"))


def read_document(name: str) -> dict[str, Any]:
    """Read a JSON object from a file or stdin ('-'), or a TOML document from a .toml file."""
    try:
        if name == "-":
            document = json.load(sys.stdin)
        elif name.endswith(".toml"):
            document = tomllib.loads(Path(name).read_text(encoding="utf-8"))
        else:
            document = json.loads(Path(name).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from None
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        kind = "TOML" if name.endswith(".toml") else "JSON"
        raise UsageError(f"{name} is not valid {kind}: {exc}") from None
    if not isinstance(document, dict):
        raise UsageError(f"{name} contains a JSON {type(document).__name__}, but a template is an object")
    return document


# --- pools ---------------------------------------------------------------------------------------


def _register_pools(commands: argparse._SubParsersAction, options: argparse.ArgumentParser) -> None:
    pools = _group(commands, "pools", "list, show, configure and remove pre-warmed pools")

    ls = pools.add_parser("ls", parents=[options], help="list pools with their sizes and claim figures")
    command(ls, lambda context: _list(context, context.client.pools.list(), POOL_COLUMNS, "no pools"))

    show = pools.add_parser("show", parents=[options], help="show a pool")
    show.add_argument("template", type=identifier, help="template whose pool to show")
    command(show, lambda context: _show(context, context.client.pools.get(context.args.template)))

    set_ = pools.add_parser(
        "set",
        parents=[options],
        help="create a pool, or change the options given and keep the others",
    )
    set_.add_argument("template", type=identifier, help="template to keep members of")
    set_.add_argument("--min-idle", type=int, help="idle members to keep at least")
    set_.add_argument("--max-idle", type=int, help="idle members to keep at most")
    set_.add_argument("--max-total", type=int, help="members, idle and starting, at most")
    set_.add_argument("--idle-ttl", type=float, help="seconds an idle member may wait before it is replaced")
    command(set_, run_pool_set)

    rm = pools.add_parser("rm", parents=[options], help="delete a pool and its unclaimed members")
    rm.add_argument("template", type=identifier, help="template whose pool to delete")
    command(rm, run_pool_rm)


def run_pool_set(context: Context) -> None:
    args, pools = context.args, context.client.pools
    # The API replaces a pool's whole configuration, so carry over what the command leaves out.
    options = ("min_idle", "max_idle", "max_total", "idle_ttl")
    try:
        current = pools.get(args.template)
        configuration = {option: getattr(current, option) for option in options}
    except NotFound:
        configuration = {}
    for option in options:
        if getattr(args, option) is not None:
            configuration[option] = getattr(args, option)
    _show(context, pools.set(args.template, **configuration))


def run_pool_rm(context: Context) -> None:
    context.client.pools.delete(context.args.template)
    _done(context, {"template": context.args.template, "deleted": True}, f"Deleted the pool of {context.args.template!r}")


# --- users ---------------------------------------------------------------------------------------


def _register_users(commands: argparse._SubParsersAction, options: argparse.ArgumentParser) -> None:
    users = _group(commands, "users", "list, create, change and disable users (admin)")

    ls = users.add_parser("ls", parents=[options], help="list users")
    command(ls, lambda context: _list(context, context.client.users.list(), USER_COLUMNS, "no users"))

    create = users.add_parser("create", parents=[options], help="create a user; give it a key with `corebase keys create`")
    create.add_argument("name", type=identifier, help="user name")
    create.add_argument("--role", choices=ROLES, default="developer", help="role (default: %(default)s)")
    command(create, lambda context: _show(context, context.client.users.create(context.args.name, role=context.args.role)))

    set_role = users.add_parser("set-role", parents=[options], help="change a user's role")
    set_role.add_argument("name", type=identifier, help="user name")
    set_role.add_argument("role", choices=ROLES, help="new role")
    command(set_role, lambda context: _show(context, context.client.users.update(context.args.name, role=context.args.role)))

    for name, disabled, summary in (
        ("disable", True, "disable a user, whose keys stop working"),
        ("enable", False, "enable a disabled user again"),
    ):
        parser = users.add_parser(name, parents=[options], help=summary)
        parser.add_argument("name", type=identifier, help="user name")
        parser.set_defaults(disabled=disabled)
        command(parser, lambda context: _show(context, context.client.users.update(context.args.name, disabled=context.args.disabled)))


# --- keys ----------------------------------------------------------------------------------------


def _register_keys(commands: argparse._SubParsersAction, options: argparse.ArgumentParser) -> None:
    keys = _group(commands, "keys", "list, create and revoke API keys")

    ls = keys.add_parser("ls", parents=[options], help="list your keys (an admin: every key)")
    ls.add_argument("--user", help="only this user's keys (admin)")
    command(ls, lambda context: _list(context, context.client.keys.list(user=context.args.user), KEY_COLUMNS, "no keys"))

    create = keys.add_parser("create", parents=[options], help="create a key; prints its secret, which is shown once")
    create.add_argument("name", type=identifier, help="what the key is for, such as 'ci'")
    create.add_argument(
        "--scope", action="append", choices=("read", "write", "admin"), dest="scopes",
        help="narrow the key to this scope (repeatable; default: everything the role allows)",
    )
    create.add_argument("--expires-in", type=float, help="seconds until the key expires (default: never)")
    create.add_argument("--user", help="user to create the key for (admin; default: you)")
    command(create, run_key_create)

    revoke = keys.add_parser("revoke", parents=[options], help="revoke a key")
    revoke.add_argument("key_id", type=identifier, metavar="ID", help="key id, such as key_...")
    command(revoke, lambda context: _show(context, context.client.keys.revoke(context.args.key_id)))


def run_key_create(context: Context) -> None:
    args = context.args
    record = context.client.keys.create(args.name, scopes=args.scopes, expires_in=args.expires_in, user=args.user)

    def human() -> None:
        context.out.line(record.secret)
        context.out.note(f"Created key {record.id} for {record.user}; the secret above is shown only once")

    context.out.result(record, human)


# --- shared --------------------------------------------------------------------------------------


def _list(context: Context, records: list[Any], columns: list[Column], empty: str) -> None:
    context.out.result(records, lambda: context.out.table(records, columns, empty))


def _show(context: Context, record: Any) -> None:
    context.out.result(record, lambda: context.out.fields(record))


def _done(context: Context, summary: dict[str, Any], message: str) -> None:
    context.out.result(summary, lambda: context.out.note(message))
