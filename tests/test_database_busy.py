"""A database that stays locked or cannot be reached gives a 503 problem, never a 500."""

from __future__ import annotations

import sqlite3

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from corebase import db
from corebase.api.problems import database_unavailable
from corebase.app import create_app
from corebase.settings import load_settings

ADMIN_KEY = "cbk_busy_admin_" + "b" * 16


@pytest.fixture
async def client(tmp_path, monkeypatch):
    # A short wait, so the locked write below gives up quickly instead of after SQLITE_BUSY_TIMEOUT.
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT", 0.2)
    settings = load_settings(environ={}, overrides={"server": {"data_dir": str(tmp_path)}})
    settings = msgspec.structs.replace(
        settings,
        auth=msgspec.structs.replace(settings.auth, admin_api_key=ADMIN_KEY),
        monitoring=msgspec.structs.replace(settings.monitoring, enabled=False),
    )
    async with AsyncTestClient(create_app(settings)) as test_client:
        yield test_client, tmp_path / db.SQLITE_FILE


async def test_locked_sqlite_write_is_503(client):
    test_client, path = client
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert (await test_client.get("/api/users", headers=headers)).status_code == 200

    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        response = await test_client.post("/api/users", json={"name": "lockedout"}, headers=headers)
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    assert response.status_code == 503, response.text
    body = response.json()
    assert body["dependency"] == "database"
    assert "busy" in body["detail"]
    assert response.headers["Retry-After"] == "2"
    # Nothing was half-made: the same request succeeds once the lock is gone.
    retried = await test_client.post("/api/users", json={"name": "lockedout"}, headers=headers)
    assert retried.status_code == 201, retried.text


def test_other_errors_stay_unexpected():
    assert database_unavailable(sqlite3.OperationalError("no such table: containers")) is None
    assert database_unavailable(ValueError("database is locked")) is None
    assert database_unavailable(ConnectionResetError("reset by peer")).status == 503
