"""The interactive exec WebSocket at /api/runtime/exec/ws.

The client names the container in the query (`containerId`) and the command either in the query
(`command`, repeated for each argument, with `tty`, `cols`, `rows`, `workdir`, `user` and `env` as
KEY=VALUE, repeated) or in its first message:

    {"type": "start", "command": ["sh"], "tty": true, "cols": 80, "rows": 24, "env": {"A": "1"}}

Once the command runs, the server sends {"type": "started", "tty": true}. Then the client sends
stdin as binary messages, or as {"type": "stdin", "data": "ls\\n"}, and controls the session
with {"type": "resize", "cols": 120, "rows": 40}, {"type": "signal", "name": "INT"} and
{"type": "eof"}, which closes stdin. The server sends output as {"type": "output",
"stream": "stdout", "data": "..."}: with a TTY everything is stdout, as the terminal sent it;
without one stdout and stderr stay apart. Output is decoded as UTF-8, each stream on its own, so a
character split between two pieces arrives whole, and invalid bytes become U+FFFD. The last
message is {"type": "exit", "exitCode": 0}, and then the server closes the connection normally
(1000). An invalid message gets {"type": "error", "field": ..., "detail": ...} and the session
goes on. A refusal at the start is an error message and a close with the status plus 4000, such
as 4404 for a container that does not exist or belongs to another user.

Signals: with a TTY, INT, QUIT and TSTP are sent as the terminal's control characters (Ctrl-C,
Ctrl-\\ and Ctrl-Z), which reach the foreground process as a keyboard's would. Every other signal,
and every signal without a TTY, goes to the command and the processes it started that kept its
environment, by a second exec that needs `sh`, `tr`, `grep` and `kill` in the image (busybox has
them). When the client leaves before the command ends, the command's processes are killed.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Annotated

import msgspec
from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect

from corebase.api.audit_recorder import AUDIT_DETAILS
from corebase.api.schemas import Argv
from corebase.api.sockets import encode, error_message, query_flag, reject, run_until_disconnect
from corebase.auth.access import READ_WRITE
from corebase.auth.caller import Caller
from corebase.containers.service import ContainerService
from corebase.containers.spec import check_user
from corebase.errors import ApiError, InvalidField
from corebase.runtime.protocol import ExecSession
from corebase.runtime.text import TextDecoder
from corebase.runtime.types import EXEC_SIGNALS

logger = logging.getLogger(__name__)

# Seconds a client has to send its start message when the query names no command.
START_WAIT = 30.0
TerminalSize = Annotated[int, msgspec.Meta(ge=1, le=10_000)]


class ExecStart(msgspec.Struct, tag_field="type", tag="start", rename="camel", forbid_unknown_fields=True, kw_only=True):
    command: Argv
    tty: bool = False
    env: dict[str, str] = {}
    workdir: str | None = None
    user: str | None = None
    cols: TerminalSize | None = None
    rows: TerminalSize | None = None


class Stdin(msgspec.Struct, tag_field="type", tag="stdin", forbid_unknown_fields=True):
    data: str


class Resize(msgspec.Struct, tag_field="type", tag="resize", forbid_unknown_fields=True):
    cols: TerminalSize
    rows: TerminalSize


class Signal(msgspec.Struct, tag_field="type", tag="signal", forbid_unknown_fields=True):
    name: str


class Eof(msgspec.Struct, tag_field="type", tag="eof", forbid_unknown_fields=True):
    pass


ClientMessage = ExecStart | Stdin | Resize | Signal | Eof
MESSAGE_TYPES: tuple[str, ...] = ("start", "stdin", "resize", "signal", "eof")


@websocket(
    "/api/runtime/exec/ws",
    summary="Run an interactive command in a running container",
    description="Needs the developer role. Query: containerId, and optionally command (repeated), tty, cols, "
    "rows, workdir, user and env (KEY=VALUE, repeated); without command, the first message is "
    '{"type": "start", "command": [...], ...}. Client messages: binary stdin, {"type": "stdin", "data"}, '
    '{"type": "resize", "cols", "rows"}, {"type": "signal", "name"} and {"type": "eof"}. Server messages: '
    '{"type": "started", "tty"}, {"type": "output", "stream", "data"}, {"type": "error", ...} and last '
    '{"type": "exit", "exitCode"}.',
    opt={"access": READ_WRITE, "audit_sessions": True, "audit_action": "runtime.exec.session"},
)
async def exec_socket(socket: WebSocket) -> None:
    caller: Caller = socket.user
    containers: ContainerService = socket.app.state.containers
    await socket.accept()
    try:
        container_id = socket.query_params.get("containerId")
        if not container_id:
            raise InvalidField("containerId", "containerId is missing; name the container to run the command in", status=400)
        start = await _read_start(socket)
        # open_exec checks env and workdir as POST /start does; the user is checked here.
        check_user(start.user)
        row, session = await containers.open_exec(
            caller,
            container_id,
            start.command,
            tty=start.tty,
            env=start.env,
            workdir=start.workdir,
            user=start.user,
            cols=start.cols,
            rows=start.rows,
        )
    except ApiError as exc:
        await reject(socket, exc)
        return

    details: dict = {"tty": start.tty, "exitCode": None}
    socket.scope[AUDIT_DETAILS] = details  # type: ignore[literal-required]
    try:
        await socket.send_text(encode({"type": "started", "tty": start.tty}).decode())
        async with containers.activity.session(row.id):
            await run_until_disconnect(socket, _read_client(socket, session), _forward_output(socket, session, details))
    finally:
        await asyncio.shield(session.close())


async def _read_start(socket: WebSocket) -> ExecStart:
    """Read the session's command from the query, or else from the client's first message."""
    query = socket.query_params
    if query.getall("command", []):
        try:
            return msgspec.convert(
                {
                    "type": "start",
                    "command": query.getall("command"),
                    "tty": query_flag(query, "tty", False),
                    "env": _query_env(query.getall("env", [])),
                    "workdir": query.get("workdir"),
                    "user": query.get("user"),
                    "cols": query.get("cols"),
                    "rows": query.get("rows"),
                },
                ExecStart,
                strict=False,
            )
        except msgspec.ValidationError as exc:
            raise _invalid(exc, 400) from None

    try:
        async with asyncio.timeout(START_WAIT):
            event = await socket.receive()
    except TimeoutError:
        raise InvalidField(
            "command", f"no start message within {START_WAIT:g} s; send {{\"type\": \"start\", \"command\": [...]}} first",
            status=400,
        ) from None
    if event["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(detail="the client left before starting a command")
    message = _decode(event)
    if not isinstance(message, ExecStart):
        raise InvalidField(
            "type", 'the first message must be {"type": "start", "command": [...]} when the query names no command',
            status=400,
        )
    return message


async def _read_client(socket: WebSocket, session: ExecSession) -> None:
    """Pass the client's stdin and control messages to the session until the client leaves."""
    stdin_open = True
    while True:
        event = await socket.receive()
        if event["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(detail="the client closed the connection")
        try:
            message = _decode(event)
            if isinstance(message, (bytes, Stdin)) and not stdin_open:
                raise InvalidField("type", 'stdin is closed after {"type": "eof"}; no more input is accepted')
            if isinstance(message, bytes):
                await session.write(message)
            elif isinstance(message, Stdin):
                await session.write(message.data.encode())
            elif isinstance(message, Resize):
                if not session.tty:
                    raise InvalidField("type", "resize needs a session with tty true; this one has no terminal")
                await session.resize(message.cols, message.rows)
            elif isinstance(message, Signal):
                await session.signal(_signal_name(message.name))
            elif isinstance(message, Eof):
                if stdin_open:
                    stdin_open = False
                    await session.close_stdin()
            else:
                raise InvalidField("type", "the session has started already; send stdin, resize, signal or eof")
        except InvalidField as exc:
            await socket.send_text(error_message(exc.field, exc.detail, exc.status).decode())
        except OSError as exc:
            # The command ended, or closed its stdin, while input was on its way.
            logger.debug("stdin of an exec session could not be written: %r", exc)
            stdin_open = False
            await socket.send_text(error_message("type", "stdin is closed: the command no longer reads it", 409).decode())
        except ApiError as exc:
            await reject(socket, exc)
            return


async def _forward_output(socket: WebSocket, session: ExecSession, details: dict) -> None:
    """Send the command's output as it comes, then its exit code, then close the connection."""
    decoder = TextDecoder()
    try:
        while (chunk := await session.read()) is not None:
            if text := decoder.decode(chunk.stream, chunk.data):
                await _send_output(socket, chunk.stream, text)
        for stream in ("stdout", "stderr"):
            if text := decoder.finish(stream):
                await _send_output(socket, stream, text)
        details["exitCode"] = await session.exit_code()
    except ApiError as exc:
        logger.warning("exec session output broke off: %s", exc)
        await reject(socket, exc)
        return
    await socket.send_text(encode({"type": "exit", "exitCode": details["exitCode"]}).decode())
    await socket.close(code=1000)


async def _send_output(socket: WebSocket, stream: str, text: str) -> None:
    await socket.send_text(encode({"type": "output", "stream": stream, "data": text}).decode())


def _decode(event: dict) -> ClientMessage | bytes:
    """Return a binary message's bytes, or the client message a text message contains."""
    if event.get("bytes") is not None:
        return event["bytes"]
    try:
        return msgspec.json.decode(event.get("text") or "", type=ClientMessage)
    except msgspec.ValidationError as exc:
        raise _invalid(exc, 422) from None
    except msgspec.DecodeError:
        raise InvalidField(
            None, 'text messages must be JSON objects such as {"type": "stdin", "data": "ls\\n"}; send raw stdin as binary'
        ) from None


def _invalid(exc: msgspec.ValidationError, status: int) -> InvalidField:
    """Name the field msgspec found invalid, or the message type when the type tag is unknown."""
    message = str(exc)
    if "Invalid value" in message and "`$.type`" in message:
        return InvalidField("type", f"unknown message type; use one of {', '.join(MESSAGE_TYPES)}", status=status)
    path = re.search(r"at `\$\.(\w+)", message)
    return InvalidField(path.group(1) if path else None, f"invalid message: {message}", status=status)


def _signal_name(name: str) -> str:
    plain = name.upper().removeprefix("SIG")
    if plain not in EXEC_SIGNALS:
        raise InvalidField("name", f"unknown signal {name!r}; use one of {', '.join(EXEC_SIGNALS)}")
    return plain


def _query_env(values: list[str]) -> dict[str, str]:
    env = {}
    for value in values:
        name, separator, setting = value.partition("=")
        if not separator:
            raise InvalidField("env", f"env {value!r} is not KEY=VALUE; write it as env=NAME=value", status=400)
        env[name] = setting
    return env
