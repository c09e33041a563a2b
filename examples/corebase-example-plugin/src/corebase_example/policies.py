"""The `pinned-image-tag` policy: an image must name a tag other than `latest`, or a digest."""

from __future__ import annotations

from corebase.security import Decision, PolicyRequest


def image_tag(image: str) -> str | None:
    """Return the tag of an image reference, or None when it has none.

    A colon before the last slash belongs to a registry port (`localhost:5000/app`), not to a tag.
    """
    name = image.rpartition("/")[2]
    if ":" not in name:
        return None
    return name.rpartition(":")[2]


class PinnedImageTag:
    """Denies images that name no tag or the tag `latest`, because such a start may run different code each time."""

    name = "pinned-image-tag"

    def evaluate(self, request: PolicyRequest) -> Decision:
        image = request.spec.image
        if "@" in image:
            # A digest names exactly one image.
            return Decision.allow()

        tag = image_tag(image)
        if tag is None:
            return Decision.deny(f"image {image!r} names no tag, so it means 'latest'; name a version tag such as '{image}:1.2'")
        if tag == "latest":
            return Decision.deny(f"image {image!r} uses the tag 'latest'; name a version tag or a digest instead")
        return Decision.allow()
