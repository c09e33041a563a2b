"""The uvicorn server behind `corebase serve`, with a graceful stop on SIGTERM.

On SIGTERM (or the first SIGINT) uvicorn stops accepting connections, closes WebSockets, waits up
to `timeout_graceful_shutdown` seconds for the requests in flight, and then runs the app's
shut-down, which stops CoreBase's background loops. Two additions make that a clean stop:

- Followed log streams end when the shutdown starts, because uvicorn waits for every open
  response and a followed log runs for as long as its container does.
- The process exits with code 0 after a SIGTERM. uvicorn (checked with 0.55) restores the signal
  handlers it found and raises the signal again once it has shut down, so without a handler of
  CoreBase's own the process would end by SIGTERM.
"""

from __future__ import annotations

import signal
import socket
from types import FrameType

import uvicorn
from litestar import Litestar


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
