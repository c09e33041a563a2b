"""Roles, key scopes, and the one guard that checks them on every route.

A route needs one or more scopes:

- `read` for GET, HEAD and OPTIONS requests and for WebSocket streams,
- `write` for every other HTTP method,
- `admin` as well, when the route declares ``opt={"access": ADMIN_ONLY}``,
- `read` and `write` for a WebSocket route that declares ``opt={"access": READ_WRITE}``, because
  it changes something, as an interactive exec does.

A role grants scopes (viewer: read; developer: read and write; admin: all three). A key's own
`scopes` narrow its user's role further; an empty list keeps everything the role grants. A route
declared with ``opt={"access": SELF_SERVICE}`` is open to every role, because its handler limits
callers to their own records and to scopes they already hold.
"""

from __future__ import annotations

from collections.abc import Iterable

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from corebase.auth.caller import Caller, Role
from corebase.errors import Forbidden

READ = "read"
WRITE = "write"
ADMIN = "admin"
SCOPES = (READ, WRITE, ADMIN)

ROLE_SCOPES: dict[str, frozenset[str]] = {
    "viewer": frozenset({READ}),
    "developer": frozenset({READ, WRITE}),
    "admin": frozenset({READ, WRITE, ADMIN}),
}
ROLES: tuple[Role, ...] = ("viewer", "developer", "admin")

# Values of a route's opt["access"].
ADMIN_ONLY = "admin"
SELF_SERVICE = "self"
READ_WRITE = "read-write"

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def effective_scopes(role: str, key_scopes: Iterable[str]) -> frozenset[str]:
    """Return what a key may do: its scopes within its user's role, or the whole role for no scopes."""
    granted = ROLE_SCOPES.get(role, frozenset())
    chosen = frozenset(key_scopes)
    return granted & chosen if chosen else granted


def required_scopes(handler: BaseRouteHandler, method: str | None) -> frozenset[str]:
    """Return the scopes a route needs for `method`; None is a WebSocket connection, which reads unless the route says otherwise."""
    access = handler.opt.get("access")
    if access == SELF_SERVICE:
        return frozenset()
    needed = {READ if method is None or method in READ_METHODS else WRITE}
    if access == READ_WRITE:
        needed = {READ, WRITE}
    if access == ADMIN_ONLY:
        needed.add(ADMIN)
    return frozenset(needed)


def minimum_role(needed: frozenset[str]) -> Role:
    """Return the minimum role that grants every scope in `needed`."""
    return next(role for role in ROLES if needed <= ROLE_SCOPES[role])


async def require_access(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Litestar guard: reject with 403, naming the role or scope needed, a caller who lacks it.

    Routes that skip authentication (/health, the API docs, a public /metrics) have no caller and
    pass; BearerKeyMiddleware has already rejected every other request without a valid key.
    """
    caller = connection.scope.get("user")
    if not isinstance(caller, Caller):
        return

    method = connection.scope.get("method") if connection.scope["type"] == "http" else None
    needed = required_scopes(handler, method)
    target = f"{method or 'WebSocket'} {connection.scope.get('path_template') or connection.url.path}"
    role_scopes = ROLE_SCOPES.get(caller.role, frozenset())
    if not needed <= role_scopes:
        role = minimum_role(needed)
        raise Forbidden(
            f"{target} needs the {role} role, but user {caller.user!r} has the role {caller.role!r}; "
            "ask an admin to change the role or use another user's key",
            requiredRole=role,
            role=caller.role,
        )
    caller_scopes = effective_scopes(caller.role, caller.scopes)
    if not needed <= caller_scopes:
        missing = sorted(needed - caller_scopes)
        raise Forbidden(
            f"{target} needs the scope {', '.join(missing)}, but API key {caller.key_id} is limited to "
            f"{', '.join(sorted(caller_scopes)) or 'no scopes'}; use a key with that scope",
            requiredScopes=missing,
            keyScopes=sorted(caller_scopes),
        )
