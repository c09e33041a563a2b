"""ASGI middleware that writes an audit record for every change and every denied request.

What is recorded:

- every request other than GET, HEAD and OPTIONS, whatever its status: `success` below 400,
  `denied` for 401, 403, 404 and 429, `failed` otherwise;
- every GET that is denied (401, 403, 404 or 429), such as a look at another user's container;
- every WebSocket connection that is denied: refused at the handshake (a missing key, a key
  without the read scope, a rate limit) or closed by the handler with close code 4401, 4403,
  4404 or 4429, such as a log stream of another user's container. Its method is "WS";
- every accepted WebSocket connection of a route that sets ``opt={"audit_sessions": True}``,
  because it changes something (an interactive exec), when it ends: `success` after a normal
  close, `failed` after a close with an error code. Its status is the close code minus 4000 for
  codes from 4000, 500 for 1011, and 101 otherwise. The handler may add fields to the record's
  details by putting a dict into ``scope[AUDIT_DETAILS]``, such as the command's exit code.

The action comes from the method and the route template (see `action_name`), unless the handler
sets ``opt={"audit_action": ...}``. The target comes from the last path parameter, then the
request body's `containerId` or `name`, then the response's `containerId` or `id`. Only those
named fields are read; request and response bodies are never stored. The reason is the problem
detail of an error response, with API keys and bearer credentials replaced.

The record is written before the last chunk of the response is sent, so a client that has the
response can find its record. A failed write is logged as an error and the response goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from typing import Any
from urllib.parse import parse_qs

from litestar.datastructures import MutableScopeHeaders
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from corebase.audit.log import AuditEntry, AuditLog, Outcome
from corebase.auth.caller import Caller
from corebase.errors import ApiError

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
# A client's request id is kept when it is short and plain; any other value is replaced.
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")

# WebSocket connections are recorded under this method; like reads, only when denied.
WEBSOCKET = "WS"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS", WEBSOCKET})
DENIED_STATUSES = frozenset({401, 403, 404, 429})
# Bytes of a request or response body read for target fields; larger bodies are not inspected.
MAX_INSPECTED_BODY = 64 * 1024
# Extension fields of a problem body (such as a policy's `reasons`) are kept in `details` up to this size.
MAX_PROBLEM_FIELDS = 4096

# Target type by the action's leading segments, longest match first; a handler may set
# opt={"audit_target": ...} instead.
TARGET_TYPES = {
    "runtime": "container",
    "runtime.templates": "template",
    "runtime.pools": "pool",
    "alerts": "alert",
    "alerts.rules": "alert_rule",
    "users": "user",
    "keys": "key",
    "quotas": "quota",
    "policies": "policy",
}

# Application close codes carry an HTTP status plus this offset, as 4404 for "not found".
CLOSE_CODE_OFFSET = 4000
# The scope key under which a WebSocket handler leaves details for its session's record.
AUDIT_DETAILS = "corebase.audit_details"
# The status recorded for a session that closed without an error: the upgrade's own status.
SWITCHING_PROTOCOLS = 101

_PROBLEM_STANDARD_FIELDS = {"type", "title", "status", "detail", "instance"}


class AuditRecorder:
    """Records each request that changes something or is denied; see the module docstring."""

    def __init__(self, app: ASGIApp, audit: AuditLog) -> None:
        self.app = app
        self.audit = audit
        self._routes: dict[str, frozenset[str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        exchange = _Exchange(scope, _request_id(scope))

        async def receive_body() -> Message:
            message = await receive()
            if message["type"] == "http.request" and exchange.method not in READ_METHODS:
                exchange.add_request_chunk(message.get("body", b""))
            return message

        async def send_with_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                MutableScopeHeaders.from_message(message)[REQUEST_ID_HEADER] = exchange.request_id
            elif message["type"] == "http.response.body" and exchange.recorded_status():
                exchange.add_response_chunk(message.get("body", b""))
                if not message.get("more_body", False):
                    await self._record(exchange)
            await send(message)

        try:
            await self.app(scope, receive_body, send_with_record)
        except Exception as exc:
            # An error raised by a middleware, such as a rejected API key or a rate limit, becomes a
            # response in the app's exception handlers after it has left this middleware.
            if exchange.status is None:
                exchange.fail(exc)
                _add_header(exc, exchange.request_id)
            # A response that started but never finished is recorded with the status it started with.
            if exchange.recorded_status():
                await self._record(exchange)
            raise

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run a WebSocket connection and record it when it is refused, denied, or a session that ends."""
        exchange = _Exchange(scope, _request_id(scope))
        accepted = False

        async def send_with_record(message: Message) -> None:
            nonlocal accepted
            if message["type"] == "websocket.accept":
                accepted = exchange.session = _records_sessions(scope)
            elif message["type"] == "websocket.close" and exchange.status is None:
                code = message.get("code", 1000)
                status = code - CLOSE_CODE_OFFSET
                if status in DENIED_STATUSES or accepted:
                    exchange.close(code, message.get("reason") or "")
                    await self._record(exchange)
            await send(message)

        try:
            await self.app(scope, receive, send_with_record)
        except Exception as exc:
            if exchange.status is None:
                exchange.fail(exc)
                if exchange.recorded_status():
                    await self._record(exchange)
            raise
        if accepted and exchange.status is None:
            # The client closed the connection, so the handler sent no close of its own.
            exchange.close(1000, "")
            await self._record(exchange)

    async def _record(self, exchange: _Exchange) -> None:
        if exchange.written:
            return
        exchange.written = True
        try:
            entry = exchange.entry(self._route_methods(exchange.scope))
            # Shielded, because the handler's task may be cancelled while its close is recorded,
            # as a WebSocket handler's is when the client leaves at the same moment.
            await asyncio.shield(self.audit.append(entry))
        except Exception:
            logger.exception(
                "audit record lost: %s %s (status %s, request id %s)",
                exchange.method,
                exchange.scope.get("path"),
                exchange.status,
                exchange.request_id,
            )

    def _route_methods(self, scope: Scope) -> dict[str, frozenset[str]]:
        """Map each route template, without parameter types, to the methods it serves."""
        if self._routes is None:
            routes: dict[str, frozenset[str]] = {}
            for route in scope["litestar_app"].routes:
                methods = getattr(route, "methods", None) or set()
                routes[_plain_template(route.path)] = frozenset(methods)
            self._routes = routes
        return self._routes


