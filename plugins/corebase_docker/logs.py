"""Container logs from `GET /containers/{id}/logs`, with stdout and stderr kept apart."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import aiodocker
import aiohttp

from corebase.runtime.types import LogChunk, LogOptions
from corebase_docker.client import raw_response
from corebase_docker.frames import FrameDecoder

logger = logging.getLogger(__name__)


def log_params(options: LogOptions) -> dict[str, Any]:
    """Return the query parameters for `options`; times are Unix seconds with nanoseconds."""
    params: dict[str, Any] = {
        "stdout": options.stdout,
        "stderr": options.stderr,
        "follow": options.follow,
        "timestamps": options.timestamps,
        "tail": "all" if options.tail is None else str(options.tail),
    }
    if options.since is not None:
        params["since"] = f"{options.since:.9f}"
    if options.until is not None:
        params["until"] = f"{options.until:.9f}"
    return params


async def read_logs(
    docker: aiodocker.Docker,
    engine_id: str,
    options: LogOptions,
    *,
    timeout: float,
) -> AsyncIterator[LogChunk]:
    """Yield the container's log output in order, as it arrives.

    With a TTY the engine sends raw bytes, all of them stdout; without one it multiplexes the
    streams in frames. A followed log has no total time limit and ends when the container exits
    or when the consumer stops iterating, which closes the response. `timeout` limits the
    connection, the wait for the response headers and, without `follow`, each read. aiodocker
    exceptions propagate.
    """
    if not (options.stdout or options.stderr):
        return

    container = await docker._query_json(f"containers/{engine_id}/json")
    tty = bool((container.get("Config") or {}).get("Tty"))
    client_timeout = aiohttp.ClientTimeout(
        total=None,
        connect=timeout,
        sock_read=None if options.follow else timeout,
    )

    async with raw_response(
        docker,
        f"containers/{engine_id}/logs",
        params=log_params(options),
        timeout=client_timeout,
        headers_timeout=timeout,
    ) as response:
        if tty:
            async for chunk in response.content.iter_any():
                yield LogChunk(stream="stdout", data=chunk)
            return

        decoder = FrameDecoder()
        async for chunk in response.content.iter_any():
            for stream, data in decoder.feed(chunk):
                yield LogChunk(stream=stream, data=data)
        if decoder.inside_frame:
            logger.warning(
                "log stream of container %s ended inside a frame; the last output may be incomplete", engine_id
            )
