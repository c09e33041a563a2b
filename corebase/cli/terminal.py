"""`corebase containers exec -i/-t`: an interactive session, with the local terminal in raw mode.

The local terminal is switched to raw mode while a TTY session runs, so every key, Ctrl-C
included, goes to the command in the container, as with `docker exec -it`. The terminal size is
sent at the start and again on each SIGWINCH. Without -i, the command's stdin is closed at once.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import sys
import termios
import threading
import tty
from collections.abc import Iterator

from corebase.client import Client
from corebase.client.errors import ClientError
from corebase.client.sessions import ExecSession

# Seconds the input loop waits for a key before it checks the output and the terminal size again.
POLL_INTERVAL = 0.1
# Bytes read from stdin at a time.
READ_SIZE = 4096


def run_session(
    client: Client,
    container: str,
    command: list[str],
    *,
    interactive: bool,
    terminal: bool,
    env: dict[str, str] | None,
    workdir: str | None,
    user: str | None,
) -> int | None:
    """Run `command` in the container with this process's stdin, stdout and stderr; return its exit code."""
    stdin = sys.stdin.fileno()
    raw = terminal and interactive and os.isatty(stdin)
    cols, rows = _terminal_size(stdin) if terminal else (None, None)
    session = client.containers.session(
        container, command, tty=terminal, env=env, workdir=workdir, user=user, cols=cols, rows=rows
    )
    assert isinstance(session, ExecSession)

    with session:
        printer = _OutputPrinter(session)
        printer.start()
        if not interactive:
            session.close_stdin()
        with _raw_mode(stdin) if raw else contextlib.nullcontext(), _window_changes(terminal) as resized:
            _pump_input(session, printer, stdin if interactive else None, resized)
        printer.join()
    if printer.error is not None:
        raise printer.error
    return session.exit_code


def _pump_input(session: ExecSession, printer: _OutputPrinter, stdin: int | None, resized: threading.Event) -> None:
    """Send stdin to the session until the command exits, and the terminal size whenever it changes."""
    while printer.is_alive():
        if resized.is_set():
            resized.clear()
            session.resize(*_terminal_size(stdin if stdin is not None else sys.stdout.fileno()))
        if stdin is None:
            printer.join(POLL_INTERVAL)
            continue
        ready, _, _ = select.select([stdin], [], [], POLL_INTERVAL)
        if not ready:
            continue
        data = os.read(stdin, READ_SIZE)
        if data:
            session.send(data)
        else:
            session.close_stdin()
            stdin = None


class _OutputPrinter(threading.Thread):
    """Writes the session's output to stdout and stderr until the command exits."""

    def __init__(self, session: ExecSession) -> None:
        super().__init__(name="corebase-exec-output", daemon=True)
        self.session = session
        self.error: ClientError | None = None

    def run(self) -> None:
        try:
            for output in self.session:
                stream = sys.stderr if output.stream == "stderr" else sys.stdout
                stream.write(output.data)
                stream.flush()
        except ClientError as exc:
            self.error = exc


def _terminal_size(descriptor: int) -> tuple[int, int]:
    """Return (columns, lines) of the terminal on `descriptor`, or of stdout's, else the usual 80 by 24.

    A terminal that reports a size of 0 (as under `script` without a window) counts as 80 by 24.
    """
    try:
        size = os.get_terminal_size(descriptor)
    except OSError:
        size = shutil.get_terminal_size()
    return size.columns or 80, size.lines or 24


@contextlib.contextmanager
def _raw_mode(descriptor: int) -> Iterator[None]:
    saved = termios.tcgetattr(descriptor)
    tty.setraw(descriptor)
    try:
        yield
    finally:
        termios.tcsetattr(descriptor, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _window_changes(terminal: bool) -> Iterator[threading.Event]:
    """Yield an event that SIGWINCH sets, while the block runs; without a terminal it is never set."""
    resized = threading.Event()
    if not terminal:
        yield resized
        return
    previous = signal.signal(signal.SIGWINCH, lambda signum, frame: resized.set())
    try:
        yield resized
    finally:
        signal.signal(signal.SIGWINCH, previous)
