"""`Client` and `AsyncClient`: the same resources over a blocking or an asyncio httpx client."""

from __future__ import annotations

from functools import cached_property
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from corebase import __version__
from corebase.client._call import Call
from corebase.client._resource import Resource, S, endpoint
from corebase.client._session import AsyncSession, SyncSession
from corebase.client.config import ClientConfig, resolve

if TYPE_CHECKING:
    from corebase.api.schemas import HealthRecord, MonitoringRecord, PluginRecord
    from corebase.client.accounts import Keys, Quotas, Users
    from corebase.client.containers import Containers
    from corebase.client.observability import Alerts, Audit
    from corebase.client.templates import Pools, Templates

# Seconds for connecting, and for each read and write, unless a call needs longer (see Call.wait).
DEFAULT_TIMEOUT = 60.0


class _ClientBase(Resource[S]):
    """The resources and system calls of both clients.

    Each resource module is imported on first use, because the server's response types that
    they decode into pull in much of the server, and a short CLI command needs only one of them.
    """

    config: ClientConfig

    @cached_property
    def containers(self) -> Containers[S]:
        from corebase.client.containers import Containers

        return Containers(self._session)

    @cached_property
    def templates(self) -> Templates[S]:
        from corebase.client.templates import Templates

        return Templates(self._session)

    @cached_property
    def pools(self) -> Pools[S]:
        from corebase.client.templates import Pools

        return Pools(self._session)

    @cached_property
    def users(self) -> Users[S]:
        from corebase.client.accounts import Users

        return Users(self._session)

    @cached_property
    def keys(self) -> Keys[S]:
        from corebase.client.accounts import Keys

        return Keys(self._session)

    @cached_property
    def quotas(self) -> Quotas[S]:
        from corebase.client.accounts import Quotas

        return Quotas(self._session)

    @cached_property
    def alerts(self) -> Alerts[S]:
        from corebase.client.observability import Alerts

        return Alerts(self._session)

    @cached_property
    def audit(self) -> Audit[S]:
        from corebase.client.observability import Audit

        return Audit(self._session)

    @endpoint
    def health(self) -> Call[HealthRecord]:
        """Read whether the server reaches its database and engine; a degraded server returns status "degraded"."""
        from corebase.api.schemas import HealthRecord

        return Call("GET", "/health", HealthRecord, ok_statuses=frozenset({503}))

    @endpoint
    def plugins(self) -> Call[list[PluginRecord]]:
        """List the server's loaded plugins, their versions and the hooks each implements."""
        from corebase.api.schemas import PluginRecord

        return Call("GET", "/api/plugins", list[PluginRecord])

    @endpoint
    def monitoring(self) -> Call[MonitoringRecord]:
        """Read which API process leads monitoring, its sampling rounds and the engine event stream's state."""
        from corebase.api.schemas import MonitoringRecord

        return Call("GET", "/api/monitoring", MonitoringRecord)


def _http_options(config: ClientConfig, timeout: float | None) -> dict[str, Any]:
    return {
        "base_url": config.url,
        "headers": {"Authorization": f"Bearer {config.api_key}", "User-Agent": f"corebase-client/{__version__}"},
        "timeout": httpx.Timeout(timeout),
    }


class Client(_ClientBase[SyncSession]):
    """A blocking CoreBase client; use it in a `with` block, or call `close()`.

    `url`, `api_key` and `profile` are resolved as `corebase.client.config` describes. `timeout`
    is in seconds, for connecting and for each read and write; None waits without limit.
    `transport` replaces httpx's network transport, for example to set TLS options.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        profile: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.config = resolve(url, api_key, profile)
        super().__init__(SyncSession(httpx.Client(**_http_options(self.config, timeout), transport=transport)))

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()


class AsyncClient(_ClientBase[AsyncSession]):
    """An asyncio CoreBase client; use it in an `async with` block, or await `close()`.

    It takes the same arguments as `Client`, with an async httpx transport.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        profile: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = resolve(url, api_key, profile)
        super().__init__(AsyncSession(httpx.AsyncClient(**_http_options(self.config, timeout), transport=transport)))

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()
