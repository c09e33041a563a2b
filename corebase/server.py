"""The uvicorn server behind `corebase serve`, with a graceful stop on SIGTERM.

On SIGTERM (or the first SIGINT) uvicorn stops accepting connections, closes WebSockets, waits up
to `timeout_graceful_shutdown` seconds for the requests in flight, and then runs the app's
shut-down, which stops CoreBase's background loops. Two additions make that a clean stop:

- Followed log streams end when the shutdown starts, because uvicorn waits for every open
  response and a followed log runs for as long as its container does.
- The process exits with code 0 after a SIGTERM. uvicorn (checked with 0.55) restores the signal
  handlers it found and raises the signal again once it has shut down, so without a handler of
  CoreBase's own the process would end by SIGTERM.

`limit_malloc_arenas` keeps glibc from giving each of the many short-lived database threads an
allocator arena of its own, which made the resident memory creep upwards for minutes under load.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import socket
from types import FrameType

import uvicorn
from litestar import Litestar

logger = logging.getLogger(__name__)

# mallopt's parameter number for the arena count in glibc's malloc.h.
M_ARENA_MAX = -8
# Arenas the server's threads share: the event loop's own and one for aiosqlite's and the engine's threads.
SERVER_MALLOC_ARENAS = 2


class CoreBaseServer(uvicorn.Server):
    """A uvicorn server that ends followed log streams of `app` when it starts to shut down."""

    def __init__(self, config: uvicorn.Config, app: Litestar) -> None:
        super().__init__(config)
        self.corebase_app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # The lifespan sets `engine` at start-up, so a start-up that failed early has none.
        engine = self.corebase_app.state.get("engine")
        if engine is not None:
            engine.end_followed_logs()
        await super().shutdown(sockets)


def run(server: CoreBaseServer) -> None:
    """Run `server` until it stops. A SIGTERM, before or while it serves, ends the process with exit code 0."""
    previous = signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def limit_malloc_arenas(arenas: int = SERVER_MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas at `arenas`; return whether the cap was set.

    On 64-bit systems glibc gives new threads arenas of their own, up to eight per core, and
    returns little of their memory to the system. Piccolo's SQLite engine opens a new aiosqlite
    connection, with a thread of its own, for each query outside a transaction, so under load
    the arenas keep growing. A MALLOC_ARENA_MAX in the
    environment wins, and other C libraries (musl, macOS) are left alone.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - present only in glibc
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(M_ARENA_MAX, arenas) != 1:
        logger.debug("glibc refused to cap malloc arenas at %d", arenas)
        return False
    return True
