"""The event bus: Litestar's channels, on memory in one process or on Redis pub/sub across several.

Publishing never blocks the publisher: events queue and a background task sends them. Each
process subscribes once to every channel and hands each event to the local listeners whose filter
matches it, so an event is decoded once per process however many WebSocket clients there are.
Each listener has a bounded backlog; a client that reads too slowly loses its oldest events rather
than holding the server's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import msgspec
from litestar.channels import ChannelsPlugin
from redis.exceptions import RedisError
from litestar.channels.backends.memory import MemoryChannelsBackend

from corebase.errors import ConfigError
from corebase.events.types import CHANNELS, Event, channel_of
from corebase.settings import Settings

logger = logging.getLogger(__name__)

_decode = msgspec.json.Decoder(Event).decode
_encode = msgspec.json.Encoder().encode


class Listener:
    """One local consumer: a predicate over events and a bounded queue of the matching events' JSON."""

    def __init__(self, accepts: Callable[[Event], bool], backlog: int) -> None:
        self.accepts = accepts
        self.dropped = 0
        self._items: deque[bytes] = deque(maxlen=backlog)
        self._ready = asyncio.Event()

    def offer(self, event: Event, payload: bytes) -> None:
        if self.accepts(event):
            if len(self._items) == self._items.maxlen:
                self.dropped += 1
            self._items.append(payload)
            self._ready.set()

    async def next_batch(self) -> list[bytes]:
        """Wait for at least one event; return every event waiting, oldest first."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        batch = list(self._items)
        self._items.clear()
        return batch


class EventBus:
    def __init__(self, settings: Settings) -> None:
        self.redis_url = settings.redis.url
        self.backlog = settings.events.subscriber_backlog
        self._redis = None
        if self.redis_url:
            from litestar.channels.backends.redis import RedisChannelsPubSubBackend
            from redis.asyncio import Redis

            self._redis = Redis.from_url(self.redis_url)
            backend = RedisChannelsPubSubBackend(redis=self._redis, key_prefix=f"{settings.redis.key_prefix}:events")
        else:
            backend = MemoryChannelsBackend()
        self.channels = ChannelsPlugin(
            backend=backend,
            channels=CHANNELS,
            subscriber_max_backlog=self.backlog,
            subscriber_backlog_strategy="dropleft",
        )
        self._listeners: set[Listener] = set()
        self._dispatcher: asyncio.Task | None = None

    @property
    def kind(self) -> str:
        return "redis" if self.redis_url else "memory"

    async def start(self) -> None:
        if self._redis is not None:
            try:
                await self._redis.ping()
            except (RedisError, OSError) as exc:
                raise ConfigError(
                    f"cannot connect to Redis at {_without_password(self.redis_url)}: {str(exc).rstrip('.')}; start Redis, "
                    "fix redis.url (COREBASE_REDIS_URL), or leave it empty to keep events in this process"
                ) from None
        await self.channels.__aenter__()
        subscriber = await self.channels.subscribe(list(CHANNELS))
        self._dispatcher = asyncio.create_task(self._dispatch(subscriber.iter_events()), name="corebase-event-dispatch")

    async def stop(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        await self.channels.__aexit__(None, None, None)
        if self._redis is not None:
            await self._redis.aclose()

    def publish(self, event: Event) -> None:
        """Queue an event for every listener of its channel, in this process and others."""
        try:
            self.channels.publish(_encode(event), channel_of(event.type))
        except RuntimeError:
            logger.debug("event %s dropped: the bus is not running", event.type)

    @asynccontextmanager
    async def listen(self, accepts: Callable[[Event], bool]) -> AsyncIterator[Listener]:
        """Register a listener for the events `accepts` approves, removing it on exit."""
        listener = Listener(accepts, self.backlog)
        self._listeners.add(listener)
        try:
            yield listener
        finally:
            self._listeners.discard(listener)

    async def _dispatch(self, payloads: AsyncIterator[bytes]) -> None:
        async for payload in payloads:
            try:
                event = _decode(payload)
            except msgspec.DecodeError:
                logger.warning("an event on the bus could not be decoded; it was skipped")
                continue
            for listener in list(self._listeners):
                try:
                    listener.offer(event, payload)
                except Exception:
                    logger.exception("an event listener failed on %s", event.type)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=f"{user}{host}{port}"))
