"""Per-user quotas: the limits that apply to a user, their current usage, and the check at start.

Usage is counted from the user's active container rows, so it cannot drift from what exists:
a row that is removed, or a start that failed, no longer counts. Pool members count only once
a caller has claimed them. `reserve` must run inside the write transaction that writes or
claims the row. It takes a per-user lock first (a PostgreSQL advisory lock held until the
transaction ends; SQLite's immediate transaction already lets one writer in at a time), so
two concurrent starts of one user cannot both pass a limit.

Users with the admin role are not limited by quotas.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from piccolo.engine.postgres import PostgresEngine

from corebase.auth.caller import Caller
from corebase.containers.tables import ACTIVE_STATUSES, Container
from corebase.errors import QuotaExceeded
from corebase.quotas.tables import UserQuota
from corebase.settings import QuotaSettings
from corebase.sizes import format_size, parse_size

logger = logging.getLogger(__name__)

NANO_CPUS = 1_000_000_000
# First key of the two-key PostgreSQL advisory locks taken per user, whose second key is
# hashtext(user). Two-key locks never collide with the single-key lock that serialises migrations.
QUOTA_LOCK_SPACE = 0x71756F74  # "quot" in ASCII


@dataclass(frozen=True)
class QuotaLimits:
    max_containers: int
    # Totals over the user's active containers.
    max_memory_bytes: int
    max_cpus: float
    # Limits of any one container.
    max_container_memory_bytes: int
    max_container_cpus: float


@dataclass(frozen=True)
class QuotaOverrides:
    """A user's stored limits, where None means the configured default applies."""

    max_containers: int | None = None
    max_memory_bytes: int | None = None
    max_cpus: float | None = None
    max_container_memory_bytes: int | None = None
    max_container_cpus: float | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class QuotaUsage:
    containers: int
    memory_bytes: int
    nano_cpus: int

    @property
    def cpus(self) -> float:
        return self.nano_cpus / NANO_CPUS


def default_limits(settings: QuotaSettings) -> QuotaLimits:
    return QuotaLimits(
        max_containers=settings.max_containers,
        max_memory_bytes=parse_size(settings.max_memory),
        max_cpus=settings.max_cpus,
        max_container_memory_bytes=parse_size(settings.max_container_memory),
        max_container_cpus=settings.max_container_cpus,
    )


def _pick(override, default):
    return default if override is None else override


class QuotaService:
    def __init__(self, settings: QuotaSettings) -> None:
        self.settings = settings

    # --- reads -------------------------------------------------------------------------------

    async def overrides(self, user: str) -> QuotaOverrides:
        row = await UserQuota.objects().where(UserQuota.user == user).first()
        if row is None:
            return QuotaOverrides()
        return QuotaOverrides(
            max_containers=row.max_containers,
            max_memory_bytes=row.max_memory_bytes,
            max_cpus=row.max_cpus,
            max_container_memory_bytes=row.max_container_memory_bytes,
            max_container_cpus=row.max_container_cpus,
            updated_at=row.updated_at,
        )

    async def limits(self, user: str, overrides: QuotaOverrides | None = None) -> QuotaLimits:
        """Return the limits of `user`, taking each from its stored override or else from the settings."""
        if overrides is None:
            overrides = await self.overrides(user)
        defaults = default_limits(self.settings)
        return QuotaLimits(
            max_containers=_pick(overrides.max_containers, defaults.max_containers),
            max_memory_bytes=_pick(overrides.max_memory_bytes, defaults.max_memory_bytes),
            max_cpus=_pick(overrides.max_cpus, defaults.max_cpus),
            max_container_memory_bytes=_pick(overrides.max_container_memory_bytes, defaults.max_container_memory_bytes),
            max_container_cpus=_pick(overrides.max_container_cpus, defaults.max_container_cpus),
        )

    async def usage(self, user: str, exclude_id: str | None = None) -> QuotaUsage:
        """Count the user's active containers and sum their memory and CPU limits.

        Rows a start is still creating count, and so do stopped containers that are not removed.
        Pool members count only once claimed. `exclude_id` leaves out the row being claimed.
        """
        condition = (
            (Container.owner == user)
            & Container.status.is_in(list(ACTIVE_STATUSES))
            & (Container.pool_state.is_null() | (Container.pool_state == "claimed"))
        )
        if exclude_id is not None:
            condition &= Container.id != exclude_id
        rows = await Container.select(Container.memory, Container.nano_cpus).where(condition)
        return QuotaUsage(
            containers=len(rows),
            memory_bytes=sum(row["memory"] or 0 for row in rows),
            nano_cpus=sum(row["nano_cpus"] or 0 for row in rows),
        )

    # --- enforcement -------------------------------------------------------------------------

    async def reserve(
        self, caller: Caller, memory: int | None, nano_cpus: int | None, exclude_id: str | None = None
    ) -> None:
        """Check that one more container of `memory` bytes and `nano_cpus` fits the caller's quota.

        Call it inside the write transaction that writes (or claims) the container's row, so the
        row counts for the next start once the transaction commits. Raises QuotaExceeded naming
        the limit, its value and the current usage; the transaction's rollback then undoes the row.
        """
        if caller.is_admin:
            return
        await _lock_user(caller.user)

        limits = await self.limits(caller.user)
        memory = memory or 0
        nano_cpus = nano_cpus or 0
        _check_container_size(caller.user, limits, memory, nano_cpus)

        usage = await self.usage(caller.user, exclude_id=exclude_id)
        _check_totals(caller.user, limits, usage, memory, nano_cpus)

    # --- admin changes -----------------------------------------------------------------------

    async def set_overrides(self, user: str, overrides: QuotaOverrides) -> None:
        """Store the user's overrides in place of all earlier ones. A None field restores the default."""
        values = {
            UserQuota.max_containers: overrides.max_containers,
            UserQuota.max_memory_bytes: overrides.max_memory_bytes,
            UserQuota.max_cpus: overrides.max_cpus,
            UserQuota.max_container_memory_bytes: overrides.max_container_memory_bytes,
            UserQuota.max_container_cpus: overrides.max_container_cpus,
            UserQuota.updated_at: datetime.now(timezone.utc),
        }
        updated = await UserQuota.update(values).where(UserQuota.user == user).returning(UserQuota.id)
        if not updated:
            try:
                await UserQuota.insert(UserQuota(user=user, **{column._meta.name: value for column, value in values.items()}))
            except Exception as exc:
                # A concurrent request inserted the row first; write over it instead.
                if "unique" not in str(exc).lower():
                    raise
                await UserQuota.update(values).where(UserQuota.user == user)

    async def delete_overrides(self, user: str) -> bool:
        """Remove the user's overrides so the defaults apply; return whether any were stored."""
        deleted = await UserQuota.delete().where(UserQuota.user == user).returning(UserQuota.id)
        return bool(deleted)


