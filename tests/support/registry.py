"""Push the local test image to the test registry, so tests can pull a real image through the engine."""

from __future__ import annotations

import secrets

import aiodocker

from support.images import TEST_LABEL

REPOSITORY = "corebase-test/busybox"


async def push_test_image(registry: str, tag: str, *, docker: aiodocker.Docker | None = None) -> str:
    """Push the local image `tag` to `registry` (host:port) under a random tag and return the remote reference.

    Only an image labelled corebase.test=true is pushed. The local tag created for the push is removed
    afterwards, even when the push fails, and the image keeps its other tags. Raises ValueError for an
    image without the label and aiodocker.DockerError when the engine reports an error.
    """
    client = docker or aiodocker.Docker()
    try:
        image = await client.images.inspect(tag)
        labels = (image.get("Config") or {}).get("Labels") or {}
        if labels.get(TEST_LABEL) != "true":
            raise ValueError(f"{tag} has no {TEST_LABEL}=true label, and only test images may be pushed")

        repository = f"{registry}/{REPOSITORY}"
        remote_tag = secrets.token_hex(6)
        reference = f"{repository}:{remote_tag}"
        await client.images.tag(tag, repository, tag=remote_tag)
        try:
            messages = await client.images.push(repository, tag=remote_tag)
            # aiodocker 0.27 raises DockerStreamError for an error in the stream. This check also catches
            # an aiodocker version that returns the error as a message instead.
            failures = [message for message in messages if "error" in message or "errorDetail" in message]
            if failures:
                raise aiodocker.DockerError(500, f"pushing {reference} failed: {failures[0]}")
        finally:
            # The image still carries `tag`, so deleting this reference removes only the tag.
            await client.images.delete(reference, noprune=True)
        return reference
    finally:
        if docker is None:
            await client.close()
