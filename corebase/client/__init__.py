"""The Python client of the CoreBase API, blocking (`Client`) or asyncio (`AsyncClient`).

    from corebase.client import Client

    with Client() as client:                  # URL and key from the environment or `corebase login`
        box = client.containers.start(template="python", project_id="demo")
        print(client.containers.exec(box.id, ["python", "--version"]).stdout)
        client.containers.remove(box.id, force=True)

Responses decode into the msgspec structs the server itself encodes (`ContainerRecord` and the
others in `corebase.api`), and error responses raise the classes in `corebase.client.errors`.
docs/sdk.md is the guide.
"""

from corebase.client._client import AsyncClient, Client
from corebase.client.config import ClientConfig
from corebase.client.errors import (
    ApiError,
    ClientError,
    ConfigurationError,
    Conflict,
    ConnectionFailed,
    EngineError,
    EngineTimeout,
    EngineUnavailable,
    Forbidden,
    NotFound,
    PolicyDenied,
    QuotaExceeded,
    RateLimited,
    RequestTimedOut,
    ServerError,
    TooLarge,
    Unauthorized,
    UnexpectedResponse,
    ValidationError,
)

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "ClientConfig",
    "ClientError",
    "ConfigurationError",
    "Conflict",
    "ConnectionFailed",
    "EngineError",
    "EngineTimeout",
    "EngineUnavailable",
    "Forbidden",
    "NotFound",
    "PolicyDenied",
    "QuotaExceeded",
    "RateLimited",
    "RequestTimedOut",
    "ServerError",
    "TooLarge",
    "Unauthorized",
    "UnexpectedResponse",
    "ValidationError",
]
