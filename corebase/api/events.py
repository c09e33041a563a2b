"""WebSocket streams: live events at /api/events and followed logs at /api/runtime/logs/ws.

Both authenticate like every other route (``Authorization: Bearer <key>`` on the upgrade request).
A client of /api/events chooses what it receives with query parameters, and may change its choice
at any time by sending a JSON message:

    {"action": "subscribe", "types": ["container", "alert.firing"], "containerIds": ["ctr_..."]}

The server acknowledges each choice with {"type": "subscribed", "filter": {...}}. An invalid
choice gets {"type": "error", "field": ..., "detail": ...}, and the earlier choice stays in place. Callers
who are not admins receive events of their own containers only, and a container id they cannot see
gets the same 404 error as a missing one: at connection time the socket then closes with code 4404.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import re

import msgspec
from litestar import WebSocket, websocket

from corebase.api.logs import check_window, parse_log_time, parse_tail
from corebase.api.sockets import CLOSE_BAD_REQUEST, encode, error_message, query_flag, reject, run_until_disconnect
from corebase.auth.caller import Caller
from corebase.errors import ApiError, InvalidField
from corebase.events.bus import EventBus
from corebase.events.types import Event, EventFilter
from corebase.runtime.types import LogOptions


class SubscribeMessage(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    action: str
    types: list[str] = []
    container_ids: list[str] = []
    project_ids: list[str] = []


def _split(values: list[str]) -> list[str]:
    """Read a parameter given as comma-separated values, repeated, or both."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


@websocket(
    "/api/events",
    summary="Live events: container lifecycle, metric samples and alert changes",
    description="Query parameters types, containerId and projectId take comma-separated values. Metric "
    "samples are sent only for containers named in containerId.",
)
async def events_socket(socket: WebSocket) -> None:
    caller: Caller = socket.user
    bus: EventBus = socket.app.state.bus
    query = socket.query_params
    wanted = EventFilter(
        types=_split(query.getall("types", [])),
        container_ids=_split(query.getall("containerId", [])),
        project_ids=_split(query.getall("projectId", [])),
    )
    await socket.accept()
    problem = wanted.problem()
    if problem:
        await socket.send_text(error_message(*problem).decode())
        await socket.close(code=CLOSE_BAD_REQUEST, reason=problem[1][:120])
        return
    try:
        await _check_visible(socket, caller, wanted.container_ids)
    except ApiError as exc:
        await reject(socket, exc, "containerId")
        return

    async def forward(current: EventFilter) -> None:
        def accepts(event: Event) -> bool:
            return (caller.is_admin or event.owner == caller.user) and current.matches(event)

        async with bus.listen(accepts) as listener:
            await socket.send_text(encode({"type": "subscribed", "filter": current}).decode())
            while True:
                for payload in await listener.next_batch():
                    await socket.send_text(payload.decode())

    async def read_client() -> None:
        # A new filter replaces the forwarding task, so forwarding itself stays a plain loop.
        forwarding = asyncio.ensure_future(forward(wanted))
        try:
            while True:
                receiving = asyncio.ensure_future(socket.receive_data(mode="text"))
                done, _ = await asyncio.wait({receiving, forwarding}, return_when=asyncio.FIRST_COMPLETED)
                if forwarding in done:
                    receiving.cancel()
                    forwarding.result()
                    return
                candidate = await _read_subscription(socket, receiving.result())
                if candidate is not None:
                    forwarding.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await forwarding
                    forwarding = asyncio.ensure_future(forward(candidate))
        finally:
            forwarding.cancel()
            with contextlib.suppress(BaseException):
                await forwarding

    await run_until_disconnect(socket, read_client())


async def _check_visible(socket: WebSocket, caller: Caller, container_ids: list[str]) -> None:
    """Raise ContainerNotFound for a named container a non-admin caller does not own.

    Admins may name any id, including one of a container that does not exist yet.
    """
    if caller.is_admin:
        return
    for container_id in container_ids:
        await socket.app.state.containers.find(caller, container_id, include_removed=True)


async def _read_subscription(socket: WebSocket, raw: str) -> EventFilter | None:
    """Decode a client's subscribe message, or send an error for an invalid one and return None."""
    try:
        message = msgspec.json.decode(raw, type=SubscribeMessage)
    except msgspec.ValidationError as exc:
        path = re.search(r"at `\$\.(\w+)", str(exc))
        await socket.send_text(error_message(path.group(1) if path else None, f"invalid message: {exc}").decode())
        return None
    except msgspec.DecodeError:
        await socket.send_text(
            error_message(None, 'messages must be JSON objects such as {"action": "subscribe", "types": ["container"]}').decode()
        )
        return None
    if message.action != "subscribe":
        await socket.send_text(error_message("action", f"unknown action {message.action!r}; use 'subscribe'").decode())
        return None
    candidate = EventFilter(types=message.types, container_ids=message.container_ids, project_ids=message.project_ids)
    problem = candidate.problem()
    if problem:
        await socket.send_text(error_message(*problem).decode())
        return None
    try:
        await _check_visible(socket, socket.user, candidate.container_ids)
    except ApiError as exc:
        await socket.send_text(error_message("containerIds", exc.detail, exc.status).decode())
        return None
    return candidate


@websocket(
    "/api/runtime/logs/ws",
    summary="Follow a container's logs over a WebSocket",
    description="Same query parameters as GET /api/runtime/logs (containerId, tail, since, until, "
    "timestamps, stdout, stderr, follow; follow defaults to true here). Each message is "
    '{"type": "log", "stream": "stdout", "data": "..."}; the last is {"type": "end"}.',
)
async def logs_socket(socket: WebSocket) -> None:
    caller: Caller = socket.user
    containers = socket.app.state.containers
    query = socket.query_params
    await socket.accept()
    try:
        container_id = query.get("containerId")
        if not container_id:
            raise InvalidField("containerId", "containerId is missing; name the container whose logs to follow", status=400)
        options = LogOptions(
            stdout=query_flag(query, "stdout", True),
            stderr=query_flag(query, "stderr", True),
            follow=query_flag(query, "follow", True),
            tail=parse_tail(query.get("tail")),
            since=parse_log_time("since", query.get("since")),
            until=parse_log_time("until", query.get("until")),
            timestamps=query_flag(query, "timestamps", False),
        )
        if not options.stdout and not options.stderr:
            raise InvalidField("stdout", "stdout and stderr are both false; select at least one stream", status=400)
        check_window(options.since, options.until)
        chunks = await containers.logs(caller, container_id, options)
    except ApiError as exc:
        await reject(socket, exc)
        return

    async def forward() -> None:
        decoders = {"stdout": codecs.getincrementaldecoder("utf-8")("replace"), "stderr": codecs.getincrementaldecoder("utf-8")("replace")}
        async for chunk in chunks:
            text = decoders[chunk.stream].decode(chunk.data)
            if text:
                await socket.send_text(encode({"type": "log", "stream": chunk.stream, "data": text}).decode())
        for stream, decoder in decoders.items():
            rest = decoder.decode(b"", final=True)
            if rest:
                await socket.send_text(encode({"type": "log", "stream": stream, "data": rest}).decode())
        await socket.send_text(encode({"type": "end"}).decode())
        await socket.close()

    async def read_client() -> None:
        while True:
            await socket.receive_data(mode="text")

    try:
        await run_until_disconnect(socket, read_client(), forward())
    finally:
        await chunks.aclose()
