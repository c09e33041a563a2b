"""The aiodocker client: which engine address it uses, and raw requests for streamed responses."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp

DEFAULT_SOCKETS = (Path("/run/docker.sock"), Path("/var/run/docker.sock"))


def resolve_url(url: str, environ: Mapping[str, str] | None = None) -> str:
    """Return the engine address: `url`, else DOCKER_HOST, else the first local socket that exists.

    Falls back to unix:///var/run/docker.sock when no socket exists, so the first call fails with
    a message naming that socket.
    """
    environ = os.environ if environ is None else environ
    if url:
        return url
    if environ.get("DOCKER_HOST"):
        return environ["DOCKER_HOST"]
    for socket in DEFAULT_SOCKETS:
        if socket.is_socket():
            return f"unix://{socket}"
    return f"unix://{DEFAULT_SOCKETS[1]}"


def open_client(url: str, timeout: float) -> aiodocker.Docker:
    """Create an aiodocker client for `url` whose calls time out after `timeout` seconds.

    Connecting has the same limit on its own, because aiodocker lifts only the total and read
    limits for its streamed calls (attached execs). Must run inside an event loop, because the
    client's aiohttp session binds to it. Raises ValueError for an address aiodocker cannot use.
    """
    client_timeout = aiohttp.ClientTimeout(total=timeout, connect=timeout, sock_connect=timeout)
    return aiodocker.Docker(url=url, timeout=client_timeout)


@asynccontextmanager
async def raw_response(
    docker: aiodocker.Docker,
    path: str,
    method: str = "GET",
    *,
    params: Mapping[str, Any] | None = None,
    timeout: aiohttp.ClientTimeout,
    headers_timeout: float | None = None,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """Send a request and yield the unread response, closing it when the block exits.

    aiodocker's `_query` is used because its public helpers either merge stdout and stderr (logs)
    or hide the HTTP status (stop's 304). `_query` does not close the response itself, and a
    streamed response that is not closed keeps its connection and the engine's work alive.
    `headers_timeout` limits the wait for the status line and headers, which a stream without a
    read timeout needs, because an engine that accepts the connection and never answers would
    otherwise hold it forever. Raises aiodocker.DockerError for a 4xx or 5xx status and
    TimeoutError when a limit passes.
    """
    async with AsyncExitStack() as stack:
        async with asyncio.timeout(headers_timeout):
            response = await stack.enter_async_context(
                docker._query(path, method, params=dict(params or {}), timeout=timeout)
            )
        try:
            yield response
        finally:
            response.close()
