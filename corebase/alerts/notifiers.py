"""The contract of an alert notifier, provided by the `corebase_notifiers` hook."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import msgspec


class Notification(msgspec.Struct, rename="camel"):
    """One alert change to tell one notifier entry about. `alert` and `rule` are their API records.

    `delivery_id` stays the same across the retries of one notification, so a receiver can drop
    a repeat it has already handled.
    """

    transition: str
    alert: dict[str, Any]
    rule: dict[str, Any]
    delivery_id: str = ""


class DeliveryResult(msgspec.Struct):
    """The outcome of one delivery attempt. `retry` false means the failure will not go away."""

    ok: bool
    target: str = ""
    status_code: int | None = None
    error: str = ""
    retry: bool = True


class InvalidNotifierConfig(ValueError):
    """A notifiers entry is invalid. `field` names the key at fault inside the entry, such as `url`."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


@runtime_checkable
class Notifier(Protocol):
    """A kind of notification target, named by `name` in a rule's notifiers list.

    A notifier may set `secret_fields`, the entry keys that the API accepts but never returns.
    The API shows `<key>Set: true` in their place. Without the attribute, `secret` is such a key.
    """

    name: str

    def validate(self, config: dict[str, Any]) -> dict[str, Any]:
        """Check one notifiers entry of a rule and return it normalised.

        Raise ValueError with a message that names the fix, and the host names the field. Raise
        InvalidNotifierConfig to name the key inside the entry as well.
        """

    async def send(self, notification: Notification, config: dict[str, Any]) -> DeliveryResult:
        """Make one delivery attempt. The host retries with backoff and records each attempt."""
