"""The rate limit middleware, added after authentication so that it limits each API key."""

from __future__ import annotations

import math

from litestar.config.app import AppConfig
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.plugins import InitPlugin
from litestar.types import ASGIApp, Receive, Scope, Send

from corebase.api.auth import PUBLIC_PATTERN
from corebase.auth.caller import Caller
from corebase.errors import RateLimited
from corebase.ratelimit import MemoryLimiter, RedisLimiter, build_limiter
from corebase.settings import Settings


class RateLimitPlugin(InitPlugin):
    """Adds the rate limit middleware after every other app middleware, so the caller is known."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        limiter = build_limiter(self.settings)
        if limiter is None:
            return app_config
        limits = self.settings.rate_limit
        app_config.middleware = [
            *app_config.middleware,
            RateLimitMiddleware(limiter, limits.requests_per_minute, limits.burst or limits.requests_per_minute),
        ]
        app_config.on_shutdown = [*app_config.on_shutdown, limiter.close]
        return app_config


class RateLimitMiddleware(ASGIMiddleware):
    """Rejects a request with 429 when its API key has used up its tokens.

    Public routes (/health, the API docs) are excluded, and so is a request without a caller,
    such as a public /metrics scrape.
    """

    scopes = (ScopeType.HTTP,)
    # Matched against the request path, as BearerKeyMiddleware matches PUBLIC_PATHS.
    should_bypass_for_scope = staticmethod(lambda scope: PUBLIC_PATTERN.search(scope["path"]) is not None)

    def __init__(self, limiter: MemoryLimiter | RedisLimiter, per_minute: int, burst: int) -> None:
        self.limiter = limiter
        self.per_minute = per_minute
        self.burst = burst

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        caller = scope.get("user")
        if isinstance(caller, Caller):
            wait = await self.limiter.take(caller.key_id)
            if wait > 0:
                raise RateLimited(caller.key_id, max(1, math.ceil(wait)), self.per_minute, self.burst)
        await next_app(scope, receive, send)
