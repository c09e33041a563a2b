"""`corebase containers cp`: copy files and directories between this machine and a container.

One side is `CONTAINER:PATH` and the other a local path, as with `docker cp`:

- a local file goes into a container directory under its own name, or else becomes the file PATH;
- a local directory goes into a container directory under its own name, or else becomes the
  directory PATH, whose parent must exist;
- a container file or directory goes into a local directory under its own name, or else
  becomes the local path;
- a local path of `-` writes the tar archive to stdout.

Directories travel as tar archives. A local directory is packed into a temporary file first, so
the upload knows its size, and a download is spooled to a temporary file before it is unpacked.
Unpacking uses tarfile's "data" filter, so no member lands outside the destination.
"""

from __future__ import annotations

import posixpath
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from corebase.cli.context import Context, UsageError
from corebase.client import Client
from corebase.client.errors import NotFound


def parse_location(text: str) -> tuple[str | None, str]:
    """Split "CONTAINER:PATH" into its parts; a text without a container part is a local path."""
    container, separator, path = text.partition(":")
    if separator and container and "/" not in container:
        return container, path
    return None, text


def run_cp(context: Context) -> None:
    source_container, source = parse_location(context.args.source)
    target_container, target = parse_location(context.args.destination)
    if (source_container is None) == (target_container is None):
        raise UsageError("name a container on exactly one side, as CONTAINER:PATH, and a local path on the other")

    client = context.client
    if target_container is not None:
        with context.out.waiting(f"Copying {source} to {target_container}:{target}"):
            result = _upload(client, Path(source), target_container, target)
    else:
        assert source_container is not None
        if target == "-":
            for chunk in client.containers.download(source_container, source):
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            return
        with context.out.waiting(f"Copying {source_container}:{source} to {target}"):
            result = _download(client, source_container, source, Path(target))
    context.out.result(result, lambda: context.out.note(f"copied to {result['destination']} ({result['size']} bytes transferred)"))


def _upload(client: Client, local: Path, container: str, path: str) -> dict[str, Any]:
    if not local.exists():
        raise UsageError(f"{local} does not exist; name a local file or directory to copy")
    is_directory = _remote_directory(client, container, path)

    if local.is_file():
        target = posixpath.join(path, local.name) if is_directory else path
        record = client.containers.upload(container, target, local)
        return {"destination": f"{container}:{target}", "size": record.size}

    if is_directory is False:
        raise UsageError(f"{container}:{path} is a file; copy a directory into a directory, or to a path that does not exist")
    # Into an existing directory under the local name, or else as the directory `path` itself.
    name = local.name if is_directory else posixpath.basename(path.rstrip("/"))
    into = path if is_directory else posixpath.dirname(path.rstrip("/")) or "/"
    with tempfile.NamedTemporaryFile(suffix=".tar") as spool:
        with tarfile.open(fileobj=spool, mode="w") as archive:
            archive.add(local, arcname=name)
        spool.flush()
        record = client.containers.upload(container, into, Path(spool.name), archive=True)
    return {"destination": f"{container}:{posixpath.join(into, name)}", "size": record.size}


def _remote_directory(client: Client, container: str, path: str) -> bool | None:
    """Tell whether `path` is a directory in the container: True, False for another kind, None when missing."""
    try:
        return client.containers.stat(container, path).type == "directory"
    except NotFound:
        return None


def _download(client: Client, container: str, path: str, local: Path) -> dict[str, Any]:
    if not hasattr(tarfile, "data_filter"):
        raise UsageError("copying from a container needs Python 3.11.4 or later, for tarfile's safe extraction")
    name = client.containers.stat(container, path).name

    with tempfile.TemporaryFile() as spool:
        size = 0
        for chunk in client.containers.download(container, path):
            spool.write(chunk)
            size += len(chunk)
        spool.seek(0)
        with tarfile.open(fileobj=spool) as archive:
            if local.is_dir():
                archive.extractall(local, filter="data")
                return {"destination": str(local / name), "size": size}
            members = archive.getmembers()
            for member in members:
                # The archive's top entry takes the local name: /etc/hosts to ./copy gives ./copy.
                member.name = _renamed(member.name, name, local.name)
                if member.islnk():
                    member.linkname = _renamed(member.linkname, name, local.name)
            archive.extractall(local.parent, members=members, filter="data")
    return {"destination": str(local), "size": size}


def _renamed(member: str, top: str, new_top: str) -> str:
    return new_top + member[len(top):] if member == top or member.startswith(top + "/") else member
