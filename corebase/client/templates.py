"""`client.templates` and `client.pools`: container templates and their pre-warmed pools."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from corebase.api.pools import PoolRecord
from corebase.api.templates import TemplateBody, TemplateRecord, TemplateUpdateBody
from corebase.client._call import Call, body, path, query
from corebase.client._resource import Resource, S, endpoint

TEMPLATES = "/api/runtime/templates"
POOLS = "/api/runtime/pools"

Category = Literal["runtime", "database", "static", "system", "custom"]


class Templates(Resource[S]):
    @endpoint
    def get(self, name: str, *, version: int | None = None) -> Call[TemplateRecord]:
        """Read a template, its latest version unless `version` names an earlier one."""
        return Call("GET", path(TEMPLATES, name), TemplateRecord, params=query(version=version))

    @endpoint
    def create(self, template: TemplateBody | Mapping[str, Any]) -> Call[TemplateRecord]:
        """Create a custom template owned by the caller.

        `template` is a TemplateBody, or a mapping with the same JSON fields (`name`, `image`,
        `maxMemory`, ...), such as a template file's contents.
        """
        return Call("POST", TEMPLATES, TemplateRecord, body=_body(template))

    @endpoint
    def update(self, name: str, template: TemplateUpdateBody | Mapping[str, Any]) -> Call[TemplateRecord]:
        """Store a new version of a custom template; every field of the previous version is replaced."""
        return Call("PUT", path(TEMPLATES, name), TemplateRecord, body=_body(template))

    @endpoint
    def delete(self, name: str, *, force: bool = False) -> Call[None]:
        """Delete a custom template; `force` deletes it while a pool or a container uses it."""
        return Call("DELETE", path(TEMPLATES, name), params=query(force=force))

    @endpoint
    def list(self, *, category: Category | None = None) -> Call[list[TemplateRecord]]:
        """List the built-in templates and the caller's custom ones; an admin gets every custom template."""
        return Call("GET", TEMPLATES, list[TemplateRecord], params=query(category=category))


class Pools(Resource[S]):
    @endpoint
    def get(self, template: str) -> Call[PoolRecord]:
        """Read a pool's configuration, size and claim figures."""
        return Call("GET", path(POOLS, template), PoolRecord)

    @endpoint
    def set(
        self,
        template: str,
        *,
        min_idle: int | None = None,
        max_idle: int | None = None,
        max_total: int | None = None,
        idle_ttl: float | None = None,
    ) -> Call[PoolRecord]:
        """Create or replace the pool of a template; an argument left as None takes the server's default.

        `idle_ttl` is the seconds an idle member may wait before it is replaced.
        """
        fields = body(min_idle=min_idle, max_idle=max_idle, max_total=max_total, idle_ttl=idle_ttl)
        return Call("PUT", path(POOLS, template), PoolRecord, body=fields)

    @endpoint
    def delete(self, template: str) -> Call[None]:
        """Delete a pool and its unclaimed members."""
        return Call("DELETE", path(POOLS, template))

    @endpoint
    def list(self) -> Call[list[PoolRecord]]:
        """List the pools the caller may see, with their sizes and claim figures."""
        return Call("GET", POOLS, list[PoolRecord])


def _body(template: Any) -> Any:
    # A Struct encodes with its camelCase names; a mapping is sent as it is.
    return template if not isinstance(template, Mapping) else dict(template)
