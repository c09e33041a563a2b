"""Bearer-key authentication for every route except /health and the API docs."""

from __future__ import annotations

import re
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from corebase.auth.caller import Caller
from corebase.auth.keys import KeyVerifier
from corebase.errors import Unauthorized

# Routes anyone may call: the health check and the OpenAPI schema with its browsable UIs.
PUBLIC_PATHS = [r"^/health$", r"^/schema"]
PUBLIC_PATTERN = re.compile("|".join(PUBLIC_PATHS))


class BearerKeyMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        header = connection.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        if not header:
            raise Unauthorized("missing API key; send 'Authorization: Bearer <key>'")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthorized("the Authorization header must have the form 'Bearer <key>'")

        verifier: KeyVerifier = connection.app.state.key_verifier
        caller = await verifier.verify(secret.strip())
        return AuthenticationResult(user=caller, auth=None)


def provide_caller(request: Request[Caller, Any, Any]) -> Caller:
    """The one dependency every handler takes its caller from."""
    return request.user
