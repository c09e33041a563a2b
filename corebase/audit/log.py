"""Appending to the audit log, reading it back, and verifying its hash chain.

Appends serialise in two places: an asyncio lock within one process, and the database between
processes. On PostgreSQL the insert transaction takes an advisory lock before it reads the last
hash. On SQLite it is an IMMEDIATE transaction, which takes the database's write lock at BEGIN.
Either way no two appends can read the same last hash, so several processes keep one chain.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any, Literal

import msgspec
from piccolo.engine.postgres import PostgresEngine
from piccolo.engine.sqlite import SQLiteEngine, TransactionType

from corebase.audit.chain import GENESIS_HASH, ChainBreak, ChainVerifier, canonical_details, record_hash
from corebase.audit.tables import AuditRecord

logger = logging.getLogger(__name__)

Outcome = Literal["success", "denied", "failed"]
OUTCOMES = ("success", "denied", "failed")

# Key of the PostgreSQL advisory lock that serialises audit appends between processes.
APPEND_LOCK_KEY = 0x61756474  # "audt" in ASCII

# Records read per query while verifying, so a long log never sits in memory at once.
VERIFY_BATCH = 1000

# API keys and bearer credentials that may appear in a message, replaced before anything is stored.
SECRET_PATTERNS = (
    re.compile(r"cbk_[A-Za-z0-9_\-]{4,}"),
    # A placeholder such as "Bearer <key>" in a message is not a credential and stays readable.
    re.compile(r"(?i)(bearer\s+)(?!<)['\"]?[^\s'\"]+"),
)


class AuditEntry(msgspec.Struct, kw_only=True):
    """One record to append; the log adds the time and the hashes."""

    action: str
    outcome: Outcome
    actor: str | None = None
    key_id: str | None = None
    role: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    status: int | None = None
    reason: str = ""
    source: str = ""
    request_id: str = ""
    details: dict[str, Any] = {}


def redact(text: str) -> str:
    """Replace API keys and bearer credentials in `text` with a marker."""
    for pattern in SECRET_PATTERNS:
        text = pattern.sub(lambda match: (match.group(1) if match.groups() else "") + "[redacted]", text)
    return text


class AuditLog:
    """The append-only audit log of one process."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    async def append(self, entry: AuditEntry) -> dict[str, Any]:
        """Append `entry` after the last record; return the stored values, hashes included."""
        values = _limit_lengths(
            {
                "created_at": datetime.now(timezone.utc),
                "actor": entry.actor,
                "key_id": entry.key_id,
                "role": entry.role,
                "action": entry.action,
                "target_type": entry.target_type,
                "target_id": entry.target_id,
                "outcome": entry.outcome,
                "status": entry.status,
                "reason": redact(entry.reason),
                "source": entry.source,
                "request_id": entry.request_id,
                # A round trip through JSON keeps exactly what the database will return.
                "details": json.loads(json.dumps(entry.details, default=str)),
            }
        )

        async with self._lock, _append_transaction():
            last = await AuditRecord.select(AuditRecord.hash).order_by(AuditRecord.id, ascending=False).first()
            prev_hash = last["hash"] if last else GENESIS_HASH
            digest = record_hash(values, prev_hash)
            row = AuditRecord(
                **{**values, "details": json.dumps(values["details"])}, prev_hash=prev_hash, hash=digest
            )
            await row.save()
        return {**values, "id": row.id, "prev_hash": prev_hash, "hash": digest}


class AuditFilter(msgspec.Struct, kw_only=True):
    """Conditions of GET /api/audit; every one given must hold."""

    actor: str | None = None
    action: str | None = None
    outcome: str | None = None
    target: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100
    offset: int = 0


async def find_records(filters: AuditFilter) -> tuple[list[dict[str, Any]], int]:
    """Return one page of records matching `filters`, newest first, and the number matching."""
    condition = _condition(filters)
    query = AuditRecord.select().order_by(AuditRecord.id, ascending=False).limit(filters.limit).offset(filters.offset)
    count = AuditRecord.count()
    if condition is not None:
        query = query.where(condition)
        count = count.where(condition)
    rows = await query
    for row in rows:
        row["details"] = canonical_details(row["details"])
    return rows, await count


def _condition(filters: AuditFilter):
    conditions = []
    if filters.actor:
        conditions.append(AuditRecord.actor == filters.actor)
    if filters.action:
        # "runtime.*" selects every action under runtime; otherwise the action must match exactly.
        # An underscore in the prefix also matches any one character in LIKE, which action names
        # (dotted words) make harmless.
        if filters.action.endswith(".*"):
            conditions.append(AuditRecord.action.like(filters.action[:-1] + "%"))
        else:
            conditions.append(AuditRecord.action == filters.action)
    if filters.outcome:
        conditions.append(AuditRecord.outcome == filters.outcome)
    if filters.target:
        conditions.append(AuditRecord.target_id == filters.target)
    if filters.since:
        conditions.append(AuditRecord.created_at >= filters.since)
    if filters.until:
        conditions.append(AuditRecord.created_at < filters.until)
    if not conditions:
        return None
    combined = conditions[0]
    for condition in conditions[1:]:
        combined = combined & condition
    return combined


def _append_transaction():
    engine = AuditRecord._meta.db
    if isinstance(engine, SQLiteEngine):
        return engine.transaction(transaction_type=TransactionType.immediate)
    return _locked_postgres_transaction(engine)


class _locked_postgres_transaction:
    """A PostgreSQL transaction holding the audit advisory lock until it commits or rolls back."""

    def __init__(self, engine: PostgresEngine) -> None:
        self.transaction = engine.transaction()

    async def __aenter__(self) -> None:
        await self.transaction.__aenter__()
        await AuditRecord.raw("SELECT pg_advisory_xact_lock({})", APPEND_LOCK_KEY)

    async def __aexit__(self, *exc_info) -> bool | None:
        return await self.transaction.__aexit__(*exc_info)


# Column lengths of audit_log; longer values are cut so that a record is never lost to a long value.
_MAX_LENGTHS = {"actor": 200, "key_id": 32, "role": 20, "action": 64, "target_type": 32, "target_id": 200,
                "source": 64, "request_id": 64}


def _limit_lengths(values: dict[str, Any]) -> dict[str, Any]:
    for name, length in _MAX_LENGTHS.items():
        if isinstance(values.get(name), str):
            values[name] = values[name][:length]
    return values


async def iterate_records() -> AsyncIterator[dict[str, Any]]:
    """Yield every record in id order, reading a batch at a time."""
    after = 0
    while True:
        rows = await (
            AuditRecord.select()
            .where(AuditRecord.id > after)
            .order_by(AuditRecord.id)
            .limit(VERIFY_BATCH)
        )
        for row in rows:
            yield row
        if len(rows) < VERIFY_BATCH:
            return
        after = rows[-1]["id"]


async def verify_chain() -> tuple[int, ChainBreak | None]:
    """Verify the whole log; return the number of intact records before the first break, and the break if any."""
    verifier = ChainVerifier()
    async for row in iterate_records():
        found = verifier.check(row)
        if found is not None:
            return verifier.count, found
    return verifier.count, None
