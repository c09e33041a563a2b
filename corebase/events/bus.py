"""The event bus: in memory within one process, or Redis pub/sub between several.

Publishing never blocks the publisher. On the in-process bus an event goes straight to the local
listeners. On Redis it is queued, a background task publishes it, and every process (the
publisher included) receives it from its subscription and hands it to its own listeners. Each
event is decoded once per process, however many WebSocket clients listen.

A Redis outage does not stop the server: events published meanwhile are dropped with a logged
error, and the subscription reconnects with a growing delay. Each listener has a bounded backlog,
so a client that reads too slowly loses its oldest events rather than holding the server's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from corebase.errors import ConfigError
from corebase.events.types import CHANNELS, Event, channel_of
from corebase.settings import Settings

logger = logging.getLogger(__name__)

_decode = msgspec.json.Decoder(Event).decode
_encode = msgspec.json.Encoder().encode

# Events waiting to be published to Redis; more are dropped until Redis catches up.
PUBLISH_QUEUE_SIZE = 10_000
MAX_RECONNECT_DELAY = 30.0
# Seconds between two log lines about the same Redis failure.
LOG_EVERY = 30.0


class Listener:
    """A local consumer: a predicate over events and a bounded queue of the matching events' JSON."""

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
        self.reconnect_delay = settings.events.reconnect_delay
        # Channel names carry the prefix, so installations sharing one Redis never see each other's events.
        self.channel_names = {channel: f"{settings.redis.key_prefix}:events:{channel}" for channel in CHANNELS}
        self.published = 0
        self.publish_failures = 0
        self.connected = not self.redis_url
        self._redis: Redis | None = Redis.from_url(self.redis_url) if self.redis_url else None
        self._outbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=PUBLISH_QUEUE_SIZE)
        self._listeners: set[Listener] = set()
        self._tasks: list[asyncio.Task] = []
        self._last_log = 0.0

    @property
    def kind(self) -> str:
        return "redis" if self.redis_url else "memory"

    async def start(self) -> None:
        """Ping Redis, then start the publishing and receiving tasks. The in-process bus needs no start."""
        if self._redis is None:
            return
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise ConfigError(
                f"cannot connect to Redis at {_without_password(self.redis_url)}: {str(exc).rstrip('.')}; start Redis, "
                "fix redis.url (COREBASE_REDIS_URL), or leave it empty to keep events in this process"
            ) from None
        subscribed = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._publish_loop(), name="corebase-event-publisher"),
            asyncio.create_task(self._receive_loop(subscribed), name="corebase-event-receiver"),
        ]
        await subscribed.wait()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._redis is not None:
            await self._redis.aclose()

    def publish(self, event: Event) -> None:
        """Send an event to every listener of it, in this process and, on Redis, in the others."""
        payload = _encode(event)
        if self._redis is None:
            self._dispatch(event, payload)
            return
        try:
            self._outbox.put_nowait((self.channel_names[channel_of(event.type)], payload))
        except asyncio.QueueFull:
            self.publish_failures += 1
            self._log_failure("events are published faster than Redis takes them; event %s dropped", event.type)

    @asynccontextmanager
    async def listen(self, accepts: Callable[[Event], bool]) -> AsyncIterator[Listener]:
        """Register a listener for the events `accepts` approves, removing it on exit."""
        listener = Listener(accepts, self.backlog)
        self._listeners.add(listener)
        try:
            yield listener
        finally:
            self._listeners.discard(listener)

    def _dispatch(self, event: Event, payload: bytes) -> None:
        for listener in list(self._listeners):
            try:
                listener.offer(event, payload)
            except Exception:
                logger.exception("an event listener failed on %s", event.type)

    async def _publish_loop(self) -> None:
        while True:
            channel, payload = await self._outbox.get()
            try:
                await self._redis.publish(channel, payload)
                self.published += 1
            except (RedisError, OSError) as exc:
                self.publish_failures += 1
                self._log_failure("publishing an event to Redis failed (%s); it was dropped", exc)

    async def _receive_loop(self, subscribed: asyncio.Event) -> None:
        """Receive events from Redis, re-subscribing after a lost connection with a growing delay."""
        delay = self.reconnect_delay
        by_name = {name.encode(): name for name in self.channel_names.values()}
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*self.channel_names.values())
                if not self.connected:
                    logger.info("receiving events from Redis again")
                self.connected = True
                subscribed.set()
                delay = self.reconnect_delay
                async for message in pubsub.listen():
                    if message.get("type") != "message" or message.get("channel") not in by_name:
                        continue
                    try:
                        event = _decode(message["data"])
                    except msgspec.DecodeError:
                        logger.warning("an event from Redis could not be decoded; it was skipped")
                        continue
                    self._dispatch(event, message["data"])
            except (RedisError, OSError) as exc:
                self.connected = False
                subscribed.set()
                logger.error("lost the Redis event subscription (%s); reconnecting in %.1f s", exc, delay)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RECONNECT_DELAY)

    def _log_failure(self, message: str, *args) -> None:
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY:
            self._last_log = now
            logger.error(message + " (%d failures so far)", *args, self.publish_failures)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=f"{user}{host}{port}"))
