"""The test services respond: PostgreSQL, Redis, the image registry, and a push and pull through the engine.

These tests prove the test infrastructure itself (scripts/services.sh and the fixtures in conftest.py),
so a failure here points at the set-up, not at CoreBase.
"""

from __future__ import annotations

import aiodocker
import asyncpg
import httpx
import pytest
import redis.asyncio

from support.registry import REPOSITORY, push_test_image


@pytest.mark.postgres
async def test_postgres_select_one(postgres_url: str) -> None:
    connection = await asyncpg.connect(postgres_url)
    try:
        assert await connection.fetchval("SELECT 1") == 1
    finally:
        await connection.close()


@pytest.mark.redis
async def test_redis_ping(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()


@pytest.mark.registry
async def test_registry_api_version(registry: str) -> None:
    async with httpx.AsyncClient(base_url=f"http://{registry}") as client:
        response = await client.get("/v2/")

    assert response.status_code == 200
    assert response.headers.get("Docker-Distribution-API-Version") == "registry/2.0"


@pytest.mark.engine
@pytest.mark.registry
async def test_registry_push_pull_round_trip(docker: aiodocker.Docker, registry: str, test_image: str) -> None:
    local = await docker.images.inspect(test_image)

    reference = await push_test_image(registry, test_image, docker=docker)
    remote_tag = reference.rpartition(":")[2]
    try:
        assert reference == f"{registry}/{REPOSITORY}:{remote_tag}"
        assert reference not in (await docker.images.inspect(test_image))["RepoTags"]

        async with httpx.AsyncClient(base_url=f"http://{registry}") as client:
            tags = (await client.get(f"/v2/{REPOSITORY}/tags/list")).json()["tags"]
        assert remote_tag in tags

        await docker.images.pull(reference)
        pulled = await docker.images.inspect(reference)
        assert pulled["Id"] == local["Id"]
    finally:
        try:
            await docker.images.delete(reference, noprune=True)
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise
