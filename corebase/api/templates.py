"""/api/runtime/templates: list, read, create, update (new version) and delete templates."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from litestar import Controller, delete, get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from corebase.api.openapi import problem_responses
from corebase.api.schemas import Body, Record
from corebase.auth.caller import Caller
from corebase.pool.service import PoolService
from corebase.runtime.types import HealthCheck
from corebase.templates import TemplateCategory, TemplateSpec
from corebase.templates.catalog import TemplateCatalog
from corebase.templates.validation import build_template


class HealthCheckBody(Body):
    test: list[str]
    interval: float = 2.0
    timeout: float = 5.0
    retries: int = 3
    start_period: float = 0.0


class TemplateUpdateBody(Body):
    """The new version of a template; every field of the previous version is replaced.

    Sizes are bytes or strings such as "512m"; ports are container ports.
    """

    image: str
    category: TemplateCategory = "custom"
    description: str = ""
    command: list[str] | None = None
    env: dict[str, str] = {}
    ports: list[int] = []
    memory: int | str | None = None
    cpus: float | None = None
    max_memory: int | str | None = None
    max_cpus: float | None = None
    healthcheck: HealthCheckBody | None = None
    generated_env: list[str] = []
    workdir: str | None = None
    user: str | None = None
    # Isolation level of containers from this template unless a start request names one.
    isolation: Literal["standard", "sandboxed"] | None = None
    # Timers of containers from this template unless a start request sets them: seconds or a
    # string such as "1h" until removal, seconds or "15m" without activity until a stop, and
    # removal once the container has exited.
    ttl: float | str | None = None
    idle_timeout: float | str | None = None
    auto_remove: bool = False


class TemplateBody(TemplateUpdateBody, kw_only=True):
    """A new custom template: the fields of a version, and its name."""

    name: str


class HealthCheckRecord(Record):
    test: list[str]
    interval: float
    timeout: float
    retries: int
    start_period: float


class TemplateRecord(Record):
    name: str
    version: int
    category: str
    image: str
    description: str
    command: list[str] | None
    env: dict[str, str]
    ports: list[int]
    memory: int | None
    cpus: float | None
    max_memory: int | None
    max_cpus: float | None
    healthcheck: HealthCheckRecord | None
    generated_env: list[str]
    workdir: str | None
    user: str | None
    builtin: bool
    owner: str | None
    isolation: str | None = None
    ttl: float | None = None
    idle_timeout: float | None = None
    auto_remove: bool = False
    versions: list[int] | None = None


def template_record(template: TemplateSpec, versions: list[int] | None = None) -> TemplateRecord:
    fields = msgspec.structs.asdict(template)
    check = fields.pop("healthcheck")
    return TemplateRecord(
        **fields,
        healthcheck=HealthCheckRecord(**msgspec.structs.asdict(check)) if check else None,
        versions=versions,
    )


class TemplateController(Controller):
    path = "/api/runtime/templates"
    tags = ["templates"]

    @get("/", summary="List the built-in templates and the caller's custom ones (every one for an admin)")
    async def list_templates(
        self,
        state: State,
        caller: NamedDependency[Caller],
        category: Annotated[
            Literal["runtime", "database", "static", "system", "custom"] | None, QueryParameter()
        ] = None,
    ) -> list[TemplateRecord]:
        catalog: TemplateCatalog = state.templates
        return [template_record(template) for template in await catalog.list(category, caller)]

    @get(
        "/{name:str}",
        summary="Read a template, the latest version unless ?version= names another",
        responses=problem_responses(404),
    )
    async def get_template(
        self,
        state: State,
        caller: NamedDependency[Caller],
        name: FromPath[str],
        # Versions are stored in a 32-bit integer column, so no larger version can exist.
        version: Annotated[int | None, QueryParameter(ge=1, le=2**31 - 1)] = None,
    ) -> TemplateRecord:
        catalog: TemplateCatalog = state.templates
        template = await catalog.get_visible(caller, name, version)
        return template_record(template, await catalog.versions(name))

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Create a custom template owned by the caller",
        responses=problem_responses(409, 422),
    )
    async def create_template(
        self, state: State, caller: NamedDependency[Caller], data: JSONBody[TemplateBody]
    ) -> TemplateRecord:
        catalog: TemplateCatalog = state.templates
        template = build_template(state.context.settings, **_fields(data))
        return template_record(await catalog.create(caller, template))

    @put(
        "/{name:str}",
        summary="Store a new version of a custom template; earlier versions stay",
        responses=problem_responses(404, 409, 422),
    )
    async def update_template(
        self, state: State, caller: NamedDependency[Caller], name: FromPath[str], data: JSONBody[TemplateUpdateBody]
    ) -> TemplateRecord:
        catalog: TemplateCatalog = state.templates
        template = build_template(state.context.settings, name=name, **_fields(data))
        stored = await catalog.update(caller, name, template)
        return template_record(stored, await catalog.versions(name))

    @delete(
        "/{name:str}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Delete a custom template; refused while a pool or container uses it unless force=true",
        description="With force=true the template's pool and its unclaimed members go too; containers "
        "already made from the template keep running.",
        responses=problem_responses(404, 409),
    )
    async def delete_template(
        self, state: State, caller: NamedDependency[Caller], name: FromPath[str], force: FromQuery[bool] = False
    ) -> None:
        catalog: TemplateCatalog = state.templates
        await catalog.delete(caller, name, force)
        if force:
            pools: PoolService = state.pools
            await pools.delete_if_present(caller, name)


def _fields(body: TemplateBody | TemplateUpdateBody) -> dict:
    fields = msgspec.structs.asdict(body)
    check = fields.pop("healthcheck")
    fields["healthcheck"] = HealthCheck(**msgspec.structs.asdict(check)) if check else None
    return fields
