"""Container templates: named, versioned defaults for a start request."""

from __future__ import annotations

from typing import Literal

import msgspec

TemplateCategory = Literal["runtime", "database", "static", "system", "custom"]


class TemplateSpec(msgspec.Struct, kw_only=True):
    """A template as a plugin provides it. Sizes are bytes, CPU in CPUs, ports container-side."""

    name: str
    image: str
    category: TemplateCategory
    description: str = ""
    command: list[str] | None = None
    env: dict[str, str] = {}
    ports: list[int] = []
    memory: int | None = None
    cpus: float | None = None