async def _lock_user(user: str) -> None:
    """Serialise quota checks of one user until the current transaction ends (PostgreSQL only)."""
    if isinstance(Container._meta.db, PostgresEngine):
        await Container.raw("SELECT pg_advisory_xact_lock({}, hashtext({}))", QUOTA_LOCK_SPACE, user)


def _check_container_size(user: str, limits: QuotaLimits, memory: int, nano_cpus: int) -> None:
    if memory > limits.max_container_memory_bytes:
        raise QuotaExceeded(
            f"memory {format_size(memory)} is above the per-container quota maxContainerMemory of "
            f"{format_size(limits.max_container_memory_bytes)} for user {user!r}; ask for less memory",
            quota="maxContainerMemory",
            limit=limits.max_container_memory_bytes,
            requested=memory,
            field="memory",
        )
    cpus = nano_cpus / NANO_CPUS
    if cpus > limits.max_container_cpus:
        raise QuotaExceeded(
            f"cpus {cpus:g} is above the per-container quota maxContainerCpus of {limits.max_container_cpus:g} "
            f"for user {user!r}; ask for fewer cpus",
            quota="maxContainerCpus",
            limit=limits.max_container_cpus,
            requested=cpus,
            field="cpus",
        )


def _check_totals(user: str, limits: QuotaLimits, usage: QuotaUsage, memory: int, nano_cpus: int) -> None:
    remedy = "remove a container you no longer need, or ask an admin to raise the limit"
    if usage.containers + 1 > limits.max_containers:
        raise QuotaExceeded(
            f"quota maxContainers exceeded: user {user!r} has {usage.containers} active container(s) and the "
            f"limit is {limits.max_containers}; {remedy}",
            quota="maxContainers",
            limit=limits.max_containers,
            usage=usage.containers,
            requested=1,
        )
    if usage.memory_bytes + memory > limits.max_memory_bytes:
        raise QuotaExceeded(
            f"quota maxMemory exceeded: the container asks for {format_size(memory)} of memory and user "
            f"{user!r} already uses {format_size(usage.memory_bytes)} of {format_size(limits.max_memory_bytes)}; "
            f"ask for less memory or {remedy}",
            quota="maxMemory",
            limit=limits.max_memory_bytes,
            usage=usage.memory_bytes,
            requested=memory,
        )
    cpus = nano_cpus / NANO_CPUS
    # Compared in nano-CPUs, so sums of fractions such as 0.1 are exact.
    if usage.nano_cpus + nano_cpus > round(limits.max_cpus * NANO_CPUS):
        raise QuotaExceeded(
            f"quota maxCpus exceeded: the container asks for {cpus:g} cpus and user {user!r} already uses "
            f"{usage.cpus:g} of {limits.max_cpus:g}; ask for fewer cpus or {remedy}",
            quota="maxCpus",
            limit=limits.max_cpus,
            usage=usage.cpus,
            requested=cpus,
        )
