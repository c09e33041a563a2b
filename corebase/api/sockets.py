"""What the WebSocket routes share: close codes, error messages, boolean query parameters, and running a connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from litestar import WebSocket
from litestar.exceptions import WebSocketDisconnect

from corebase.errors import ApiError, InvalidField

logger = logging.getLogger(__name__)

# WebSocket close codes in the application range: an HTTP status plus 4000.
CLOSE_BAD_REQUEST = 4400
CLOSE_NOT_FOUND = 4404
CLOSE_CONFLICT = 4409
CLOSE_UNAVAILABLE = 4503

encode = msgspec.json.Encoder().encode


def error_message(field: str | None, detail: str, status: int = 422) -> bytes:
    return encode({"type": "error", "status": status, "field": field, "detail": detail})


async def reject(socket: WebSocket, exc: ApiError, field: str | None = None) -> None:
    """Send `exc` as an error message, then close the connection with the close code of its status."""
    await socket.send_text(error_message(field or getattr(exc, "field", None), exc.detail, exc.status).decode())
    await socket.close(code=close_code(exc.status), reason=exc.detail[:120])


def query_flag(query, name: str, default: bool) -> bool:
    value = query.get(name)
    if value is None:
        return default
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise InvalidField(name, f"{name} {value!r} is not a boolean; use true or false", status=400)


def close_code(status: int) -> int:
    return {404: CLOSE_NOT_FOUND, 409: CLOSE_CONFLICT, 503: CLOSE_UNAVAILABLE}.get(status, CLOSE_BAD_REQUEST if status < 500 else 4500)


async def run_until_disconnect(socket: WebSocket, *jobs) -> None:
    """Run the jobs until the first ends (or the client leaves), then stop the others."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            exc = task.exception()
            if exc is not None and not isinstance(exc, WebSocketDisconnect):
                logger.error("WebSocket %s failed", socket.url.path, exc_info=exc)
                with contextlib.suppress(Exception):
                    await socket.close(code=1011)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
