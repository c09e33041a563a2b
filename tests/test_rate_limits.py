"""Per-key rate limits: 429 with Retry-After, recovery, exclusions, the audit record, and Redis sharing."""

from __future__ import annotations

import asyncio
import secrets
import time

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from corebase.app import create_app
from corebase.auth.keys import create_key
from corebase.ratelimit import MemoryLimiter, RedisLimiter
from corebase.settings import load_settings
from support.server import run_server

ADMIN_KEY = "cbk_ratelimit_admin_" + "b" * 16
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def limited_settings(data_dir, per_minute: int, burst: int, **environ: str):
    environ = {"COREBASE_ADMIN_API_KEY": ADMIN_KEY, "COREBASE_MONITORING_ENABLED": "false", **environ}
    settings = load_settings(environ=environ, overrides={"server": {"data_dir": str(data_dir)}})
    return msgspec.structs.replace(
        settings, rate_limit=msgspec.structs.replace(settings.rate_limit, requests_per_minute=per_minute, burst=burst)
    )


async def in_app(client, function, *args):
    """Await `function(*args)` on the app's event loop, which owns the database connections."""
    return await asyncio.to_thread(client.blocking_portal.call, function, *args)


# --- the limiters themselves -------------------------------------------------------------------


async def test_memory_limiter_burst_then_wait():
    limiter = MemoryLimiter(per_minute=60, burst=3)

    assert [await limiter.take("key_a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = await limiter.take("key_a")
    assert 0 < wait <= 1.0
    # Another key has its own bucket.
    assert await limiter.take("key_b") == 0.0


async def test_memory_limiter_refills():
    limiter = MemoryLimiter(per_minute=600, burst=1)
    assert await limiter.take("key_a") == 0.0
    assert await limiter.take("key_a") > 0

    await asyncio.sleep(0.15)
    assert await limiter.take("key_a") == 0.0


@pytest.mark.redis
async def test_redis_limiter_shared_between_instances(redis_url):
    prefix = "cbtest" + secrets.token_hex(4)
    first = RedisLimiter(redis_url, prefix, per_minute=60, burst=2)
    second = RedisLimiter(redis_url, prefix, per_minute=60, burst=2)
    try:
        assert await first.take("key_a") == 0.0
        assert await second.take("key_a") == 0.0
        wait = await first.take("key_a")
        assert 0 < wait <= 1.0
        assert await second.take("key_a") > 0
        assert await second.take("key_b") == 0.0
    finally:
        await first.close()
        await second.close()


async def test_redis_outage_allows_requests():
    # Nothing listens on this loopback port, so every check fails and the request is allowed.
    limiter = RedisLimiter("redis://127.0.0.1:1/0", "cbtest", per_minute=60, burst=1)
    try:
        assert await limiter.take("key_a") == 0.0
        assert await limiter.take("key_a") == 0.0
        assert limiter.failures == 2
    finally:
        await limiter.close()


# --- through the API ---------------------------------------------------------------------------


async def test_limit_rejects_then_recovers(tmp_path):
    async with AsyncTestClient(create_app(limited_settings(tmp_path, per_minute=60, burst=3))) as client:
        for _ in range(3):
            assert (await client.get("/api/alerts/rules", headers=ADMIN)).status_code == 200

        rejected = await client.get("/api/alerts/rules", headers={**ADMIN, "X-Request-ID": "over-limit"})
        assert rejected.status_code == 429
        assert rejected.headers["content-type"] == "application/problem+json"
        assert rejected.headers["Retry-After"] == "1"
        body = rejected.json()
        assert body["status"] == 429
        assert body["retryAfter"] == 1
        assert "60 per minute" in body["detail"]

        await asyncio.sleep(int(rejected.headers["Retry-After"]))
        assert (await client.get("/api/alerts/rules", headers=ADMIN)).status_code == 200

        # A second admin key reads the audit log, because the first one has no tokens to spare.
        _, auditor_secret = await in_app(client, create_key, "auditor-key", "auditor", "admin")
        auditor = {"Authorization": f"Bearer {auditor_secret}"}
        audit = await client.get("/api/audit", params={"outcome": "denied"}, headers=auditor)
        assert audit.status_code == 200, audit.text
        rows = [row for row in audit.json()["items"] if row["requestId"] == "over-limit"]
        assert len(rows) == 1
        assert rows[0]["status"] == 429
        assert rows[0]["actor"] == "admin"


async def test_limit_is_per_key(tmp_path):
    async with AsyncTestClient(create_app(limited_settings(tmp_path, per_minute=60, burst=2))) as client:
        _, secret = await in_app(client, create_key, "dev-key", "dev", "developer")
        developer = {"Authorization": f"Bearer {secret}"}
        for _ in range(2):
            assert (await client.get("/api/alerts/rules", headers=ADMIN)).status_code == 200
        assert (await client.get("/api/alerts/rules", headers=ADMIN)).status_code == 429

        assert (await client.get("/api/alerts/rules", headers=developer)).status_code == 200


async def test_health_and_docs_not_limited(tmp_path):
    async with AsyncTestClient(create_app(limited_settings(tmp_path, per_minute=60, burst=1))) as client:
        for _ in range(5):
            assert (await client.get("/health")).status_code in (200, 503)
            assert (await client.get("/schema/openapi.json")).status_code == 200


async def test_zero_turns_limits_off(tmp_path):
    async with AsyncTestClient(create_app(limited_settings(tmp_path, per_minute=0, burst=1))) as client:
        statuses = {(await client.get("/api/alerts/rules", headers=ADMIN)).status_code for _ in range(20)}
        assert statuses == {200}


@pytest.mark.redis
def test_redis_limit_shared_by_two_servers(tmp_path, redis_url):
    env = {
        "COREBASE_REDIS_URL": redis_url,
        "COREBASE_REDIS_KEY_PREFIX": "cbtest" + secrets.token_hex(4),
        "COREBASE_RATE_LIMIT_REQUESTS_PER_MINUTE": "6",
        "COREBASE_RATE_LIMIT_BURST": "4",
        "COREBASE_MONITORING_ENABLED": "false",
        # Both servers share one SQLite file, so they know the same admin key.
        "COREBASE_DATABASE_URL": f"sqlite://{tmp_path / 'shared.sqlite'}",
    }
    admin_key = "cbk_shared_" + secrets.token_urlsafe(16)
    with run_server(tmp_path / "one", env=env, admin_key=admin_key) as first:
        with run_server(tmp_path / "two", env=env, admin_key=admin_key) as second:
            with first.client() as client_one, second.client() as client_two:
                statuses = []
                for number in range(6):
                    client = client_one if number % 2 == 0 else client_two
                    started = time.monotonic()
                    statuses.append(client.get("/api/alerts/rules").status_code)
                    assert time.monotonic() - started < 10
                rejected = client_two.get("/api/alerts/rules")

    # The four-request burst is spread over both servers, and later requests are rejected on either server.
    assert statuses[:4] == [200, 200, 200, 200]
    assert 429 in statuses[4:]
    assert rejected.status_code == 429
    assert int(rejected.headers["Retry-After"]) >= 1
