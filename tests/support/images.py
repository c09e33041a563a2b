"""The local test images, built by the shared code in corebase.testing.images."""

from corebase.testing.images import (
    BUSYBOX_BINARY,
    TEST_IMAGE,
    TEST_LABEL,
    TOOLBOX_IMAGE,
    build_context,
    ensure_test_image,
    ensure_toolbox_image,
)

__all__ = [
    "BUSYBOX_BINARY",
    "TEST_IMAGE",
    "TEST_LABEL",
    "TOOLBOX_IMAGE",
    "build_context",
    "ensure_test_image",
    "ensure_toolbox_image",
]
