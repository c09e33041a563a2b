"""The hash chain of the audit log: canonical encoding, record hashes and verification.

A record's hash is SHA-256 over `prev_hash`, a newline and the canonical JSON of its other
fields (sorted keys, no spaces, times as RFC 3339 UTC with microseconds). Verification walks the
records in id order and reports the first one where the chain breaks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

import msgspec

# prev_hash of the first record.
GENESIS_HASH = "0" * 64

# The fields a record's hash covers besides prev_hash. `id` is left out because the database
# assigns it on insert; the chain itself fixes the order.
HASHED_FIELDS = (
    "created_at",
    "actor",
    "key_id",
    "role",
    "action",
    "target_type",
    "target_id",
    "outcome",
    "status",
    "reason",
    "source",
    "request_id",
    "details",
)


class ChainBreak(msgspec.Struct, frozen=True):
    """The first record at which the chain fails to verify, and why."""

    record_id: int
    reason: str


def canonical_time(value: datetime | str) -> str:
    """Format a time as RFC 3339 in UTC with microseconds, as both databases return it."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_details(value: Mapping[str, Any] | str | None) -> Any:
    """Return `details` as a JSON value, whether the driver returned text or a decoded object."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        return json.loads(value)
    return value


def record_hash(record: Mapping[str, Any], prev_hash: str) -> str:
    """Compute the SHA-256 hex digest that chains `record` to the record whose hash is `prev_hash`."""
    fields = {name: record.get(name) for name in HASHED_FIELDS}
    fields["created_at"] = canonical_time(record["created_at"])
    fields["details"] = canonical_details(record.get("details"))
    encoded = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{prev_hash}\n{encoded}".encode()).hexdigest()


class ChainVerifier:
    """Check records one at a time, in id order, so a long log never has to sit in memory.

    It distinguishes three cases. A record whose stored hash differs from its recomputed hash was
    edited (or inserted with a made-up hash). A record whose prev_hash names an earlier record
    than the one before it follows one or more inserted records, and the first inserted record is
    reported. A record whose prev_hash names no earlier record follows a deleted record, or one
    whose hash was rewritten.
    """

    def __init__(self) -> None:
        self.count = 0
        self._expected_prev = GENESIS_HASH
        # Hash of each record checked so far, mapped to the id of the record after it.
        self._next_id_after: dict[str, int | None] = {GENESIS_HASH: None}

    def check(self, record: Mapping[str, Any]) -> ChainBreak | None:
        """Check the next record; return the break it shows, or None when it links correctly."""
        record_id = int(record["id"])
        prev_hash = record["prev_hash"]

        if prev_hash != self._expected_prev:
            inserted = self._next_id_after.get(prev_hash)
            if inserted is not None:
                return ChainBreak(
                    inserted, f"record {inserted} was inserted: record {record_id} links to the record before it"
                )
            return ChainBreak(
                record_id,
                "prev_hash matches no earlier record, so the record before it was deleted or its hash was changed",
            )

        if record_hash(record, prev_hash) != record["hash"]:
            return ChainBreak(
                record_id, "the stored hash does not match the record's fields, so the record was edited or inserted"
            )

        self.count += 1
        self._next_id_after[prev_hash] = record_id
        self._next_id_after[record["hash"]] = None
        self._expected_prev = record["hash"]
        return None


def find_break(records: Iterable[Mapping[str, Any]]) -> ChainBreak | None:
    """Walk `records` in id order; return the first break, or None when the chain is intact."""
    verifier = ChainVerifier()
    for record in records:
        found = verifier.check(record)
        if found is not None:
            return found
    return None
