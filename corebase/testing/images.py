"""Local test images, built through the engine API so that tests need no registry.

The image is `FROM scratch` with a static busybox and its applet links, so it runs `sh`, `sleep`,
`head`, `httpd` and the other tools tests need, and takes a second to build. Both images carry
the label `corebase.test=true`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker

logger = logging.getLogger(__name__)

TEST_LABEL = "corebase.test"
TEST_IMAGE = "corebase-test/busybox:1"
TOOLBOX_IMAGE = "corebase-test/toolbox:2"
BUSYBOX_BINARY = Path("/bin/busybox")

_DOCKERFILE = b"""\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
CMD ["/bin/sh"]
"""


def build_context(busybox: Path = BUSYBOX_BINARY) -> bytes:
    """Return an uncompressed tar build context holding the Dockerfile and the busybox binary."""
    if not busybox.is_file():
        raise FileNotFoundError(
            f"{busybox} is missing; install a static busybox (apt-get install busybox-static)"
        )

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        dockerfile = tarfile.TarInfo("Dockerfile")
        dockerfile.size = len(_DOCKERFILE)
        archive.addfile(dockerfile, io.BytesIO(_DOCKERFILE))

        binary = archive.gettarinfo(str(busybox), arcname="busybox")
        binary.uid = binary.gid = 0
        binary.uname = binary.gname = "root"
        binary.mode = 0o755
        with busybox.open("rb") as handle:
            archive.addfile(binary, handle)
    return buffer.getvalue()


async def ensure_test_image(
    docker: aiodocker.Docker | None = None, tag: str = TEST_IMAGE, busybox: Path = BUSYBOX_BINARY
) -> str:
    """Build the busybox test image under `tag` unless the engine already has it; return the tag.

    `busybox` is the static busybox binary copied into the image. Without `docker` a client is
    opened for the call and closed afterwards. Raises FileNotFoundError when `busybox` is missing,
    and aiodocker.DockerError with the engine's message when the build fails.
    """
    async with _client(docker) as client:
        if not await _exists(client, tag):
            logger.info("building test image %s from %s", tag, busybox)
            await _build(client, tag, build_context(busybox))
        return tag


# Stand-ins for the programs the built-in templates' health checks run, so every built-in template
# can start, pass its health check and be pooled with a local image. Each exits 0, redis-cli
# prints PONG the way `redis-cli ping` does, and redis-server sleeps in place of the server.
_TOOLBOX_DOCKERFILE = f"""\
FROM {TEST_IMAGE}
RUN for tool in node python pg_isready nginx; do printf '#!/bin/sh\\nexit 0\\n' > /bin/$tool; chmod 755 /bin/$tool; done \\
 && printf '#!/bin/sh\\necho PONG\\n' > /bin/redis-cli && chmod 755 /bin/redis-cli \\
 && printf '#!/bin/sh\\nexec sleep infinity\\n' > /bin/redis-server && chmod 755 /bin/redis-server
CMD ["sleep", "infinity"]
""".encode()


async def ensure_toolbox_image(docker: aiodocker.Docker | None = None, tag: str = TOOLBOX_IMAGE) -> str:
    """Build the toolbox image (the busybox image plus health-check stand-ins) unless it exists; return the tag."""
    async with _client(docker) as client:
        if not await _exists(client, tag):
            await ensure_test_image(client)
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as archive:
                dockerfile = tarfile.TarInfo("Dockerfile")
                dockerfile.size = len(_TOOLBOX_DOCKERFILE)
                archive.addfile(dockerfile, io.BytesIO(_TOOLBOX_DOCKERFILE))
            await _build(client, tag, buffer.getvalue())
        return tag


@contextlib.asynccontextmanager
async def _client(docker: aiodocker.Docker | None) -> AsyncIterator[aiodocker.Docker]:
    """Use `docker`, or open a client for the call and close it afterwards."""
    client = docker or aiodocker.Docker()
    try:
        yield client
    finally:
        if docker is None:
            await client.close()


async def _exists(client: aiodocker.Docker, tag: str) -> bool:
    try:
        await client.images.inspect(tag)
        return True
    except aiodocker.DockerError as exc:
        if exc.status != 404:
            raise
        return False


async def _build(client: aiodocker.Docker, tag: str, context: bytes) -> None:
    """Build `context` (an uncompressed tar) as `tag`, labelled as a test image."""
    messages = await client.images.build(
        fileobj=io.BytesIO(context),
        encoding="identity",
        tag=tag,
        labels={TEST_LABEL: "true"},
        rm=True,
        forcerm=True,
    )
    # Checked here too, in case the installed aiodocker returns stream errors instead of raising them.
    for message in messages:
        if "error" in message or "errorDetail" in message:
            raise aiodocker.DockerError(500, f"building {tag} failed: {message}")
