"""Output of the client commands, and the exit codes they return.

Human output goes through rich: tables and values on stdout, notes, errors and spinners on
stderr. With `--json`, stdout gets the API's JSON response (camelCase, as the HTTP API sends
it) and an error goes to stderr as its RFC 9457 problem-details object.
"""

from __future__ import annotations

import contextlib
import enum
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

import msgspec

from corebase.client.errors import (
    ApiError,
    ClientError,
    ConfigurationError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    NotFound,
    PolicyDenied,
    QuotaExceeded,
    RateLimited,
    ServerError,
    Unauthorized,
)


class ExitCode(enum.IntEnum):
    """Exit codes of the client commands; docs/cli.md has the same table."""

    OK = 0
    # The server rejected the request (4xx) for a reason without its own code below.
    REJECTED = 1
    # Invalid command line, no stored login, or an unreadable input file.
    USAGE = 2
    # The server could not be reached, failed (5xx) or asked to slow down (429): retrying may help.
    UNAVAILABLE = 3
    NOT_FOUND = 4
    # The API key is missing, invalid, expired or revoked (401), or its role does not allow the request (403).
    UNAUTHORIZED = 5
    # A name in use, or a container in the wrong state (409).
    CONFLICT = 6
    # `containers exec`: the command ran past its timeout and has no exit code, as with timeout(1).
    EXEC_TIMED_OUT = 124
    # Interrupted by Ctrl-C (SIGINT), as shells report it.
    INTERRUPTED = 130


def exit_code_for(error: ClientError) -> ExitCode:
    if isinstance(error, ConfigurationError):
        return ExitCode.USAGE
    if isinstance(error, (ConnectionFailed, ServerError, RateLimited)):
        return ExitCode.UNAVAILABLE
    if isinstance(error, NotFound):
        return ExitCode.NOT_FOUND
    if isinstance(error, Conflict):
        return ExitCode.CONFLICT
    # A policy or quota denial is about the request, not the key: another request may pass.
    if isinstance(error, Unauthorized) or (
        isinstance(error, Forbidden) and not isinstance(error, (PolicyDenied, QuotaExceeded))
    ):
        return ExitCode.UNAUTHORIZED
    return ExitCode.REJECTED


# A column of a table: its header, and how to read its cell from a record.
Column = tuple[str, Callable[[Any], Any]]


class Output:
    def __init__(self, json_mode: bool = False) -> None:
        self.json_mode = json_mode

    @property
    def stdout(self):
        from rich.console import Console

        # Created on each use, so output follows sys.stdout when a caller (or pytest) replaces it.
        # A pipe gets the full width, so that scripts reading a table see whole cells.
        console = Console(file=sys.stdout, markup=False, emoji=False, highlight=False)
        if not console.is_terminal:
            console.width = 10_000
        return console

    @property
    def stderr(self):
        from rich.console import Console

        return Console(file=sys.stderr, markup=False, emoji=False, highlight=False)

    def json(self, value: Any) -> None:
        """Write a value as indented JSON, with the API's field names."""
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")
        sys.stdout.flush()

    def line(self, text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def note(self, text: str) -> None:
        """Tell the person at the terminal something on stderr, which scripts reading stdout never see."""
        self.stderr.print(text, soft_wrap=True)

    def result(self, value: Any, human: Callable[[], None]) -> None:
        """Print `value` as JSON in --json mode, else call `human` to print it for people."""
        if self.json_mode:
            self.json(value)
        else:
            human()

    def table(self, records: Sequence[Any], columns: Sequence[Column], empty: str) -> None:
        from rich import box
        from rich.table import Table

        if not records:
            self.note(empty)
            return
        table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, show_edge=False)
        for header, _ in columns:
            table.add_column(header, overflow="fold")
        for record in records:
            table.add_row(*(cell(read(record)) for _, read in columns))
        self._print_table(table)

    def fields(self, record: Any, names: Sequence[str] | None = None) -> None:
        """Print a record's fields as two columns, name and value, with the API's camelCase names."""
        from rich import box
        from rich.table import Table

        values = {field.encode_name: getattr(record, field.name) for field in msgspec.structs.fields(record)}
        table = Table(box=box.SIMPLE, show_header=False, pad_edge=False, show_edge=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for name in names or values:
            table.add_row(name, cell(values.get(name)))
        self._print_table(table)

    def _print_table(self, table: Any) -> None:
        # rich pads every row to the table's width; trailing spaces only get in the way of scripts.
        console = self.stdout
        with console.capture() as captured:
            console.print(table)
        sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
        sys.stdout.flush()

    @contextlib.contextmanager
    def waiting(self, text: str) -> Iterator[None]:
        """Show a spinner on a terminal's stderr while the block runs; print nothing elsewhere."""
        console = self.stderr
        if self.json_mode or not console.is_terminal:
            yield
            return
        with console.status(text):
            yield

    def error(self, error: ClientError) -> None:
        if self.json_mode and isinstance(error, ApiError):
            sys.stderr.write(msgspec.json.encode(error.problem).decode() + "\n")
            return
        self.stderr.print(f"corebase: {error}", soft_wrap=True)
        if isinstance(error, PolicyDenied):
            for reason in error.reasons:
                self.stderr.print(f"  - {reason.get('policy')}: {reason.get('reason')}", soft_wrap=True)
        if isinstance(error, ApiError) and error.retry_after is not None:
            self.stderr.print(f"  retry after {error.retry_after:g} s", soft_wrap=True)


def cell(value: Any) -> str:
    """Render one value for a table: times in UTC to the second, lists and mappings compactly, None as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, (list, tuple)):
        return " ".join(cell(item) for item in value)
    if isinstance(value, dict):
        return ", ".join(f"{key}={cell(item)}" for key, item in value.items())
    if isinstance(value, msgspec.Struct):
        return cell(msgspec.to_builtins(value))
    return str(value)
