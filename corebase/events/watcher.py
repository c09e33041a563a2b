"""Follows the engine's event stream and turns it into CoreBase events.

Every API process follows the stream, so when the monitoring leader dies another process already
has it open. On the in-process bus each process publishes the events for its own clients. On
Redis only the leader publishes, so each event reaches every client once. The leader alone also acts on events (refreshing rows, lifecycle alert rules).

After a dropped connection the watcher reconnects with a growing delay and resumes from the time
of the last event it saw. The engine replays events from that time onward, the last one included,
so events already seen are recognised by their (time, container, action) key and skipped. Behind
an EngineGuard that reports the engine down, the watcher waits for the guard's probe to see the
engine back instead of growing the delay, then reconnects after the first delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from corebase.containers.tables import Container
from corebase.errors import ApiError
from corebase.events.bus import EventBus
from corebase.events.types import Event
from corebase.runtime.guard import EngineGuard
from corebase.runtime.protocol import ContainerRuntime
from corebase.runtime.types import RuntimeEvent

logger = logging.getLogger(__name__)

MANAGED_LABELS = {"corebase.managed": "true"}
# Engine actions that become events; other actions (exec_*, attach, resize, ...) are ignored.
ACTIONS = {
    "create": "container.created",
    "start": "container.started",
    "die": "container.died",
    "stop": "container.stopped",
    "destroy": "container.removed",
    "oom": "container.oom",
    "pause": "container.paused",
    "unpause": "container.unpaused",
}
HEALTH_PREFIX = "health_status"
SEEN_KEYS = 4096
# Keys of events this much older than the newest one seen are forgotten.
SEEN_WINDOW_NS = 5_000_000_000
# An OOM or kill event this recent explains the next die event of the same container.
EXPLAINS_DEATH_WITHIN = 120.0
MAX_RECONNECT_DELAY = 30.0

Listener = Callable[[Event], Awaitable[None]]


class EngineWatcher:
    def __init__(
        self,
        runtime: ContainerRuntime,
        bus: EventBus,
        *,
        is_leader: Callable[[], bool],
        reconnect_delay: float = 1.0,
    ) -> None:
        self.runtime = runtime
        self.bus = bus
        self.is_leader = is_leader
        self.reconnect_delay = reconnect_delay
        self.listeners: list[Listener] = []
        # Called each time the stream is back after a loss, because events missed meanwhile may
        # have left rows behind the engine (the reconciler's wake-up, for one).
        self.reconnect_callbacks: list[Callable[[], None]] = []
        self.connected = asyncio.Event()
        self.reconnects = 0
        self._since_ns: int | None = None
        self._seen: OrderedDict[tuple[int, str, str], None] = OrderedDict()
        self._oom: dict[str, float] = {}
        self._kills: dict[str, float] = {}
        # Listeners write to the database, so they run apart from the stream and never delay the next event.
        self._for_listeners: asyncio.Queue[Event] = asyncio.Queue(maxsize=10_000)

    async def run(self) -> None:
        notifier = asyncio.create_task(self._notify_listeners(), name="corebase-event-listeners")
        try:
            await self._follow()
        finally:
            notifier.cancel()
            await asyncio.gather(notifier, return_exceptions=True)

    async def _follow(self) -> None:
        delay = self.reconnect_delay
        while True:
            try:
                await self.runtime.info()
                self.connected.set()
                if self.reconnects:
                    for callback in self.reconnect_callbacks:
                        callback()
                async with contextlib.aclosing(self.runtime.events(MANAGED_LABELS, self._since_ns)) as events:
                    async for raw in events:
                        delay = self.reconnect_delay
                        await self._handle(raw)
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                logger.warning("engine event stream lost (%s); reconnecting in %.1f s", exc, delay)
            except Exception:
                logger.exception("engine event stream failed; reconnecting in %.1f s", delay)
            self.connected.clear()
            if isinstance(self.runtime, EngineGuard) and not self.runtime.available:
                # The guard's probe tells when the engine is back, so the delay need not grow meanwhile.
                await self.runtime.wait_until_available()
                delay = self.reconnect_delay
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RECONNECT_DELAY)
            self.reconnects += 1

    async def _handle(self, raw: RuntimeEvent) -> None:
        if raw.key in self._seen:
            return
        self._seen[raw.key] = None
        self._since_ns = max(self._since_ns or 0, raw.time_ns)
        # A reconnect replays events from `_since_ns` on, so older keys can go; the cap bounds a
        # burst of events that all share one instant.
        horizon = self._since_ns - SEEN_WINDOW_NS
        while self._seen and (len(self._seen) > SEEN_KEYS or next(iter(self._seen))[0] < horizon):
            self._seen.popitem(last=False)

        event = await self._translate(raw)
        if event is None:
            return
        leader = self.is_leader()
        if self.bus.kind == "memory" or leader:
            self.bus.publish(event)
        if leader and self.listeners:
            try:
                self._for_listeners.put_nowait(event)
            except asyncio.QueueFull:
                logger.error("event listeners fell behind; event %s of container %s was not handled", event.type, event.container_id)

    async def _notify_listeners(self) -> None:
        while True:
            event = await self._for_listeners.get()
            for listener in self.listeners:
                try:
                    await listener(event)
                except Exception:
                    logger.exception("a listener failed on event %s of container %s", event.type, event.container_id)

    async def _translate(self, raw: RuntimeEvent) -> Event | None:
        now = time.monotonic()
        action = raw.action
        if action == "kill":
            self._kills[raw.engine_id] = now
            _forget_old(self._kills, now)
            return None
        if action.startswith(HEALTH_PREFIX):
            event_type = "container.health"
            data = {"status": action.partition(":")[2].strip()}
        elif action in ACTIONS:
            event_type = ACTIONS[action]
            data = {}
        else:
            return None

        if action == "oom":
            self._oom[raw.engine_id] = now
            _forget_old(self._oom, now)
        if action == "die":
            data = {
                "exitCode": _int(raw.attributes.get("exitCode")),
                "oomKilled": _recent(self._oom.pop(raw.engine_id, None), now),
                # A kill event (a stop, restart or kill request) before the exit means it was asked for.
                "requested": _recent(self._kills.pop(raw.engine_id, None), now),
            }
        if action == "destroy":
            self._oom.pop(raw.engine_id, None)
            self._kills.pop(raw.engine_id, None)

        container_id = raw.attributes.get("corebase.id")
        if not container_id:
            return None
        row = (
            await Container.select(Container.owner, Container.project_id, Container.template, Container.pool_state)
            .where(Container.id == container_id)
            .first()
        )
        # Pool members waiting for a claim belong to no one yet; their events are not published.
        if row is None or row["pool_state"] is not None:
            return None
        return Event(
            type=event_type,
            container_id=container_id,
            owner=row["owner"],
            project_id=row["project_id"],
            template=row["template"],
            data={"engineId": raw.engine_id, "engineTimeNs": raw.time_ns, **data},
        )


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _recent(moment: float | None, now: float) -> bool:
    return moment is not None and now - moment <= EXPLAINS_DEATH_WITHIN


def _forget_old(moments: dict[str, float], now: float) -> None:
    """Drop entries too old to explain a death, so containers that never die leave nothing behind."""
    if len(moments) > 256:
        for engine_id in [key for key, moment in moments.items() if not _recent(moment, now)]:
            del moments[engine_id]
