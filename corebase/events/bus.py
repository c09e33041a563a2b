"""The event bus: Litestar's channels, on memory in one process or on Redis pub/sub across several.

Publishing never blocks the publisher: events queue and a background task sends them. Each
subscriber has a bounded backlog; a client that reads too slowly loses its oldest events rather
than holding the server's memory.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
from litestar.channels import ChannelsPlugin
from litestar.channels.backends.memory import MemoryChannelsBackend

from corebase.events.types import CHANNELS, Event, channel_of
from corebase.settings import Settings

logger = logging.getLogger(__name__)

_decode = msgspec.json.Decoder(Event).decode
_encode = msgspec.json.Encoder().encode


class EventBus:
    def __init__(self, settings: Settings) -> None:
        self.redis_url = settings.redis.url
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
            subscriber_max_backlog=settings.events.subscriber_backlog,
            subscriber_backlog_strategy="dropleft",
        )

    @property
    def kind(self) -> str:
        return "redis" if self.redis_url else "memory"

    async def start(self) -> None:
        if self._redis is not None:
            await self._redis.ping()
        await self.channels.__aenter__()

    async def stop(self) -> None:
        await self.channels.__aexit__(None, None, None)
        if self._redis is not None:
            await self._redis.aclose()

    def publish(self, event: Event) -> None:
        """Queue an event for every subscriber of its channel, in this process and others."""
        try:
            self.channels.publish(_encode(event), channel_of(event.type))
        except RuntimeError:
            logger.debug("event %s dropped: the bus is not running", event.type)

    async def wait_published(self, event: Event) -> None:
        await self.channels.wait_published(_encode(event), channel_of(event.type))

    @asynccontextmanager
    async def subscribe(self, channels: list[str]) -> AsyncIterator[AsyncIterator[tuple[Event, bytes]]]:
        """Subscribe to `channels`; yield an iterator of (event, its JSON), unsubscribing on exit."""
        async with self.channels.start_subscription(channels) as subscriber:
            yield _events(subscriber.iter_events())


async def _events(payloads: AsyncIterator[bytes]) -> AsyncIterator[tuple[Event, bytes]]:
    async for payload in payloads:
        try:
            yield _decode(payload), payload
        except msgspec.DecodeError:
            logger.warning("an event on the bus could not be decoded; it was skipped")
