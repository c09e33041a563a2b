"""Interactive exec sessions over the WebSocket at /api/runtime/exec/ws, blocking or asyncio.

    with client.containers.session(box.id, ["sh"], tty=True) as shell:
        shell.send("echo hi; exit 3\n")
        for output in shell:
            print(output.data, end="")
    print(shell.exit_code)

`ExecSession` (from `Client`) and `AsyncExecSession` (from `AsyncClient`) open the connection when
their block starts. They send stdin, resize the terminal, send signals and close stdin. Iterating
over one yields the command's output until it exits, and `exit_code` then holds its exit code. A
refusal, such as a container that does not exist, raises the same `corebase.client.errors` class
as the HTTP API would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AsyncExitStack, ExitStack
from types import TracebackType
from typing import Any, Literal

import msgspec
from websockets.asyncio.client import ClientConnection as AsyncConnection
from websockets.asyncio.client import connect as connect_async
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from corebase.client.errors import ApiError, ConnectionFailed, error_class

_encode = msgspec.json.Encoder().encode


class ExecOutput(msgspec.Struct, frozen=True):
    """A piece of the command's output, decoded as UTF-8; with a TTY all of it is stdout."""

    stream: Literal["stdout", "stderr"]
    data: str


class _SessionBase:
    """The parts both sessions share: the URL, the start message, and reading the server's messages."""

    def __init__(self, url: str, headers: Mapping[str, str], start: dict[str, Any], open_timeout: float | None = 60.0) -> None:
        self.url = url
        self.headers = dict(headers)
        self.start = start
        # Seconds to wait for the connection and for the server to start the command.
        self.open_timeout = open_timeout
        self.tty = bool(start.get("tty"))
        self.exit_code: int | None = None
        self.exited = False

    def _message(self, raw: str | bytes) -> ExecOutput | None:
        """Turn one server message into output, or record the exit and return None; raise an error message."""
        message = msgspec.json.decode(raw)
        kind = message.get("type")
        if kind == "started":
            return None
        if kind == "output":
            return ExecOutput(stream=message["stream"], data=message["data"])
        if kind == "exit":
            self.exit_code = message.get("exitCode")
            self.exited = True
            return None
        if kind == "error":
            raise _error_of(message, self.url)
        raise ConnectionFailed(f"the exec session sent a message of unknown type {kind!r}: {raw!r:.200}", self.url)

    def _closed(self, exc: ConnectionClosed) -> ConnectionFailed:
        return ConnectionFailed(
            f"the exec session closed before the command exited (close code {exc.rcvd.code if exc.rcvd else 'none'})",
            self.url,
        )

    def _refused(self, exc: InvalidStatus) -> ApiError:
        response = exc.response
        try:
            problem = msgspec.json.decode(response.body or b"{}")
        except msgspec.DecodeError:
            problem = {}
        if not isinstance(problem, dict) or not problem:
            # The server refuses a WebSocket handshake without problem details.
            reason = _HANDSHAKE_REFUSALS.get(response.status_code, "")
            detail = f"the server refused the exec session with HTTP {response.status_code} {response.reason_phrase}{reason}"
            problem = {"title": response.reason_phrase, "status": response.status_code, "detail": detail}
        return error_class(response.status_code, problem.get("type"))(response.status_code, problem)

    @staticmethod
    def _control(kind: str, **fields: Any) -> str:
        return _encode({"type": kind, **fields}).decode()


