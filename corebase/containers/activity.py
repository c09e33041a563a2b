"""Recording when a container was last used, for its idle timeout.

A container counts as used by every API request that works with it: an exec of any kind, logs,
stats, a file copy, pause, resume and restart. Reading its record or listing containers does not
count, so a dashboard that watches containers keeps none of them alive. An exec session, a
streamed exec, a followed log or a download counts as activity for as long as it is open.

Each process writes `last_activity_at` of a container at most once every
`lifecycle.activity_interval` seconds, and once more when a session ends, so an idle timeout may
act up to that interval late.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import datetime, timezone

from corebase.containers.tables import Container

logger = logging.getLogger(__name__)

# Containers whose last write this process remembers; older entries are forgotten first.
MAX_TRACKED = 10_000


class ActivityRecorder:
    """Writes `last_activity_at` of containers in use, at most once every `interval` seconds each, besides session ends."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._written: OrderedDict[str, float] = OrderedDict()

    async def touch(self, container_id: str) -> None:
        """Record that the container is in use now; a database error is logged, never raised."""
        now = time.monotonic()
        last = self._written.get(container_id)
        if last is not None and now - last < self.interval:
            return
        self._written[container_id] = now
        self._written.move_to_end(container_id)
        while len(self._written) > MAX_TRACKED:
            self._written.popitem(last=False)
        try:
            await Container.update({Container.last_activity_at: datetime.now(timezone.utc)}).where(
                Container.id == container_id
            )
        except Exception as exc:  # a database error; the next touch tries again
            self._written.pop(container_id, None)
            logger.warning("could not record activity of container %s: %s", container_id, exc)

    def forget(self, container_id: str) -> None:
        self._written.pop(container_id, None)

    @contextlib.asynccontextmanager
    async def session(self, container_id: str) -> AsyncIterator[None]:
        """Count the container as in use while the block runs: at its start, every interval, and at its end."""
        await self.touch(container_id)
        beat = asyncio.create_task(self._beat(container_id), name=f"corebase-activity-{container_id}")
        try:
            yield
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            self.forget(container_id)
            await asyncio.shield(self.touch(container_id))

    async def stream(self, container_id: str, items: AsyncIterator) -> AsyncIterator:
        """Pass `items` on, counting the container as in use until the stream ends or its consumer stops."""
        async with contextlib.aclosing(items), self.session(container_id):
            async for item in items:
                yield item

    async def _beat(self, container_id: str) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.touch(container_id)
