"""What the OpenAPI document states beyond Litestar's defaults: problem responses and exact bodies.

Every error reaches a client as RFC 9457 problem details (`corebase.api.problems`). A handler
names the statuses its own logic raises with `responses=problem_responses(404, 409)`.
`ProblemResponsesPlugin` adds the statuses that come from the framework to every route: 400 when
the handler takes parameters or a body, 413 when it takes a body, and 401, 403 and 429 when the
route needs an API key.

`RequestBodySchemaPlugin` documents request bodies with msgspec's own JSON Schema, which states
exactly what the decoder accepts: unknown fields are rejected, and bounds of 0 are kept, which
Litestar 2.25 drops because it skips falsy constraint values.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import msgspec
from litestar.constants import RESERVED_KWARGS
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIFormat, OpenAPIType, Schema
from litestar.plugins import OpenAPISchemaPlugin, ReceiveRoutePlugin
from litestar.routes import BaseRoute, HTTPRoute
from litestar.typing import FieldDefinition

from corebase.api.auth import PUBLIC_PATTERN
from corebase.api.problems import PROBLEM_MEDIA_TYPE
from corebase.api.schemas import Body

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator

# Description of each documented problem status, as this API uses it.
PROBLEM_DESCRIPTIONS = {
    400: "A parameter or body field has the wrong type or shape; `field` names it",
    401: "The API key is missing, malformed, unknown, revoked or expired",
    403: "The caller's role or key scopes do not allow this, or a security policy or quota denied it",
    404: "The resource does not exist, or belongs to another user",
    409: "The request conflicts with the resource's current state",
    411: "The request has no Content-Length, which this route needs",
    413: "The request body is larger than server.max_request_body",
    415: "The request body has a Content-Type this route does not take",
    422: "A field has a value the server cannot accept; `field` names it and `detail` says the fix",
    429: "The API key sent more requests than its rate limit allows; Retry-After gives the seconds to wait",
    502: "The container engine rejected the operation",
    503: "The container engine cannot be reached; Retry-After gives the seconds to wait",
    504: "A container engine call ran past its timeout",
}

# Statuses of handlers that call the container engine.
ENGINE_STATUSES = (502, 503, 504)


class FieldError(msgspec.Struct):
    """One invalid field of a 400 response."""

    field: str | None
    message: str


class Problem(msgspec.Struct, kw_only=True):
    """An RFC 9457 problem-details body.

    Some problems add fields beside the standard ones, such as `containerId`, `reasons` or `quota`.
    """

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    field: str | None = None
    errors: list[FieldError] | None = None


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """Return the documented problem-details responses for `statuses`, for a handler's `responses=`."""
    return {
        status: ResponseSpec(
            data_container=Problem,
            media_type=PROBLEM_MEDIA_TYPE,
            description=PROBLEM_DESCRIPTIONS[status],
            generate_examples=False,
        )
        for status in statuses
    }


class ProblemResponsesPlugin(ReceiveRoutePlugin):
    """Documents the problem statuses that authentication, the rate limit and request decoding add."""

    def receive_route(self, route: BaseRoute) -> None:
        if not isinstance(route, HTTPRoute):
            return
        for handler in route.route_handlers:
            statuses = framework_statuses(handler, route.path)
            # A status the handler documents itself keeps the handler's description.
            handler.responses = {**problem_responses(*statuses), **(handler.responses or {})}


def framework_statuses(handler: HTTPRouteHandler, path: str) -> list[int]:
    """Return the problem statuses that Litestar and CoreBase's middleware can return for `handler`."""
    statuses = []
    inputs = _request_inputs(handler)
    if inputs:
        statuses.append(400)
    if "data" in inputs:
        statuses.append(413)
    if not _is_public(handler, path):
        statuses.extend((401, 403, 429))
    return statuses


def _request_inputs(handler: HTTPRouteHandler) -> set[str]:
    """Name the handler's parameters that come from the request: path, query, header and body."""
    dependencies = set(handler.resolve_dependencies())
    parameters = set(handler.parsed_fn_signature.parameters)
    return {name for name in parameters if name not in dependencies and (name == "data" or name not in RESERVED_KWARGS)}


def _is_public(handler: HTTPRouteHandler, path: str) -> bool:
    """Tell whether the route is served without an API key, as BearerKeyMiddleware decides it."""
    return bool(handler.opt.get("exclude_from_auth")) or PUBLIC_PATTERN.search(path) is not None


class RequestBodySchemaPlugin(OpenAPISchemaPlugin):
    """Documents request bodies (`Body` subclasses) with the JSON Schema msgspec derives from them.

    Litestar's own struct plugin builds the component, so nested structs stay references to
    their components. Then every property without such a reference is replaced by msgspec's
    schema for it, and `additionalProperties` is set as the struct's `forbid_unknown_fields` says.
    """

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        return not field_definition.is_union and field_definition.is_subclass_of(Body)

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        litestar_plugin = next(
            plugin
            for plugin in schema_creator.plugins
            if plugin is not self and schema_creator.plugin_supports_field(plugin, field_definition)
        )
        schema = litestar_plugin.to_openapi_schema(field_definition, schema_creator)

        exact = msgspec.json.schema(field_definition.type_)
        definition = exact["$defs"][exact["$ref"].rsplit("/", 1)[1]]
        schema.additional_properties = definition.get("additionalProperties")
        for name, property_schema in definition.get("properties", {}).items():
            if '"$ref"' not in json.dumps(property_schema):
                schema.properties[name] = schema_from_json(property_schema)
        return schema


def schema_from_json(value: dict[str, Any]) -> Schema:
    """Convert a JSON Schema object without references into Litestar's Schema."""
    aliases = Schema.field_aliases()
    fields: dict[str, Any] = {}
    for key, item in value.items():
        name = aliases.get(key, key)
        if name in ("any_of", "one_of", "all_of", "prefix_items"):
            item = [schema_from_json(entry) for entry in item]
        elif name in ("items", "schema_not") or (name == "additional_properties" and isinstance(item, dict)):
            item = schema_from_json(item)
        elif name == "properties":
            item = {key: schema_from_json(entry) for key, entry in item.items()}
        elif name == "type":
            item = OpenAPIType(item)
        elif name == "format":
            item = OpenAPIFormat(item)
        fields[name] = item
    return Schema(**fields)
