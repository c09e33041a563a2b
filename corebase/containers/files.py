"""Checks of container paths, and the tar archive that carries a single uploaded file.

The engine copies files in and out of containers as tar archives only. So an upload of one file
is wrapped, while it streams, in an archive with one member: the header first, then the body as
it arrives, then the padding and the end-of-archive blocks. The header needs the size in
advance, which is why uploads need a Content-Length.
"""

from __future__ import annotations

import posixpath
import tarfile
import time
from collections.abc import AsyncIterable, AsyncIterator

from corebase.errors import InvalidField

BLOCK = tarfile.BLOCKSIZE
# Two empty blocks end a tar archive.
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
# Permission bits of an uploaded single file.
FILE_MODE = 0o644


def check_path(path: str | None) -> str:
    """Return `path` when it is an absolute container path; raise InvalidField (400) naming `path` otherwise."""
    if not path:
        raise InvalidField("path", "path is missing; name an absolute path in the container, such as /app", status=400)
    if "\0" in path:
        raise InvalidField("path", "path contains a NUL byte; remove it", status=400)
    if not path.startswith("/"):
        raise InvalidField(
            "path", f"path {path!r} is relative; name an absolute path in the container, such as /{path}", status=400
        )
    return path


def split_file_path(path: str) -> tuple[str, str]:
    """Split the path of an uploaded single file into its directory and its file name."""
    directory, name = posixpath.split(check_path(path))
    if not name or name in (".", ".."):
        raise InvalidField(
            "path",
            f"path {path!r} names no file; for an upload of one file, name the file too, such as /app/notes.txt, "
            "or send a tar archive (Content-Type application/x-tar) to extract into a directory",
            status=400,
        )
    return directory or "/", name


async def single_file_archive(name: str, size: int, body: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Yield a tar archive whose one member is the file `name` of `size` bytes, read from `body` as it arrives.

    Raises InvalidField when `body` ends before `size` bytes or goes past them. That aborts the
    upload instead of ending the archive early, although the engine may keep the part of the file
    it received.
    """
    member = tarfile.TarInfo(name)
    member.size = size
    member.mode = FILE_MODE
    member.mtime = int(time.time())
    # The PAX format keeps names that are long or not ASCII.
    yield member.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8")

    sent = 0
    async for chunk in body:
        sent += len(chunk)
        if sent > size:
            raise InvalidField("Content-Length", f"the body is longer than its Content-Length of {size} bytes", status=400)
        if chunk:
            yield chunk
    if sent != size:
        raise InvalidField(
            "Content-Length", f"the body ended after {sent} of its {size} bytes (Content-Length); send it again", status=400
        )

    yield b"\0" * (-size % BLOCK) + END_OF_ARCHIVE
