"""The runtime contract between the core and a container backend."""

from corebase.runtime.protocol import ContainerRuntime
from corebase.runtime.types import (
    ContainerSpec,
    ContainerState,
    ExecExit,
    ExecResult,
    HealthCheck,
    LogChunk,
    LogOptions,
    MountSpec,
    PortBinding,
    RuntimeEvent,
    RuntimeInfo,
    StatsSample,
)

__all__ = [
    "ContainerRuntime",
    "ContainerSpec",
    "ContainerState",
    "ExecExit",
    "ExecResult",
    "HealthCheck",
    "LogChunk",
    "LogOptions",
    "MountSpec",
    "PortBinding",
    "RuntimeEvent",
    "RuntimeInfo",
    "StatsSample",
]
