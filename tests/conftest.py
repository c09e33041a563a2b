"""Shared fixtures for tests that need PostgreSQL, Redis, the image registry or the Docker Engine.

Each fixture skips its test when the service is missing, or fails it under CI=true
(support.services.require_service). scripts/test.sh starts private instances and exports their
addresses. A test marked `engine`, `postgres`, `redis` or `registry` gets the same check without
naming the fixture.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiodocker
import aiohttp
import httpx
import pytest

from api_support import cleanup_run_containers, create_postgres_database, drop_postgres_database
from corebase import db
from corebase.settings import load_settings
from corebase_docker import DockerRuntime
from support.images import ensure_test_image, ensure_toolbox_image
from support.services import require_engine, service_address

_FIXTURE_FOR_MARKER = {
    "engine": "docker_available",
    "postgres": "postgres_url",
    "redis": "redis_url",
    "registry": "registry",
}


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of the test PostgreSQL database, from COREBASE_TEST_POSTGRES_URL."""
    return service_address("PostgreSQL", "COREBASE_TEST_POSTGRES_URL")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the test Redis database, from COREBASE_TEST_REDIS_URL."""
    return service_address("Redis", "COREBASE_TEST_REDIS_URL")


@pytest.fixture(scope="session")
def registry() -> str:
    """host:port of the test image registry, from COREBASE_TEST_REGISTRY."""
    return service_address("The image registry", "COREBASE_TEST_REGISTRY")


@pytest.fixture(scope="session")
async def docker_available() -> None:
    """Check once per session that the Docker Engine responds."""
    await require_engine()


@pytest.fixture
async def docker(docker_available: None) -> AsyncIterator[aiodocker.Docker]:
    """Docker Engine client, closed after the test."""
    client = aiodocker.Docker()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def runtime() -> AsyncIterator[DockerRuntime]:
    """The built-in Docker runtime on the local engine, closed after the test."""
    docker_runtime = DockerRuntime()
    try:
        yield docker_runtime
    finally:
        await docker_runtime.close()


@pytest.fixture(scope="session")
async def test_image(docker_available: None) -> str:
    """Tag of the local busybox test image, built once if the engine does not have it."""
    return await ensure_test_image()


@pytest.fixture(scope="session")
async def toolbox_image(docker_available: None) -> str:
    """Tag of the toolbox image: busybox plus stand-ins for the built-in templates' health-check programs."""
    return await ensure_toolbox_image()


@pytest.fixture
async def api(server) -> AsyncIterator[httpx.AsyncClient]:
    """An admin client of the module's `server` fixture."""
    async with server.async_client() as client:
        yield client


@pytest.fixture(scope="session", autouse=True)
async def _remove_run_containers() -> AsyncIterator[None]:
    """Remove the containers this session started through the API, once every test has run."""
    yield
    try:
        await cleanup_run_containers()
    except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
        # Without an engine no test could start a container, so there is nothing to remove.
        logging.getLogger(__name__).info("engine unreachable at clean-up: %s", exc)


@pytest.fixture(autouse=True)
def _require_marked_services(request: pytest.FixtureRequest) -> None:
    for marker, fixture in _FIXTURE_FOR_MARKER.items():
        if request.node.get_closest_marker(marker) is not None:
            request.getfixturevalue(fixture)


@pytest.fixture(params=["sqlite", "postgres"])
async def database_settings(request, tmp_path):
    """Settings for a fresh database: an SQLite file, or a new PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        yield load_settings(environ={}, overrides={"server": {"data_dir": str(tmp_path)}})
        return
    admin_url = request.getfixturevalue("postgres_url")
    database_url = await create_postgres_database(admin_url)
    try:
        yield load_settings(
            environ={"COREBASE_DATABASE_URL": database_url}, overrides={"server": {"data_dir": str(tmp_path)}}
        )
    finally:
        await drop_postgres_database(admin_url, database_url)


@pytest.fixture
async def database(database_settings):
    """A connected, migrated database on each backend."""
    engine = await db.connect(database_settings)
    try:
        await db.migrate()
        yield engine
    finally:
        await db.disconnect(engine)
