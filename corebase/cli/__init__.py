"""The `corebase` command (also `python -m corebase`).

`serve`, `migrate` and `audit verify` run on the server's machine with its settings and database.
`login`, `logout`, `containers`, `templates`, `pools`, `users` and `keys` send requests to a
server through the Python client in `corebase.client`. docs/cli.md describes them and their exit
codes.
"""

from __future__ import annotations

import argparse

from corebase import __version__
from corebase.cli import containers, login, resources, server
from corebase.cli.context import client_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corebase", description="Self-hosted control plane for developer containers.")
    parser.add_argument("--version", action="version", version=f"corebase {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    server.register(commands)
    login.register(commands)
    options = client_options()
    containers.register(commands, options)
    resources.register(commands, options)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        # argparse exits 2 on a usage error and 0 after --help; return the code so callers can test it.
        return exc.code if isinstance(exc.code, int) else 2
    return args.run(args)
