"""Container templates: named, versioned defaults for a start request."""

from __future__ import annotations

from typing import Literal

import msgspec

from corebase.runtime.types import HealthCheck

TemplateCategory = Literal["runtime", "database", "static", "system", "custom"]


class TemplateSpec(msgspec.Struct, kw_only=True):
    """A template, as a plugin provides it or a user stores it.

    Sizes are bytes and CPU is in CPUs. `ports` are container ports, published on a host port the
    engine picks. Each name in `generated_env` gets a fresh random secret per container, which the
    start response returns once and CoreBase never logs. `max_memory` and `max_cpus` bound what a
    start request may ask for on top of the defaults.
    """

    name: str
    image: str
    category: TemplateCategory
    description: str = ""
    command: list[str] | None = None
    env: dict[str, str] = {}
    ports: list[int] = []
    memory: int | None = None
    cpus: float | None = None
    max_memory: int | None = None
    max_cpus: float | None = None
    healthcheck: HealthCheck | None = None
    generated_env: list[str] = []
    workdir: str | None = None
    user: str | None = None
    # Isolation level of containers from this template unless the request names one; None uses the configured default.
    isolation: Literal["standard", "sandboxed"] | None = None
    # Timers of containers from this template unless a start request sets them: seconds until
    # removal after the start, seconds without activity until a stop, and removal after exit.
    ttl: float | None = None
    idle_timeout: float | None = None
    auto_remove: bool = False
    version: int = 1
    builtin: bool = True
    owner: str | None = None


__all__ = ["TemplateCategory", "TemplateSpec"]
