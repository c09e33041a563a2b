"""The audit log's hash chain on SQLite and PostgreSQL: appends, verification and tampering."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from corebase.audit.chain import GENESIS_HASH, find_break, record_hash
from corebase.audit.log import AuditEntry, AuditLog, redact, verify_chain
from corebase.audit.tables import AuditRecord


def entry(number: int, **fields) -> AuditEntry:
    values = {
        "action": "runtime.start",
        "outcome": "success",
        "actor": "alice",
        "key_id": "key_0001",
        "role": "developer",
        "target_type": "container",
        "target_id": f"c{number}",
        "status": 201,
        "source": "127.0.0.1",
        "request_id": f"req-{number}",
        "details": {"method": "POST", "path": "/api/runtime/start"},
        **fields,
    }
    return AuditEntry(**values)


async def append_many(count: int) -> list[dict]:
    log = AuditLog()
    return [await log.append(entry(number)) for number in range(count)]


def run_verify(settings) -> subprocess.CompletedProcess:
    """Run `corebase audit verify` against the test database, as an operator would."""
    env = {"PATH": "/usr/bin:/bin", "COREBASE_DATA_DIR": str(settings.data_path)}
    if settings.database.url:
        env["COREBASE_DATABASE_URL"] = settings.database.url
    return subprocess.run(
        [sys.executable, "-m", "corebase", "audit", "verify"], env=env, capture_output=True, text=True, timeout=60
    )


# --- the chain itself, without a database --------------------------------------------------------


def test_record_hash_covers_every_field():
    record = {"created_at": "2026-12-04T10:00:00+00:00", "action": "runtime.stop", "outcome": "success",
              "details": {"method": "POST"}}
    original = record_hash(record, GENESIS_HASH)

    for field, changed in [("action", "runtime.remove"), ("outcome", "denied"), ("actor", "mallory"),
                           ("created_at", "2026-12-04T10:00:01+00:00"), ("details", {"method": "GET"})]:
        assert record_hash({**record, field: changed}, GENESIS_HASH) != original, field
    assert record_hash(record, "1" * 64) != original


def test_record_hash_ignores_details_encoding():
    record = {"created_at": "2026-12-04T10:00:00+00:00", "action": "a", "outcome": "success"}
    as_text = record_hash({**record, "details": '{"b": 1, "a": 2}'}, GENESIS_HASH)
    as_object = record_hash({**record, "details": {"a": 2, "b": 1}}, GENESIS_HASH)
    assert as_text == as_object


def test_redact_removes_keys():
    text = redact("key cbk_abcdefghijklmnop was sent as Bearer s3cr3t-value")
    assert "cbk_abcdefghijklmnop" not in text
    assert "s3cr3t-value" not in text
    assert "[redacted]" in text


def test_redact_keeps_a_key_placeholder():
    text = redact("pass a key as 'Authorization: Bearer <key>', not Bearer 'quoted-secret'")
    assert "Bearer <key>'" in text
    assert "quoted-secret" not in text



# --- on each database --------------------------------------------------------------------------


async def test_appends_form_one_chain(database):
    rows = await append_many(5)

    assert rows[0]["prev_hash"] == GENESIS_HASH
    for before, after in zip(rows, rows[1:]):
        assert after["prev_hash"] == before["hash"]
    count, broken = await verify_chain()
    assert broken is None
    assert count == 5


async def test_stored_records_verify_after_reading(database):
    await append_many(3)
    stored = await AuditRecord.select().order_by(AuditRecord.id)

    assert find_break(stored) is None
    assert stored[0]["details"] in ({"method": "POST", "path": "/api/runtime/start"},
                                    json.dumps({"method": "POST", "path": "/api/runtime/start"}))


async def test_concurrent_appends_keep_one_chain(database):
    # Several AuditLog objects stand for several processes: only the database serialises them.
    logs = [AuditLog() for _ in range(4)]
    await asyncio.gather(*(logs[number % 4].append(entry(number)) for number in range(40)))

    count, broken = await verify_chain()
    assert broken is None
    assert count == 40
    hashes = await AuditRecord.select(AuditRecord.prev_hash)
    assert len({row["prev_hash"] for row in hashes}) == 40


async def test_verify_cli_accepts_intact_log(database, database_settings):
    await append_many(3)

    result = await asyncio.to_thread(run_verify, database_settings)
    assert result.returncode == 0, result.stderr
    assert "3 records" in result.stdout


async def test_verify_cli_catches_edited_record(database, database_settings):
    rows = await append_many(4)
    edited = rows[1]["id"]
    await AuditRecord.update({AuditRecord.outcome: "denied"}).where(AuditRecord.id == edited)

    result = await asyncio.to_thread(run_verify, database_settings)
    assert result.returncode == 1
    assert f"record {edited}" in result.stderr
    assert "edited" in result.stderr


async def test_verify_cli_catches_deleted_record(database, database_settings):
    rows = await append_many(4)
    await AuditRecord.delete().where(AuditRecord.id == rows[1]["id"])

    result = await asyncio.to_thread(run_verify, database_settings)
    assert result.returncode == 1
    # The break shows at the record after the deleted one.
    assert f"record {rows[2]['id']}" in result.stderr
    assert "deleted" in result.stderr


async def test_verify_cli_catches_inserted_record(database, database_settings):
    rows = await append_many(4)
    # A forged record linked to the second one, with a correct hash of its own, placed in the chain
    # by taking the third record's id and moving the third and fourth records further on.
    forged = {**rows[1], "action": "runtime.remove", "target_id": "forged", "prev_hash": rows[1]["hash"]}
    forged["hash"] = record_hash(forged, rows[1]["hash"])
    moved = await AuditRecord.select().where(AuditRecord.id > rows[1]["id"]).order_by(AuditRecord.id)
    await AuditRecord.delete().where(AuditRecord.id > rows[1]["id"])
    forged_id = rows[1]["id"] + 1
    await AuditRecord.insert(
        AuditRecord(**{**forged, "id": forged_id, "details": json.dumps(forged["details"])})
    )
    for offset, row in enumerate(moved, start=2):
        await AuditRecord.insert(AuditRecord(**{**row, "id": rows[1]["id"] + offset}))

    result = await asyncio.to_thread(run_verify, database_settings)
    assert result.returncode == 1
    assert f"record {forged_id}" in result.stderr
    assert "inserted" in result.stderr


@pytest.mark.parametrize("outcome", ["success", "denied", "failed"])
async def test_outcomes_are_stored(database, outcome):
    stored = await AuditLog().append(entry(1, outcome=outcome, status=403 if outcome == "denied" else 200))
    row = await AuditRecord.select().where(AuditRecord.id == stored["id"]).first()
    assert row["outcome"] == outcome


def test_verify_cli_rejects_database_without_log(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "corebase", "audit", "verify", "--data-dir", str(tmp_path)],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no such table: audit_log" in result.stderr
    assert "corebase migrate" in result.stderr
    assert "Traceback" not in result.stderr