class _Exchange:
    """State of one request inside the recorder: its status, reason, request id and the bodies read for targets."""

    def __init__(self, scope: Scope, request_id: str) -> None:
        self.scope = scope
        self.method: str = scope.get("method", WEBSOCKET)
        self.request_id = request_id
        self.status: int | None = None
        self.reason = ""
        self.problem_fields: dict[str, Any] = {}
        self.written = False
        # True for an accepted WebSocket session that is recorded whatever its outcome.
        self.session = False
        self.close_code: int | None = None
        self._request_body = bytearray()
        self._response_body = bytearray()

    def add_request_chunk(self, chunk: bytes) -> None:
        if len(self._request_body) <= MAX_INSPECTED_BODY:
            self._request_body += chunk

    def add_response_chunk(self, chunk: bytes) -> None:
        if len(self._response_body) <= MAX_INSPECTED_BODY:
            self._response_body += chunk

    def fail(self, exc: Exception) -> None:
        """Take the status and reason from an exception that no handler inside turned into a response."""
        if isinstance(exc, ApiError):
            self.status, self.reason = exc.status, exc.detail
            self.problem_fields = dict(exc.extra)
        elif isinstance(exc, HTTPException):
            self.status, self.reason = exc.status_code, exc.detail
        else:
            self.status, self.reason = 500, f"an unexpected {type(exc).__name__} occurred"

    def close(self, code: int, reason: str) -> None:
        """Take the status and reason from a WebSocket close."""
        if code >= CLOSE_CODE_OFFSET:
            self.status = code - CLOSE_CODE_OFFSET
        else:
            self.status = 500 if code == 1011 else SWITCHING_PROTOCOLS
        self.reason = reason
        self.close_code = code

    def outcome(self) -> Outcome | None:
        status = self.status or 500
        if status in DENIED_STATUSES:
            return "denied"
        if self.method in READ_METHODS and not self.session:
            return None
        return "success" if status < 400 else "failed"

    def recorded_status(self) -> bool:
        return self.status is not None and self.outcome() is not None

    def entry(self, routes: dict[str, frozenset[str]]) -> AuditEntry:
        caller = self.scope.get("user")
        caller = caller if isinstance(caller, Caller) else None
        template = _plain_template(self.scope.get("path_template") or self.scope["path"])
        handler = self.scope.get("route_handler")
        opt = getattr(handler, "opt", None) or {}
        action = opt.get("audit_action") or action_name(self.method, template, routes.get(template, frozenset()))

        response = _json_object(self._response_body)
        if (self.status or 500) >= 400 and response:
            self.reason = str(response.get("detail") or self.reason)
            self.problem_fields = {key: value for key, value in response.items() if key not in _PROBLEM_STANDARD_FIELDS}
        target_type, target_id = self._target(action, opt)

        details: dict[str, Any] = {"method": self.method, "path": self.scope["path"]}
        if self.session:
            details["closeCode"] = self.close_code
            details.update(self.scope.get(AUDIT_DETAILS) or {})
        if response and "type" in response and (self.status or 500) >= 400:
            details["problemType"] = response["type"]
        if self.problem_fields and len(json.dumps(self.problem_fields, default=str)) <= MAX_PROBLEM_FIELDS:
            details["problem"] = self.problem_fields

        client = self.scope.get("client")
        return AuditEntry(
            action=action,
            outcome=self.outcome() or "failed",
            actor=caller.user if caller else None,
            key_id=caller.key_id if caller else None,
            role=caller.role if caller else None,
            target_type=target_type,
            target_id=target_id,
            status=self.status,
            reason=self.reason,
            source=client[0] if client else "",
            request_id=self.request_id,
            details=details,
        )

    def _target(self, action: str, opt: dict[str, Any]) -> tuple[str | None, str | None]:
        """Find the target's type and id: last path parameter, the query's containerId, the request body, the response."""
        target_type = opt.get("audit_target") or _target_type(action)
        path_params = self.scope.get("path_params") or {}
        if path_params:
            name, value = list(path_params.items())[-1]
            return target_type or name.removesuffix("_id"), str(value)

        # Reads name their container in the query, as GET /api/runtime/logs?containerId=...
        queried = parse_qs(self.scope.get("query_string", b"").decode("latin-1")).get("containerId")
        if queried:
            return "container", queried[0]
        request = _json_object(self._request_body)
        response = _json_object(self._response_body) if (self.status or 500) < 400 else {}
        if isinstance(request.get("containerId"), str):
            return "container", request["containerId"]
        if isinstance(response.get("containerId"), str):
            return "container", response["containerId"]
        for source in (response, request):
            for field in ("id", "name"):
                if isinstance(source.get(field), str | int):
                    return target_type, str(source[field])
        return target_type, None


