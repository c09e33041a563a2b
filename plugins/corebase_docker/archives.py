"""Copying files into and out of containers as tar archives (`/containers/{id}/archive`).

The engine's answers, as Docker Engine 20.10 (API 1.41) gives them: 404 for a missing container
("No such container") or a missing path ("Could not find the file ..."), and 500 with a message
when the target of an upload is not a directory ("extraction point is not a directory"), the
archive cannot be read ("Error processing tar file"), or the target is read-only ("container
rootfs is marked read-only", "mounted volume is marked read-only"). A read-only root file system
rejects every upload, even into a tmpfs mount, because the engine does not copy into tmpfs
mounts.

The engine answers `HEAD /containers/{id}/archive` with the stat header, but its error answers
have an empty body under a JSON content type, which aiodocker (0.27) fails to parse, so the
status is lost. `stat_path` therefore sends a GET and closes the response after its headers.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator
from datetime import datetime

import aiodocker
import aiohttp

from corebase.errors import ContainerNotFound, InvalidField, PathNotFound, PathReadOnly
from corebase.runtime.types import PathStat
from corebase_docker.client import raw_response

logger = logging.getLogger(__name__)

STAT_HEADER = "X-Docker-Container-Path-Stat"

# Go's os.FileMode type bits, which the engine's stat reports above the permission bits.
_MODE_DIRECTORY = 1 << 31
_MODE_SYMLINK = 1 << 27
_PERMISSION_BITS = 0o7777


async def stat_path(docker: aiodocker.Docker, engine_id: str, path: str, *, timeout: float) -> PathStat:
    """Return the engine's description of `path`; raise PathNotFound or ContainerNotFound."""
    try:
        async with raw_response(
            docker,
            f"containers/{engine_id}/archive",
            params={"path": path},
            timeout=aiohttp.ClientTimeout(total=None, connect=timeout, sock_connect=timeout),
            headers_timeout=timeout,
        ) as response:
            header = response.headers.get(STAT_HEADER, "")
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            _raise_missing(engine_id, path, exc)
        raise _client_error(exc, engine_id, path) or exc
    return parse_stat(header)


async def read_archive(docker: aiodocker.Docker, engine_id: str, path: str, *, timeout: float) -> AsyncIterator[bytes]:
    """Yield the tar archive of `path` as the engine sends it.

    A large archive may take long, so only connecting and the wait for the response headers
    have a deadline, `timeout` seconds each. The consumer's pace sets the pace of the reads.
    """
    stream_timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_connect=timeout, sock_read=None)
    try:
        async with raw_response(
            docker,
            f"containers/{engine_id}/archive",
            params={"path": path},
            timeout=stream_timeout,
            headers_timeout=timeout,
        ) as response:
            async for chunk in response.content.iter_any():
                yield chunk
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            _raise_missing(engine_id, path, exc)
        raise _client_error(exc, engine_id, path) or exc


async def write_archive(
    docker: aiodocker.Docker, engine_id: str, path: str, archive: AsyncIterable[bytes], *, timeout: float
) -> None:
    """Send `archive` to the engine as it arrives, for it to extract into the directory `path`.

    The body is sent in chunks without a total or read deadline, because its sender sets the
    pace and aiohttp counts the read deadline from the start of the body. Connecting has
    `timeout` seconds. An engine that hangs after the body is ended by EngineGuard's probe.
    """
    upload_timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_connect=timeout, sock_read=None)
    try:
        async with docker._query(
            f"containers/{engine_id}/archive",
            "PUT",
            params={"path": path},
            data=_chunks(archive),
            headers={"Content-Type": "application/x-tar"},
            timeout=upload_timeout,
            chunked=True,
        ) as response:
            await response.read()
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            _raise_missing(engine_id, path, exc, hint="create the directory first, or upload to an existing one")
        raise _client_error(exc, engine_id, path) or exc


async def _chunks(archive: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    # aiohttp sends an async generator's items as chunks; a plain AsyncIterable is not accepted.
    async for chunk in archive:
        if chunk:
            yield chunk


def parse_stat(header: str) -> PathStat:
    """Decode the engine's base64 JSON stat header into a PathStat."""
    try:
        raw = json.loads(base64.b64decode(header))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"the engine sent an unreadable {STAT_HEADER} header: {header[:100]!r}") from exc
    mode = int(raw.get("mode") or 0)
    if mode & _MODE_DIRECTORY:
        kind = "directory"
    elif mode & _MODE_SYMLINK:
        kind = "symlink"
    elif mode >> 16 == 0:
        kind = "file"
    else:
        kind = "other"
    return PathStat(
        name=str(raw.get("name") or ""),
        size=int(raw.get("size") or 0),
        mode=mode & _PERMISSION_BITS,
        type=kind,
        modified_at=_parse_time(raw.get("mtime")),
        link_target=raw.get("linkTarget") or None,
    )


def _parse_time(value: str | None) -> datetime | None:
    """Read Go's RFC 3339 time with nanoseconds, which Python's parser takes only up to microseconds."""
    if not value:
        return None
    head, dot, rest = value.partition(".")
    if dot:
        digits = "".join(character for character in rest if character.isdigit())
        zone = rest[len(digits):]
        value = f"{head}.{digits[:6]}{zone}"
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        logger.debug("unreadable modification time %r in a path stat", value)
        return None


def _raise_missing(engine_id: str, path: str, exc: aiodocker.DockerError, hint: str = "check 'path'") -> None:
    """Raise ContainerNotFound or PathNotFound for a 404, whichever the engine meant."""
    if "no such container" in exc.message.lower():
        raise ContainerNotFound(engine_id) from exc
    raise PathNotFound(engine_id, path, hint) from exc


def _client_error(exc: aiodocker.DockerError, engine_id: str, path: str) -> Exception | None:
    """Return the CoreBase error for an engine answer caused by the request, or None for another failure."""
    message = exc.message or ""
    if "marked read-only" in message:
        return PathReadOnly(engine_id, path, message)
    if "not a directory" in message:
        return InvalidField(
            "path", f"{path!r} is not a directory; name the directory to extract into, such as {path.rsplit('/', 1)[0] or '/'!r}"
        )
    if "processing tar file" in message:
        return InvalidField("body", f"the engine could not read the upload as a tar archive: {message}", status=400)
    return None
