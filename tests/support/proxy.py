"""A Unix-socket proxy in front of the Docker Engine that a test can cut, to simulate an engine outage.

CoreBase is pointed at the proxy's socket (COREBASE_DOCKER_URL=unix://...). `cut()` closes every
open connection, as an engine restart would; `refuse()` makes new connections fail until
`accept()`; `stall()` makes the proxy accept connections and never answer, as a hung engine
would. The machine's engine itself is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

ENGINE_SOCKET = "/var/run/docker.sock"


@dataclass(eq=False)
class _Connection:
    """One client connection and, unless it arrived during a stall, its connection to the engine."""

    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    # Set during a stall: bytes read in either direction are dropped, so neither side hears back.
    stalled: bool = False

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


class EngineProxy:
    def __init__(self, path: Path, engine_socket: str = ENGINE_SOCKET) -> None:
        self.path = path
        self.engine_socket = engine_socket
        self.refusing = False
        self.stalling = False
        self.connections = 0
        self._open: set[_Connection] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="engine-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def start(self) -> EngineProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def stop(self) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def cut(self) -> None:
        """Close every open connection, streams included."""
        self._call(self._cut())

    def refuse(self) -> None:
        """Close new connections at once, and cut the open ones."""
        self.refusing = True
        self.cut()

    def stall(self) -> None:
        """Hold every connection, open or new, and send nothing on any of them until `accept()`."""
        self._call(self._stall())

    def accept(self) -> None:
        """Forward new connections to the engine again, and close the connections held in a stall."""
        self.refusing = False
        self.stalling = False
        self._call(self._close_stalled())

    def _call(self, coroutine) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    async def _start(self) -> None:
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))

    async def _stop(self) -> None:
        await self._cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _cut(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._open.clear()

    async def _stall(self) -> None:
        self.stalling = True
        for connection in self._open:
            connection.stalled = True

    async def _close_stalled(self) -> None:
        # A stalled connection dropped bytes, so its HTTP exchange cannot go on.
        for connection in [connection for connection in self._open if connection.stalled]:
            connection.close()
            self._open.discard(connection)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            client_writer.close()
            return
        self.connections += 1
        connection = _Connection(writers=[client_writer], stalled=self.stalling)
        self._open.add(connection)
        if connection.stalled:
            # Read and drop the request, and keep the connection open without a word.
            with contextlib.suppress(ConnectionError, OSError):
                while await client_reader.read(65536):
                    pass
            self._open.discard(connection)
            return

        engine_reader, engine_writer = await asyncio.open_unix_connection(self.engine_socket)
        connection.writers.append(engine_writer)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await reader.read(65536):
                    if connection.stalled:
                        continue
                    writer.write(data)
                    await writer.drain()
            writer.close()

        await asyncio.gather(pipe(client_reader, engine_writer), pipe(engine_reader, client_writer))
        self._open.discard(connection)
