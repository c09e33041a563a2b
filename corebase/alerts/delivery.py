"""Sending alert notifications in the background, with retries, backoff and a log of every attempt.

Each notification runs in its own task, so a slow or failing receiver delays no other
notification and never the rule evaluation that queued it. At most `max_parallel` attempts run at
once; a task waiting for its next retry holds no slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timezone
from typing import Any

from corebase.alerts.notifiers import DeliveryResult, Notification, Notifier
from corebase.alerts.tables import AlertDelivery

logger = logging.getLogger(__name__)

MAX_PARALLEL = 8


class DeliveryQueue:
    def __init__(self, attempts: int, backoff: float, attempt_timeout: float, max_parallel: int = MAX_PARALLEL) -> None:
        self.attempts = attempts
        self.backoff = backoff
        self.attempt_timeout = attempt_timeout
        self._slots = asyncio.Semaphore(max_parallel)
        self._tasks: set[asyncio.Task] = set()
        self._running = False

    def start(self) -> None:
        self._running = True

    async def stop(self) -> None:
        """Cancel the deliveries still in progress.

        NOTE: the queue lives in memory, so notifications not yet delivered are lost, not resumed
        by another process.
        """
        self._running = False
        if self._tasks:
            logger.warning("stopping with %d alert notification(s) not yet delivered", len(self._tasks))
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def submit(self, notifier: Notifier, config: dict[str, Any], notification: Notification, alert_id: str, rule_id: str) -> None:
        """Queue one notification for one notifiers entry; returns at once."""
        if not self._running:
            logger.warning(
                "alert %s: %s notification through %s dropped because delivery is stopped",
                alert_id, notification.transition, notifier.name,
            )
            return
        task = asyncio.create_task(
            self._deliver(notifier, config, notification, alert_id, rule_id), name=f"corebase-alert-delivery-{alert_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(
        self, notifier: Notifier, config: dict[str, Any], notification: Notification, alert_id: str, rule_id: str
    ) -> None:
        for attempt in range(1, self.attempts + 1):
            async with self._slots:
                result = await self._attempt(notifier, config, notification)
            await self._record(notifier.name, notification.transition, alert_id, rule_id, attempt, result)

            if result.ok:
                logger.info(
                    "alert %s: %s notification delivered through %s to %s (attempt %d)",
                    alert_id, notification.transition, notifier.name, result.target or "-", attempt,
                )
                return
            if not result.retry or attempt == self.attempts:
                logger.warning(
                    "alert %s: %s notification through %s to %s failed after %d attempt(s), giving up: %s",
                    alert_id, notification.transition, notifier.name, result.target or "-", attempt, result.error,
                )
                return
            delay = self.backoff * 2 ** (attempt - 1)
            logger.warning(
                "alert %s: %s notification through %s to %s failed (attempt %d of %d): %s; retrying in %.1f s",
                alert_id, notification.transition, notifier.name, result.target or "-", attempt, self.attempts,
                result.error, delay,
            )
            await asyncio.sleep(delay)

    async def _attempt(self, notifier: Notifier, config: dict[str, Any], notification: Notification) -> DeliveryResult:
        try:
            return await asyncio.wait_for(notifier.send(notification, config), self.attempt_timeout)
        except asyncio.TimeoutError:
            return DeliveryResult(ok=False, error=f"timed out after {self.attempt_timeout:g} s")
        except Exception as exc:  # a plugin's bug must not end the delivery task unrecorded
            logger.exception("notifier %s raised while sending", notifier.name)
            return DeliveryResult(ok=False, error=f"{type(exc).__name__}: {exc}")

    async def _record(
        self, notifier: str, transition: str, alert_id: str, rule_id: str, attempt: int, result: DeliveryResult
    ) -> None:
        try:
            await AlertDelivery.insert(
                AlertDelivery(
                    alert_id=alert_id,
                    rule_id=rule_id,
                    notifier=notifier,
                    target=result.target[:512],
                    transition=transition,
                    attempt=attempt,
                    ok=result.ok,
                    status_code=result.status_code,
                    error=result.error,
                    delivered_at=datetime.now(timezone.utc),
                )
            )
        except Exception:
            logger.exception("could not record delivery attempt %d of alert %s", attempt, alert_id)
