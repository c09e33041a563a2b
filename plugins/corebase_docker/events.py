"""The engine's event stream (`GET /events`), read as RuntimeEvents."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import aiodocker
import aiohttp

from corebase.errors import EngineUnavailable
from corebase.runtime.types import RuntimeEvent
from corebase_docker.client import raw_response

logger = logging.getLogger(__name__)



def event_params(labels: dict[str, str], since_ns: int | None) -> dict[str, str]:
    filters = {"type": ["container"], "label": [f"{key}={value}" for key, value in sorted(labels.items())]}
    params = {"filters": json.dumps(filters)}
    if since_ns is not None:
        # The engine reads "seconds.nanoseconds" and includes the events at exactly that time.
        params["since"] = f"{since_ns // 1_000_000_000}.{since_ns % 1_000_000_000:09d}"
    return params


def parse_event(message: dict) -> RuntimeEvent | None:
    """Build a RuntimeEvent from one JSON message, or None for a message that is not a container event."""
    if message.get("Type", "container") != "container":
        return None
    actor = message.get("Actor") or {}
    engine_id = actor.get("ID") or message.get("id")
    action = message.get("Action") or message.get("status")
    if not engine_id or not action:
        return None
    time_ns = int(message.get("timeNano") or int(message.get("time") or 0) * 1_000_000_000)
    attributes = {str(key): str(value) for key, value in (actor.get("Attributes") or {}).items()}
    return RuntimeEvent(engine_id=engine_id, action=str(action), time_ns=time_ns, attributes=attributes)


async def stream_events(
    docker: aiodocker.Docker, endpoint: str, labels: dict[str, str], since_ns: int | None, *, timeout: float
) -> AsyncIterator[RuntimeEvent]:
    """Yield events until the stream ends; an ended or broken stream raises EngineUnavailable.

    The stream stays open for as long as the engine runs, so only connecting and the response
    headers have a deadline, `timeout` seconds each.
    """
    stream_timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_connect=timeout, sock_read=None)
    try:
        async with raw_response(
            docker, "events", params=event_params(labels, since_ns), timeout=stream_timeout, headers_timeout=timeout
        ) as response:
            async for line in response.content:
                line = line.strip()
                if not line:
                    continue
                try:
                    event = parse_event(json.loads(line))
                except (ValueError, TypeError):
                    logger.warning("skipped an engine event that is not valid JSON: %r", line[:200])
                    continue
                if event is not None:
                    yield event
    except TimeoutError as exc:
        raise EngineUnavailable(
            f"the Docker Engine at {endpoint} did not answer the event stream request within {timeout:g} s"
        ) from exc
    except (aiohttp.ClientError, aiodocker.DockerError, OSError) as exc:
        raise EngineUnavailable(f"the event stream of the Docker Engine at {endpoint} broke: {exc}") from exc
    raise EngineUnavailable(f"the Docker Engine at {endpoint} closed its event stream")