def _records_sessions(scope: Scope) -> bool:
    handler = scope.get("route_handler")
    return bool((getattr(handler, "opt", None) or {}).get("audit_sessions"))


def action_name(method: str, template: str, methods: frozenset[str]) -> str:
    """Derive an action such as "runtime.start" from a method and a route template.

    The name joins the template's fixed segments after /api. DELETE adds ".delete", PUT and
    PATCH add ".update", and a POST adds ".create" when the same path also serves GET (a
    collection). A GET of one item, whose template ends in a parameter, adds ".get".
    """
    segments = [segment for segment in template.strip("/").split("/") if segment]
    if segments and segments[0] == "api":
        segments = segments[1:]
    fixed = [segment for segment in segments if not segment.startswith("{")]
    base = ".".join(fixed) or "root"
    ends_in_parameter = bool(segments) and segments[-1].startswith("{")

    if method == "DELETE":
        return base + ".delete"
    if method in ("PUT", "PATCH"):
        return base + ".update"
    if method == "POST" and "GET" in methods:
        return base + ".create"
    if method in READ_METHODS and ends_in_parameter:
        return base + ".get"
    return base


def _target_type(action: str) -> str | None:
    parts = action.split(".")
    for length in range(len(parts), 0, -1):
        found = TARGET_TYPES.get(".".join(parts[:length]))
        if found:
            return found
    return None


def _plain_template(template: str) -> str:
    """Drop parameter types: /containers/{container_id:str} becomes /containers/{container_id}."""
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", template)


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name.lower() == b"x-request-id":
            candidate = value.decode("latin-1").strip()
            if REQUEST_ID_PATTERN.match(candidate):
                return candidate
            break
    return secrets.token_hex(16)


def _add_header(exc: Exception, request_id: str) -> None:
    """Put the request id on an error's response, which the exception handlers build later."""
    if isinstance(exc, ApiError):
        exc.headers[REQUEST_ID_HEADER] = request_id
    elif isinstance(exc, HTTPException):
        exc.headers = {**(exc.headers or {}), REQUEST_ID_HEADER: request_id}


def _json_object(body: bytes | bytearray) -> dict[str, Any]:
    if not body or len(body) > MAX_INSPECTED_BODY:
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}
