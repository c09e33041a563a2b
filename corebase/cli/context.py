"""Shared parts of the client commands: their options, the SDK client, the output and error handling."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from functools import cached_property

from corebase.cli.output import ExitCode, Output, exit_code_for
from corebase.client import Client
from corebase.client.errors import ClientError


class UsageError(Exception):
    """A command line that parses but cannot run, such as an unreadable input file; exits with 2."""


class Context:
    """One client command's arguments, its output, and a client built on first use."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Output(json_mode=getattr(args, "json", False))

    @cached_property
    def client(self) -> Client:
        return Client(url=getattr(self.args, "url", None), profile=getattr(self.args, "profile", None))


Handler = Callable[[Context], "int | None"]


def client_options() -> argparse.ArgumentParser:
    """Build the parent parser of the options that every client command takes."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--profile", help="stored login to use (default: $COREBASE_PROFILE, else 'default'); see `corebase login`"
    )
    options.add_argument("--url", help="server URL, such as http://127.0.0.1:8420 (default: $COREBASE_URL, else the profile's)")
    options.add_argument("--json", action="store_true", help="print the API's JSON response instead of a table")
    return options


def identifier(text: str) -> str:
    """Check a positional id or name argument, so that an empty shell variable is a usage error."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty; pass an id or a name")
    return text


def command(parser: argparse.ArgumentParser, handler: Handler) -> argparse.ArgumentParser:
    """Make `handler` the action of `parser`, run with the errors of the client turned into exit codes."""
    parser.set_defaults(run=lambda args: run(handler, args))
    return parser


def run(handler: Handler, args: argparse.Namespace) -> int:
    context = Context(args)
    try:
        code = handler(context)
    except ClientError as exc:
        context.out.error(exc)
        return exit_code_for(exc)
    except UsageError as exc:
        context.out.note(f"corebase: {exc}")
        return ExitCode.USAGE
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # The reader of stdout, such as `head`, has exited. Point stdout at /dev/null, so that
        # flushing it again at exit does not raise a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
    finally:
        if "client" in context.__dict__:
            context.client.close()
    return ExitCode.OK if code is None else code
