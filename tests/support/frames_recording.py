"""Record the engine's multiplexed output of a real container and of a real exec, byte for byte.

The decoders are tested on these recordings (tests/data/frames/), so they see exactly what an
engine sends: 8-byte frame headers, frames cut wherever the process wrote, raw invalid bytes.
Both recordings come from a hijacked (upgraded) connection, the way aiodocker reads exec
output, so nothing between the engine and the file parses or re-encodes the bytes. Logs are
not recorded: the json-file log driver joins a line's writes and replaces invalid bytes itself.

Record again with the engine running (it needs the busybox test image, built on demand):

    cd tests && ../.venv/bin/python -m support.frames_recording
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import aiodocker
from aiodocker.containers import DockerContainer

from corebase_docker.client import resolve_url
from support.images import TEST_LABEL, ensure_test_image

DATA_DIR = Path(__file__).parent.parent / "data" / "frames"
CONTAINER_RECORDING = DATA_DIR / "container.bin"
EXEC_RECORDING = DATA_DIR / "exec.bin"
METADATA = DATA_DIR / "recording.json"

# Each printf is one write, and the pauses make the engine read, and frame, each write on its
# own. So characters are cut across frames: é, ✓ and 😀 arrive in two frames of their stream.
SCRIPT = "; ".join(
    [
        r"printf 'plain ascii\n'",
        r"printf 'caf\303'",
        "sleep 0.1",
        r"printf '\251\n'",
        r"printf 'check \342\234' >&2",
        "sleep 0.1",
        r"printf '\223 done\n' >&2",
        r"printf 'bad \377\376 bytes\n'",
        r"printf 'cut \360\237\230' >&2",
        "sleep 0.1",
        r"printf ' after\n' >&2",
        r"printf 'emoji \360\237'",
        "sleep 0.1",
        r"printf '\230\200\n'",
        r"printf 'no newline \303'",
    ]
)

# The exact bytes SCRIPT writes to each stream.
EXPECTED_BYTES = {
    "stdout": b"plain ascii\ncaf\xc3\xa9\nbad \xff\xfe bytes\nemoji \xf0\x9f\x98\x80\nno newline \xc3",
    "stderr": b"check \xe2\x9c\x93 done\ncut \xf0\x9f\x98 after\n",
}

# Seconds the recording may take before it is abandoned as hung.
RECORD_TIMEOUT = 60.0


async def record_container(docker: aiodocker.Docker, image: str) -> bytes:
    """Run SCRIPT as a container's command and return its attached output, as the engine sent it."""
    async with _test_container(docker, image, ["sh", "-c", SCRIPT]) as container:
        # Attached before the start, so the first write is not missed.
        reader, writer = await _hijack(f"containers/{container.id}/attach?stream=1&stdout=1&stderr=1", None)
        try:
            await container.start()
            return await _read_to_end(reader)
        finally:
            writer.close()


async def record_exec(docker: aiodocker.Docker, image: str) -> bytes:
    """Run SCRIPT as an exec in a running container and return its output, as the engine sent it."""
    async with _test_container(docker, image, ["sleep", "600"]) as container:
        await container.start()
        exec_ = await container.exec(["sh", "-c", SCRIPT], stdout=True, stderr=True)
        reader, writer = await _hijack(f"exec/{exec_.id}/start", {"Detach": False, "Tty": False})
        try:
            return await _read_to_end(reader)
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def _test_container(docker: aiodocker.Docker, image: str, command: list[str]) -> AsyncIterator[DockerContainer]:
    """Create (not start) a container with the test label, and remove it when the block ends."""
    container = await docker.containers.create(
        {"Image": image, "Cmd": command, "Labels": {TEST_LABEL: "true"}},
        name=f"cbtest-frames-{secrets.token_hex(4)}",
    )
    try:
        yield container
    finally:
        await container.delete(force=True, v=True)


async def _read_to_end(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(RECORD_TIMEOUT):
        return await reader.read()


async def _hijack(path: str, body: dict | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Send POST `path` asking to upgrade the connection, and return it after the response headers.

    What follows the headers is the engine's raw stream, up to the end of the connection.
    """
    reader, writer = await _connect()
    payload = json.dumps(body).encode() if body is not None else b""
    head = (
        f"POST /{path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
    )
    writer.write(head.encode() + payload)
    await writer.drain()

    status_line = await reader.readline()
    if status_line.split()[1:2] not in ([b"101"], [b"200"]):
        rest = await reader.read(2000)
        writer.close()
        raise RuntimeError(f"the engine rejected POST /{path}: {(status_line + rest).decode(errors='replace')}")
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    return reader, writer


async def _connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    address = urlsplit(resolve_url(""))
    if address.scheme == "unix":
        return await asyncio.open_unix_connection(address.path)
    if address.scheme in ("tcp", "http") and address.hostname in ("127.0.0.1", "localhost", "::1"):
        return await asyncio.open_connection(address.hostname, address.port or 2375)
    raise RuntimeError(f"recording needs the engine on a unix socket or on loopback TCP, not {address.geturl()}")


async def main() -> None:
    docker = aiodocker.Docker()
    try:
        image = await ensure_test_image(docker)
        version = await docker.version()
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        CONTAINER_RECORDING.write_bytes(await record_container(docker, image))
        EXEC_RECORDING.write_bytes(await record_exec(docker, image))
    finally:
        await docker.close()

    metadata = {
        "engine": version.get("Version"),
        "apiVersion": version.get("ApiVersion"),
        "recordedAt": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "script": SCRIPT,
        "recordedBy": "tests/support/frames_recording.py",
    }
    METADATA.write_text(json.dumps(metadata, indent=2) + "\n")
    print(f"wrote {CONTAINER_RECORDING}, {EXEC_RECORDING} and {METADATA}")


if __name__ == "__main__":
    asyncio.run(main())
