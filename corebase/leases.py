"""Leases in the database, so one of several API processes runs each background loop.

A lease has a name, a holder and an expiry. A process takes a lease when it is free or expired and
keeps it by renewing it before it expires. When the holder dies its lease runs out and another
process takes it over. Taking and renewing are single UPDATE or INSERT statements, so two
processes can never hold one lease at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
from datetime import datetime, timedelta, timezone

from piccolo.columns import Timestamptz, Varchar
from piccolo.table import Table

logger = logging.getLogger(__name__)


class Lease(Table, tablename="leases"):
    name = Varchar(length=64, primary_key=True)
    holder = Varchar(length=128)
    expires_at = Timestamptz()


async def acquire(name: str, holder: str, duration: float) -> bool:
    """Take or renew the lease `name` for `duration` seconds; return whether `holder` now has it."""
    now = datetime.now(timezone.utc)
    expires = now + timedelta(seconds=duration)
    renewed = await Lease.update({Lease.holder: holder, Lease.expires_at: expires}).where(
        (Lease.name == name) & ((Lease.holder == holder) | (Lease.expires_at < now))
    ).returning(Lease.holder)
    if renewed:
        return True
    if await Lease.exists().where(Lease.name == name):
        return False
    try:
        await Lease.insert(Lease(name=name, holder=holder, expires_at=expires))
    except Exception as exc:  # a concurrent insert by another process won the race
        logger.debug("lease %s was taken by another process: %s", name, exc)
        return False
    return True


async def current_holder(name: str) -> str | None:
    """Return who holds the lease `name` now, or None when it is free or expired."""
    row = (
        await Lease.select(Lease.holder)
        .where((Lease.name == name) & (Lease.expires_at >= datetime.now(timezone.utc)))
        .first()
    )
    return row["holder"] if row else None


async def release(name: str, holder: str) -> None:
    """Give up the lease if `holder` has it, so another process can take it at once."""
    await Lease.delete().where((Lease.name == name) & (Lease.holder == holder))


def process_holder() -> str:
    """Return a holder name for this process: host, PID and a random part, unique across restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Leadership:
    """One process's hold on the lease `name`, for a background loop that only one process may run.

    `take` takes or renews the lease and logs when this process starts or stops leading `role`;
    `release` gives it up on shut-down, so another process takes over at once.
    """

    def __init__(self, name: str, role: str, duration: float) -> None:
        self.name = name
        self.role = role
        self.duration = duration
        self.holder = process_holder()
        self.leader = False

    async def take(self) -> bool:
        held = await acquire(self.name, self.holder, self.duration)
        if held != self.leader:
            logger.info("%s %s (process %s)", "leading" if held else "no longer leading", self.role, self.holder)
        self.leader = held
        return held

    async def release(self) -> None:
        if self.leader:
            self.leader = False
            with contextlib.suppress(Exception):
                await release(self.name, self.holder)
