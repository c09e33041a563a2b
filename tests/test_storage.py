"""Storage on SQLite and PostgreSQL: migrations, rows, JSON columns, timestamps and API keys."""

from __future__ import annotations

import os
import stat
from datetime import datetime, timedelta, timezone

import pytest

from corebase import db
from corebase.auth.keys import KeyVerifier, create_key, seed_admin_key
from corebase.auth.tables import ApiKey
from corebase.containers.tables import Container
from corebase.errors import Unauthorized
from corebase.metrics.tables import RuntimeMetric
from corebase.quotas.tables import UserQuota
from corebase.settings import load_settings
from corebase.templates.tables import ContainerTemplate


def now() -> datetime:
    return datetime.now(timezone.utc)


async def test_migrations_apply_once(database):
    assert await db.pending_migrations() == []
    assert await db.migrate() == []
    for table in (Container, ContainerTemplate, RuntimeMetric, UserQuota, ApiKey):
        assert await table.count() == 0


async def test_container_row_round_trip(database):
    created = now()
    row = Container(
        id="ctr_0123456789abcdef",
        name="web",
        image="corebase-test/busybox:1",
        owner="alice",
        status="running",
        command=["sh", "-c", "echo é"],
        labels={"team": "blue"},
        ports=[{"containerPort": 80, "protocol": "tcp", "hostIp": "127.0.0.1", "hostPort": 32768}],
        memory=512 * 1024**2,
        nano_cpus=1_500_000_000,
        created_at=created,
        updated_at=created,
    )
    await row.save()

    loaded = await Container.objects().output(load_json=True).where(Container.id == row.id).first()
    assert loaded.command == ["sh", "-c", "echo é"]
    assert loaded.labels == {"team": "blue"}
    assert loaded.ports[0]["hostPort"] == 32768
    assert loaded.memory == 512 * 1024**2
    assert loaded.nano_cpus == 1_500_000_000
    assert loaded.created_at.tzinfo is not None
    assert abs(loaded.created_at - created) < timedelta(milliseconds=1)
    assert loaded.exit_code is None
    assert loaded.oom_killed is False

    loaded.status = "exited"
    loaded.exit_code = 137
    await loaded.save()
    again = await Container.objects().where(Container.id == row.id).first()
    assert (again.status, again.exit_code) == ("exited", 137)


async def test_other_tables_accept_rows(database):
    await ContainerTemplate(
        name="python", version=1, category="runtime", image="python:3.12-slim", spec={"ports": [8000]}, created_at=now()
    ).save()
    await RuntimeMetric(container_id="ctr_0123456789abcdef", recorded_at=now(), cpu_percent=12.5, memory_bytes=10).save()
    await UserQuota(user="alice", max_containers=10, max_memory_bytes=2 * 1024**3, max_cpus=2.0, updated_at=now()).save()
    assert await ContainerTemplate.count() == 1
    assert (await RuntimeMetric.select(RuntimeMetric.cpu_percent).first())["cpu_percent"] == pytest.approx(12.5)
    assert (await UserQuota.objects().first()).max_containers == 10


async def test_api_keys_are_hashed_and_checked(database):
    row, secret = await create_key("ci", "alice", "developer")
    stored = await ApiKey.objects().where(ApiKey.id == row.id).first()
    assert secret not in (stored.key_hash, stored.prefix)
    assert len(stored.key_hash) == 64

    verifier = KeyVerifier()
    caller = await verifier.verify(secret)
    assert (caller.user, caller.role) == ("alice", "developer")
    assert (await ApiKey.objects().where(ApiKey.id == row.id).first()).last_used_at is not None

    with pytest.raises(Unauthorized):
        await verifier.verify(secret + "x")

    await ApiKey.update({ApiKey.revoked_at: now()}).where(ApiKey.id == row.id)
    verifier.forget()
    with pytest.raises(Unauthorized, match="revoked"):
        await verifier.verify(secret)


async def test_expired_key_is_rejected_even_when_cached(database):
    row, secret = await create_key("short", "bob", "viewer")
    verifier = KeyVerifier()
    await verifier.verify(secret)
    await ApiKey.update({ApiKey.expires_at: now() - timedelta(seconds=1)}).where(ApiKey.id == row.id)
    verifier.forget()
    with pytest.raises(Unauthorized, match="expired"):
        await verifier.verify(secret)


async def test_admin_key_is_generated_once(database, database_settings):
    settings = database_settings
    key_file = await seed_admin_key(settings)
    assert key_file == settings.data_path / "admin-api-key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    secret = key_file.read_text().strip()
    assert (await KeyVerifier().verify(secret)).role == "admin"
    assert await seed_admin_key(settings) is None
    assert await ApiKey.count().where(ApiKey.role == "admin") == 1


async def test_configured_admin_key_is_seeded(database, tmp_path):
    settings = load_settings(environ={"COREBASE_ADMIN_API_KEY": "cbk_configured"}, overrides={"server": {"data_dir": str(tmp_path)}})
    assert await seed_admin_key(settings) is None
    assert await seed_admin_key(settings) is None
    assert (await KeyVerifier().verify("cbk_configured")).role == "admin"
    assert not (tmp_path / "admin-api-key").exists()
