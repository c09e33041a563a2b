"""The Allow header of OPTIONS responses, listing every method a path serves."""

from __future__ import annotations

from litestar.config.app import AppConfig
from litestar.plugins import InitPlugin, ReceiveRoutePlugin
from litestar.routes import BaseRoute, HTTPRoute
from litestar.types import Message, Scope


class AllowHeaderPlugin(InitPlugin, ReceiveRoutePlugin):
    """Rewrites the Allow header of OPTIONS responses from the methods each path serves.

    Litestar 2.25 creates the automatic OPTIONS handler of a controller's path together with the
    first handler registered for that path, so its Allow header names only that handler's method
    (OPTIONS of `/api/runtime/templates`, which serves GET and POST, returned `Allow: OPTIONS, POST`). This plugin records
    the methods of every route as it is registered and sets the header from them.
    """

    def __init__(self) -> None:
        self.allowed: dict[str, bytes] = {}

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.before_send = [*app_config.before_send, self.set_allow_header]
        return app_config

    def receive_route(self, route: BaseRoute) -> None:
        if isinstance(route, HTTPRoute):
            # A path registered again, with more handlers, replaces its earlier route.
            self.allowed[route.path_format] = ", ".join(sorted(route.methods)).encode()

    async def set_allow_header(self, message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start" or scope.get("method") != "OPTIONS":
            return
        allowed = self.allowed.get(scope.get("path_template", ""))
        if allowed is None:
            return
        headers = [(name, value) for name, value in message.get("headers", []) if name.lower() != b"allow"]
        message["headers"] = [*headers, (b"allow", allowed)]
