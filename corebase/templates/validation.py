"""Field-by-field checks of a custom template, before it is stored."""

from __future__ import annotations

import re
from typing import Literal

from corebase.containers.spec import ENGINE_MIN_MEMORY, ENV_NAME_PATTERN, IMAGE_PATTERN
from corebase.containers.timers import check_duration
from corebase.errors import InvalidField
from corebase.runtime.types import HealthCheck
from corebase.settings import Settings
from corebase.sizes import format_size, parse_size
from corebase.templates import TemplateCategory, TemplateSpec

TEMPLATE_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
MAX_DESCRIPTION = 2000


def build_template(
    settings: Settings,
    *,
    name: str,
    image: str,
    category: TemplateCategory,
    description: str,
    command: list[str] | None,
    env: dict[str, str],
    ports: list[int],
    memory: int | str | None,
    cpus: float | None,
    max_memory: int | str | None,
    max_cpus: float | None,
    healthcheck: HealthCheck | None,
    generated_env: list[str],
    workdir: str | None,
    user: str | None,
    isolation: Literal["standard", "sandboxed"] | None = None,
    ttl: float | str | None = None,
    idle_timeout: float | str | None = None,
    auto_remove: bool = False,
) -> TemplateSpec:
    """Check every field of a custom template and return it; raise InvalidField naming the first bad one."""
    if not TEMPLATE_NAME_PATTERN.match(name):
        raise InvalidField(
            "name", f"template name {name!r} is invalid; use 1 to 63 lower-case letters, digits, '_', '.' or '-'"
        )
    if not IMAGE_PATTERN.match(image):
        raise InvalidField("image", f"image {image!r} is not a valid image reference; use a form such as 'python:3.12-slim'")
    if image.endswith(":latest") or ("@" not in image and ":" not in image.rsplit("/", 1)[-1]):
        raise InvalidField("image", f"image {image!r} has no pinned tag; name a version such as 'python:3.12-slim'")
    if len(description) > MAX_DESCRIPTION:
        raise InvalidField("description", f"description is {len(description)} characters; the maximum is {MAX_DESCRIPTION}")
    if command is not None and (not command or any(not part for part in command)):
        raise InvalidField("command", "command must be a non-empty list of non-empty strings, or null")

    for key in env:
        if not ENV_NAME_PATTERN.match(key):
            raise InvalidField(f"env.{key}", f"environment variable name {key!r} must be non-empty without '='")
    for index, key in enumerate(generated_env):
        if not ENV_NAME_PATTERN.match(key):
            raise InvalidField(f"generatedEnv[{index}]", f"environment variable name {key!r} must be non-empty without '='")
        if key in env:
            raise InvalidField(f"generatedEnv[{index}]", f"{key!r} is also in env; a generated variable gets its value per container")
    for index, port in enumerate(ports):
        if not 1 <= port <= 65535:
            raise InvalidField(f"ports[{index}]", f"port {port} is invalid; use 1-65535")
    if len(set(ports)) != len(ports):
        raise InvalidField("ports", "ports must not repeat a port")

    memory_bytes = _size("memory", memory, settings)
    max_memory_bytes = _size("maxMemory", max_memory, settings)
    if memory_bytes and max_memory_bytes and memory_bytes > max_memory_bytes:
        raise InvalidField("maxMemory", f"maxMemory {format_size(max_memory_bytes)} is below memory {format_size(memory_bytes)}")
    _check_cpus("cpus", cpus, settings)
    _check_cpus("maxCpus", max_cpus, settings)
    if cpus and max_cpus and cpus > max_cpus:
        raise InvalidField("maxCpus", f"maxCpus {max_cpus:g} is below cpus {cpus:g}")
    if healthcheck is not None:
        _check_healthcheck(healthcheck)
    if workdir is not None and not workdir.startswith("/"):
        raise InvalidField("workdir", f"workdir {workdir!r} must be an absolute path")
    lifecycle = settings.lifecycle
    ttl_seconds = check_duration("ttl", ttl, lifecycle.max_ttl, "lifecycle.max_ttl")
    idle_seconds = check_duration("idleTimeout", idle_timeout, lifecycle.max_idle_timeout, "lifecycle.max_idle_timeout")

    return TemplateSpec(
        name=name,
        image=image,
        category=category,
        description=description,
        command=command,
        env=env,
        ports=ports,
        memory=memory_bytes,
        cpus=cpus,
        max_memory=max_memory_bytes,
        max_cpus=max_cpus,
        healthcheck=healthcheck,
        generated_env=generated_env,
        workdir=workdir,
        user=user,
        isolation=isolation,
        ttl=ttl_seconds,
        idle_timeout=idle_seconds,
        auto_remove=auto_remove,
        builtin=False,
    )


def _size(field: str, value: int | str | None, settings: Settings) -> int | None:
    if value is None:
        return None
    try:
        size = parse_size(value)
    except ValueError as exc:
        raise InvalidField(field, f"{field}: {exc}") from None
    if size < ENGINE_MIN_MEMORY:
        raise InvalidField(field, f"{field} {value!r} is below the engine minimum of 6 MiB; write sizes such as \"512m\"")
    maximum = parse_size(settings.containers.max_memory)
    if size > maximum:
        raise InvalidField(field, f"{field} {value!r} is above the configured maximum of {format_size(maximum)}")
    return size


def _check_cpus(field: str, value: float | None, settings: Settings) -> None:
    if value is None:
        return
    if not 0.01 <= value <= settings.containers.max_cpus:
        raise InvalidField(field, f"{field} {value:g} is outside 0.01 to {settings.containers.max_cpus:g}")


def _check_healthcheck(check: HealthCheck) -> None:
    if not check.test or any(not part for part in check.test):
        raise InvalidField("healthcheck.test", "healthcheck.test must be a non-empty list of non-empty strings")
    for field, value in (("interval", check.interval), ("timeout", check.timeout)):
        if not 0.001 <= value <= 3600:
            raise InvalidField(f"healthcheck.{field}", f"healthcheck.{field} {value:g} must be between 0.001 and 3600 seconds")
    if not 0 <= check.start_period <= 3600:
        raise InvalidField("healthcheck.startPeriod", "healthcheck.startPeriod must be between 0 and 3600 seconds")
    if not 1 <= check.retries <= 100:
        raise InvalidField("healthcheck.retries", "healthcheck.retries must be between 1 and 100")
