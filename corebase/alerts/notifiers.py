"""The contract of an alert notifier, provided by the `corebase_notifiers` hook."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import msgspec


class Notification(msgspec.Struct, rename="camel"):
    """One alert change to tell someone about. `alert` and `rule` are their API records."""

    transition: str
    alert: dict[str, Any]
    rule: dict[str, Any]


class DeliveryResult(msgspec.Struct):
    """The outcome of one delivery attempt. `retry` false means the failure will not go away."""

    ok: bool
    target: str = ""
    status_code: int | None = None
    error: str = ""
    retry: bool = True


@runtime_checkable
class Notifier(Protocol):
    """A kind of notification target, named by `name` in a rule's notifiers list."""

    name: str

    def validate(self, config: dict[str, Any]) -> dict[str, Any]:
        """Check one notifiers entry of a rule and return it normalised.

        Raise ValueError with a message that says what to fix; the host names the field.
        """

    async def send(self, notification: Notification, config: dict[str, Any]) -> DeliveryResult:
        """Make one delivery attempt. The host retries with backoff and records each attempt."""
