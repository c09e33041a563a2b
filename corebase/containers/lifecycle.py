"""The lifecycle loop: acts on the timers of containers (their ttl, idle timeout and auto-remove).

Every `lifecycle.interval` seconds a pass

    expires   removes every container whose `expires_at` has passed, running or not;
    idles     stops every running or paused container with an `idle_timeout` whose last activity
              (`last_activity_at`, see corebase.containers.activity) is longer ago than that;
    cleans    removes every container with `auto_remove` that has exited.

The timers live in the database, so a restarted process, or another one, carries on where the
last left off. One process at a time runs passes, holding the `lifecycle` lease. Each action is
logged, written to the audit log with the actor "system", and published as an event
(`container.expired`, `container.idle_stopped`, `container.auto_removed`).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

from corebase import leases
from corebase.audit.log import AuditEntry, AuditLog
from corebase.auth.caller import Caller
from corebase.containers.service import LIVE_STATUSES, utcnow
from corebase.containers.tables import ACTIVE_STATUSES, Container
from corebase.errors import ApiError, ContainerNotFound, ContainerNotRunning
from corebase.events.bus import EventBus
from corebase.events.types import Event
from corebase.settings import Settings

if TYPE_CHECKING:
    from corebase.containers.service import ContainerService

logger = logging.getLogger(__name__)

LEASE_NAME = "lifecycle"
# The caller the loop acts as; its actions are audited with this user as the actor.
SYSTEM = Caller(key_id="", user="system", role="admin")
ENDED_STATUSES = ("exited", "dead")

Action = Literal["expire", "idle_stop", "auto_remove"]
# The event published for each kind of action; its audit action is runtime.lifecycle.<action>.
EVENT_TYPES: dict[Action, str] = {
    "expire": "container.expired",
    "idle_stop": "container.idle_stopped",
    "auto_remove": "container.auto_removed",
}


class LifecycleService:
    """Runs lifecycle passes while this process holds the `lifecycle` lease."""

    def __init__(self, settings: Settings, containers: ContainerService, bus: EventBus, audit: AuditLog | None) -> None:
        self.settings = settings.lifecycle
        self.containers = containers
        self.bus = bus
        self.audit = audit
        # The lease is short, so that after a crash another process takes over soon.
        self.leadership = leases.Leadership(LEASE_NAME, "the lifecycle loop", max(3.0, min(15.0, self.settings.interval * 3)))
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="corebase-lifecycle")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.leadership.release()

    async def _run(self) -> None:
        while True:
            try:
                held = await self.leadership.take()
                if held and getattr(self.containers.runtime, "available", True):
                    await self.run_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("a lifecycle pass failed; retrying in %g s", self.settings.interval)
            await asyncio.sleep(self.settings.interval)

    async def run_pass(self) -> list[tuple[Action, str]]:
        """Act on every container whose timer is due; return what was done, as (action, container id) pairs."""
        done: list[tuple[Action, str]] = []
        for row in await self._expired():
            if await self._act("expire", row):
                done.append(("expire", row.id))
        for row in await self._idle():
            if await self._act("idle_stop", row):
                done.append(("idle_stop", row.id))
        for row in await self._ended():
            if await self._act("auto_remove", row):
                done.append(("auto_remove", row.id))
        return done

    # --- finding due containers --------------------------------------------------------------

    async def _expired(self) -> list[Container]:
        return await _select().where(
            _owned()
            & Container.status.is_in(_settled_statuses())
            & Container.expires_at.is_not_null()
            & (Container.expires_at <= utcnow())
        )

    async def _idle(self) -> list[Container]:
        now = utcnow()
        rows = await _select().where(
            _owned() & Container.status.is_in(["running", "paused"]) & Container.idle_timeout.is_not_null()
        )
        due = []
        for row in rows:
            last = row.last_activity_at or row.started_at or row.created_at
            if last + timedelta(seconds=row.idle_timeout) <= now:
                due.append(row)
        return due

    async def _ended(self) -> list[Container]:
        rows = await _select().where(_owned() & (Container.auto_remove == True) & Container.status.is_in(  # noqa: E712
            [*LIVE_STATUSES, *ENDED_STATUSES]
        ))
        # One engine list call brings the statuses of the live ones up to date, so exits are seen
        # within a pass even when no engine event reached this process.
        await self.containers.refresh_rows(rows)
        return [row for row in rows if row.status in ENDED_STATUSES]

    # --- acting ------------------------------------------------------------------------------

    async def _act(self, action: Action, row: Container) -> bool:
        """Carry out one action; log, audit and publish it. Return whether it was done."""
        reason = _reason(action, row)
        try:
            if action == "idle_stop":
                if row.status == "paused":
                    # Resumed first, so that the stop signal reaches the processes.
                    await self.containers.resume(SYSTEM, row.id)
                await self.containers.stop(SYSTEM, row.id, None)
            else:
                await self.containers.remove(SYSTEM, row.id, force=True)
        except (ContainerNotFound, ContainerNotRunning) as exc:
            # Removed or stopped in the meantime, by a request or by the engine: nothing left to do.
            logger.info("lifecycle %s of container %s skipped: %s", action, row.id, exc.detail)
            return False
        except ApiError as exc:
            logger.warning("lifecycle %s of container %s failed: %s", action, row.id, exc.detail)
            await self._audit(action, row, "failed", exc.status, f"{reason}, but it failed: {exc.detail}")
            return False

        logger.info("lifecycle %s of container %s (owner %s): %s", action, row.id, row.owner, reason)
        await self._audit(action, row, "success", 200, reason)
        self.bus.publish(
            Event(
                type=EVENT_TYPES[action],
                container_id=row.id,
                project_id=row.project_id,
                owner=row.owner,
                template=row.template,
                data={"reason": reason, "ttl": row.ttl, "idleTimeout": row.idle_timeout, "autoRemove": row.auto_remove},
            )
        )
        return True

    async def _audit(self, action: Action, row: Container, outcome: Literal["success", "failed"], status: int, reason: str) -> None:
        if self.audit is None:
            return
        entry = AuditEntry(
            action=f"runtime.lifecycle.{action}",
            outcome=outcome,
            actor=SYSTEM.user,
            target_type="container",
            target_id=row.id,
            status=status,
            reason=reason,
            details={"owner": row.owner, "ttl": row.ttl, "idleTimeout": row.idle_timeout, "autoRemove": row.auto_remove},
        )
        try:
            await self.audit.append(entry)
        except Exception:
            logger.exception("audit record lost: lifecycle %s of container %s", action, row.id)


def _reason(action: Action, row: Container) -> str:
    if action == "expire":
        return f"its ttl of {row.ttl:g} s ran out at {row.expires_at:%Y-%m-%dT%H:%M:%SZ}"
    if action == "idle_stop":
        last = row.last_activity_at or row.started_at
        since = f" since {last:%Y-%m-%dT%H:%M:%SZ}" if last else ""
        return f"it had no activity{since}, longer than its idle timeout of {row.idle_timeout:g} s"
    return f"it exited (status {row.status}, exit code {row.exit_code}) and has autoRemove set"


def _select():
    return Container.objects().output(load_json=True)


def _owned():
    """Rows that belong to a user: pool members waiting for a claim have no timers of their own."""
    return Container.pool_state.is_null()


def _settled_statuses() -> list[str]:
    # A `creating` row belongs to a start in progress, which sets its expiry when it finishes.
    return [status for status in ACTIVE_STATUSES if status != "creating"]
