"""GET /metrics, with the request timing and engine error counting behind it, as a Litestar plugin."""

from __future__ import annotations

import time
from typing import Any

from litestar import MediaType, Request, Response, get
from litestar.config.app import AppConfig
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.handlers import HTTPRouteHandler
from litestar.middleware.base import DefineMiddleware
from litestar.plugins import InitPlugin
from litestar.types import ASGIApp, ExceptionHandlersMap, Message, Receive, Scope, Send

from corebase.auth.access import ADMIN_ONLY
from corebase.errors import ApiError
from corebase.metrics.prometheus import PrometheusMetrics
from corebase.settings import Settings


class PrometheusPlugin(InitPlugin):
    """Adds GET /metrics to one app, times its HTTP requests and counts the engine errors it returns."""

    def __init__(self, settings: Settings) -> None:
        self.public = not settings.monitoring.prometheus_auth

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        metrics = PrometheusMetrics()
        app_config.state["prometheus"] = metrics
        app_config.route_handlers = [*app_config.route_handlers, metrics_route(self.public)]
        # The first middleware is the outermost, so the timer also measures requests that
        # authentication rejects.
        app_config.middleware = [DefineMiddleware(RequestTimer, metrics=metrics), *app_config.middleware]
        app_config.exception_handlers = _counting_engine_errors(app_config.exception_handlers, metrics)
        return app_config


def metrics_route(public: bool) -> HTTPRouteHandler:
    """Build the GET /metrics handler. A public handler skips authentication."""

    # In OpenAPI an empty security requirement means that the operation needs no credentials.
    @get(
        "/metrics",
        exclude_from_auth=public,
        # The series cover every user's containers, so reading them needs the admin role.
        opt={"access": ADMIN_ONLY},
        security=[{}] if public else None,
        media_type=MediaType.TEXT,
        tags=["monitoring"],
        summary="Prometheus metrics: containers, pools, monitoring, HTTP requests and engine errors",
        description=(
            "Text exposition format, or OpenMetrics when the Accept header requests it. "
            "Needs an admin API key unless monitoring.prometheus_auth is false."
        ),
    )
    async def metrics(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
        body, content_type = await state.prometheus.render(state.monitor, request.headers.get("accept", ""))
        # The encoder's content type names the format version, so it replaces Litestar's default header.
        return Response(body, media_type=MediaType.TEXT, headers={"Content-Type": content_type})

    return metrics


class RequestTimer:
    """ASGI middleware that observes each HTTP request's duration by method, route template and status.

    The route label is the template the router matched, such as
    /api/runtime/containers/{container_id}, never the raw path, so the number of series stays
    bounded. Requests that match no route never reach route middleware and are not counted.
    """

    def __init__(self, app: ASGIApp, metrics: PrometheusMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        except Exception as exc:
            # An error raised by a middleware, such as a rejected API key, is turned into a
            # response by the app's exception handlers after it has left this middleware.
            status = _status_for(exc)
            raise
        finally:
            route = scope.get("path_template") or ""
            self.metrics.observe_request(scope["method"], route, status, time.perf_counter() - started)


def _status_for(exc: Exception) -> int:
    """Return the status the exception handlers in corebase.api.problems send for `exc`."""
    if isinstance(exc, ApiError):
        return exc.status
    if isinstance(exc, HTTPException):
        return exc.status_code
    return 500


def _counting_engine_errors(handlers: ExceptionHandlersMap, metrics: PrometheusMetrics) -> ExceptionHandlersMap:
    """Wrap every exception handler so that engine errors are counted before the response is built.

    Returns a new mapping, because the original may be shared with other app instances.
    """

    def counting(handler):
        def handle(request: Request, exc: Exception) -> Response:
            metrics.count_engine_error(exc)
            return handler(request, exc)

        return handle

    return {key: counting(handler) for key, handler in handlers.items()}
