"""Image references and pulls through `POST /images/create`."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import aiodocker
import aiohttp

from corebase.errors import ImageNotFound, ImagePullFailed
from corebase_docker.client import raw_response

logger = logging.getLogger(__name__)

# Phrases of registry and engine messages that mean the image does not exist (or is private),
# as opposed to a network or registry failure.
_NOT_FOUND_PATTERNS = (
    re.compile(r"not found", re.IGNORECASE),
    re.compile(r"manifest unknown", re.IGNORECASE),
    re.compile(r"does not exist", re.IGNORECASE),
    re.compile(r"pull access denied", re.IGNORECASE),
    re.compile(r"repository \S+ not found", re.IGNORECASE),
    re.compile(r"no such image", re.IGNORECASE),
)


@dataclass(frozen=True)
class ImageReference:
    """An image name split into repository, tag and digest, as `docker pull` reads it."""

    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def pull_tag(self) -> str:
        """The engine's `tag` pull parameter: the digest when there is one, else the tag or "latest"."""
        return self.digest or self.tag or "latest"


def parse_reference(image: str) -> ImageReference:
    """Split `image` into repository, tag and digest.

    A colon counts as a tag separator only in the last path component, so the port in
    "127.0.0.1:5000/team/app:1" belongs to the registry host. Raises ValueError for an empty name.
    """
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")

    tag = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    if not name:
        raise ValueError(f"invalid image reference {image!r}: the repository name is empty")
    return ImageReference(repository=name, tag=tag or None, digest=digest or None)


def is_not_found_message(message: str) -> bool:
    """Tell whether a pull error message means that the image or repository does not exist."""
    return any(pattern.search(message) for pattern in _NOT_FOUND_PATTERNS)


def pull_error(image: str, message: str) -> ImageNotFound | ImagePullFailed:
    """Return ImageNotFound or ImagePullFailed for an error message from a pull of `image`."""
    if is_not_found_message(message):
        return ImageNotFound(
            image, f"image {image!r} was not found in its registry: {message}; check the name and tag"
        )
    return ImagePullFailed(image, message)


def progress_error(message: dict[str, Any]) -> str | None:
    """Return the error text of one pull progress message, or None when it reports progress."""
    if "errorDetail" not in message and "error" not in message:
        return None
    detail = message.get("errorDetail")
    text = detail.get("message") if isinstance(detail, dict) else None
    return str(text or message.get("error") or detail or "the engine reported an unnamed pull error")


async def pull_image(docker: aiodocker.Docker, image: str, *, timeout: float) -> None:
    """Pull `image`, reading every progress message, within `timeout` seconds.

    The engine returns 200 and reports most failures inside the stream, so each message is
    checked for "error" and "errorDetail". Raises ImageNotFound or ImagePullFailed (also on
    timeout); aiodocker and connection exceptions propagate for the caller to translate.
    """
    reference = parse_reference(image)
    params = {"fromImage": reference.repository, "tag": reference.pull_tag}
    logger.info("pulling image %s", image)

    try:
        # The raw response lets this module check every progress line itself, so the result
        # does not depend on how the installed aiodocker version treats stream errors.
        async with raw_response(
            docker,
            "images/create",
            "POST",
            params=params,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            async for line in response.content:
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except ValueError as exc:
                    reason = f"the engine sent an invalid progress message: {line[:200]!r}"
                    raise ImagePullFailed(image, reason) from exc
                error = progress_error(message)
                if error is not None:
                    raise pull_error(image, error)
    except aiodocker.DockerError as exc:
        # Errors found before the stream starts come back as HTTP statuses, such as 404 for an
        # unknown manifest or 500 for an unreachable registry.
        if 400 <= exc.status < 600:
            raise pull_error(image, exc.message) from exc
        raise
    except TimeoutError as exc:
        raise ImagePullFailed(image, f"the pull timed out after {timeout:g} s; raise docker.pull_timeout") from exc

    logger.info("pulled image %s", image)