class ExecSession(_SessionBase):
    """A blocking interactive exec session; open it with `with`, or `open()` and `close()`."""

    _socket: ClientConnection | None = None

    def open(self) -> ExecSession:
        """Connect, start the command, and wait until it runs; a refusal raises the matching client error."""
        stack = ExitStack()
        try:
            self._socket = stack.enter_context(
                connect(self.url, additional_headers=self.headers, max_size=None, open_timeout=self.open_timeout)
            )
            self._socket.send(_encode(self.start).decode())
            self._message(self._socket.recv(self.open_timeout))
        except InvalidStatus as exc:
            stack.close()
            raise self._refused(exc) from None
        except (OSError, TimeoutError, ConnectionClosed) as exc:
            stack.close()
            raise ConnectionFailed(f"cannot open the exec session at {self.url}: {exc}", self.url) from exc
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def send(self, data: bytes | str) -> None:
        """Write to the command's stdin: bytes as they are, text as UTF-8."""
        self._connection().send(data if isinstance(data, bytes) else self._control("stdin", data=data))

    def resize(self, cols: int, rows: int) -> None:
        """Set the size of the session's terminal; a session without a TTY has none."""
        self._connection().send(self._control("resize", cols=cols, rows=rows))

    def signal(self, name: str) -> None:
        """Send a signal such as "INT", "TERM" or "KILL" to the command."""
        self._connection().send(self._control("signal", name=name))

    def close_stdin(self) -> None:
        """Close the command's stdin, so that it reads end-of-file."""
        self._connection().send(self._control("eof"))

    def read(self, timeout: float | None = None) -> ExecOutput | None:
        """Return the next piece of output, or None once the command has exited and `exit_code` is set.

        Raises TimeoutError when `timeout` seconds pass without a message.
        """
        if self.exited:
            return None
        try:
            return self._message(self._connection().recv(timeout))
        except ConnectionClosed as exc:
            raise self._closed(exc) from None

    def wait(self) -> int | None:
        """Discard the remaining output until the command exits; return its exit code."""
        while self.read() is not None:
            pass
        return self.exit_code

    def __iter__(self) -> Iterator[ExecOutput]:
        while (output := self.read()) is not None:
            yield output

    def close(self) -> None:
        """Close the connection; a command that still runs is killed."""
        if self._socket is not None:
            self._stack.close()
            self._socket = None

    def _connection(self) -> ClientConnection:
        if self._socket is None:
            raise RuntimeError("the exec session is not open; use it in a `with` block or call open() first")
        return self._socket

    def __enter__(self) -> ExecSession:
        return self.open()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()


class AsyncExecSession(_SessionBase):
    """An asyncio interactive exec session; open it with `async with`, or `await open()` and `await close()`."""

    _socket: AsyncConnection | None = None

    async def open(self) -> AsyncExecSession:
        """Connect, start the command, and wait until it runs; a refusal raises the matching client error."""
        stack = AsyncExitStack()
        try:
            self._socket = await stack.enter_async_context(
                connect_async(self.url, additional_headers=self.headers, max_size=None, open_timeout=self.open_timeout)
            )
            await self._socket.send(_encode(self.start).decode())
            async with asyncio.timeout(self.open_timeout):
                self._message(await self._socket.recv())
        except InvalidStatus as exc:
            await stack.aclose()
            raise self._refused(exc) from None
        except (OSError, TimeoutError, ConnectionClosed) as exc:
            await stack.aclose()
            raise ConnectionFailed(f"cannot open the exec session at {self.url}: {exc}", self.url) from exc
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def send(self, data: bytes | str) -> None:
        """Write to the command's stdin: bytes as they are, text as UTF-8."""
        await self._connection().send(data if isinstance(data, bytes) else self._control("stdin", data=data))

    async def resize(self, cols: int, rows: int) -> None:
        """Set the size of the session's terminal; a session without a TTY has none."""
        await self._connection().send(self._control("resize", cols=cols, rows=rows))

    async def signal(self, name: str) -> None:
        """Send a signal such as "INT", "TERM" or "KILL" to the command."""
        await self._connection().send(self._control("signal", name=name))

    async def close_stdin(self) -> None:
        """Close the command's stdin, so that it reads end-of-file."""
        await self._connection().send(self._control("eof"))

    async def read(self) -> ExecOutput | None:
        """Return the next piece of output, or None once the command has exited and `exit_code` is set."""
        if self.exited:
            return None
        try:
            return self._message(await self._connection().recv())
        except ConnectionClosed as exc:
            raise self._closed(exc) from None

    async def wait(self) -> int | None:
        """Discard the remaining output until the command exits; return its exit code."""
        while await self.read() is not None:
            pass
        return self.exit_code

    async def __aiter__(self) -> AsyncIterator[ExecOutput]:
        while (output := await self.read()) is not None:
            yield output

    async def close(self) -> None:
        """Close the connection; a command that still runs is killed."""
        if self._socket is not None:
            await self._stack.aclose()
            self._socket = None

    def _connection(self) -> AsyncConnection:
        if self._socket is None:
            raise RuntimeError("the exec session is not open; use it in an `async with` block or await open() first")
        return self._socket

    async def __aenter__(self) -> AsyncExecSession:
        return await self.open()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()


# The likely cause of a refused handshake, by status.
_HANDSHAKE_REFUSALS = {
    401: "; the API key is missing, wrong, expired or revoked",
    403: "; an interactive exec needs the developer or admin role and a key with the read and write scopes",
    429: "; the API key sent too many requests, so wait and retry",
}


def _error_of(message: Mapping[str, Any], url: str) -> ApiError:
    """Build the client error for a session's error message, as for the same problem over HTTP."""
    status = int(message.get("status") or 400)
    problem = {"status": status, "detail": message.get("detail", ""), "field": message.get("field"), "instance": url}
    return error_class(status, None)(status, problem)
