"""A Unix-socket proxy in front of the Docker Engine that a test can cut, to simulate an engine outage.

CoreBase is pointed at the proxy's socket (COREBASE_DOCKER_URL=unix://...). `cut()` closes every
open connection, as an engine restart would; `refuse()` makes new connections fail until
`accept()`. The machine's engine itself is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path

ENGINE_SOCKET = "/var/run/docker.sock"


class EngineProxy:
    def __init__(self, path: Path, engine_socket: str = ENGINE_SOCKET) -> None:
        self.path = path
        self.engine_socket = engine_socket
        self.refusing = False
        self.connections = 0
        self._writers: set[asyncio.StreamWriter] = set()
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

    def accept(self) -> None:
        self.refusing = False

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
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            client_writer.close()
            return
        self.connections += 1
        engine_reader, engine_writer = await asyncio.open_unix_connection(self.engine_socket)
        self._writers.update((client_writer, engine_writer))

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        await asyncio.gather(pipe(client_reader, engine_writer), pipe(engine_reader, client_writer))
        self._writers.discard(client_writer)
        self._writers.discard(engine_writer)
