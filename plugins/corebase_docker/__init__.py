"""The built-in container runtime: a Docker Engine reached through aiodocker.

Registered with ``trylast=True``, so an installed runtime plugin replaces it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corebase.hookspecs import hookimpl
from corebase_docker.runtime import DockerRuntime

if TYPE_CHECKING:
    from corebase.settings import Settings

__all__ = ["DockerRuntime", "corebase_runtime"]


@hookimpl(trylast=True)
def corebase_runtime(settings: Settings) -> DockerRuntime:
    """Provide a DockerRuntime configured from the `docker` and `containers` settings."""
    return DockerRuntime.from_settings(settings.docker, settings.containers, settings.networks)
