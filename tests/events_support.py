"""A WebSocket client for /api/events and /api/runtime/logs/ws, as a user's program would use them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from contextlib import asynccontextmanager

import websockets

from support.server import RunningServer


@asynccontextmanager
async def event_socket(server: RunningServer, query: str = "", key: str | None = None):
    """Connect to /api/events and consume the first "subscribed" acknowledgement."""
    url = server.base_url.replace("http://", "ws://") + "/api/events" + (f"?{query}" if query else "")
    headers = {"Authorization": f"Bearer {key or server.admin_key}"}
    async with websockets.connect(url, additional_headers=headers, max_size=None) as socket:
        first = json.loads(await asyncio.wait_for(socket.recv(), 10))
        assert first["type"] == "subscribed", first
        yield socket


async def next_message(socket, predicate: Callable[[dict], bool], limit: float = 30.0) -> dict:
    """Return the first message that satisfies `predicate`, failing after `limit` seconds."""
    deadline = time.monotonic() + limit
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("no matching message arrived in time")
        message = json.loads(await asyncio.wait_for(socket.recv(), remaining))
        if predicate(message):
            return message


async def collect(socket, seconds: float) -> list[dict]:
    """Every message that arrives within `seconds`."""
    messages = []
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            messages.append(json.loads(await asyncio.wait_for(socket.recv(), remaining)))
        except asyncio.TimeoutError:
            break
    return messages


async def subscribe(socket, **wanted) -> dict:
    await socket.send(json.dumps({"action": "subscribe", **wanted}))
    return await next_message(socket, lambda message: message["type"] in ("subscribed", "error"), 10)
