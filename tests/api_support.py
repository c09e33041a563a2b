"""Fixtures for API tests: real `corebase serve` processes on SQLite or PostgreSQL, and clean-up.

Every container a test starts through the API carries the label RUN_LABEL with this session's
run id, and `cleanup_run_containers` removes exactly those from the engine afterwards.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiodocker
import asyncpg
import httpx
import pytest

from corebase.testing.server import remove_containers, remove_networks, sqlite_container_ids
from support.server import TEST_NETWORK_PREFIX, RunningServer, run_server

RUN_LABEL = "corebase-test.run"
RUN_ID = secrets.token_hex(6)


def start_body(image: str, **fields) -> dict:
    """A start request body that marks the container as this test run's."""
    labels = {RUN_LABEL: RUN_ID, **fields.pop("labels", {})}
    return {"image": image, "labels": labels, **fields}


async def cleanup_run_containers() -> None:
    await remove_containers(f"{RUN_LABEL}={RUN_ID}")
    await remove_test_networks()


async def remove_test_networks() -> None:
    """Remove the per-owner networks that this process's servers created; those still in use stay."""
    await remove_networks(TEST_NETWORK_PREFIX)


async def run_containers_in_engine() -> list[dict]:
    docker = aiodocker.Docker()
    try:
        containers = await docker.containers.list(all=True, filters={"label": [f"{RUN_LABEL}={RUN_ID}"]})
        return [container._container for container in containers]
    finally:
        await docker.close()


async def create_postgres_database(admin_url: str) -> str:
    """Create an empty database for one server and return its URL."""
    name = "cbtest_" + secrets.token_hex(6)
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path="/" + name))


async def drop_postgres_database(admin_url: str, database_url: str) -> None:
    name = urlsplit(database_url).path.lstrip("/")
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def server_fixture(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str] | None = None) -> Iterator[RunningServer]:
    data_dir: Path = tmp_path_factory.mktemp("corebase-data")
    with run_server(data_dir, env=env) as server:
        yield server


async def postgres_server(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str, env: dict[str, str] | None = None
) -> AsyncIterator[RunningServer]:
    database_url = await create_postgres_database(postgres_url)
    try:
        data_dir = tmp_path_factory.mktemp("corebase-pg-data")
        with run_server(data_dir, env={"COREBASE_DATABASE_URL": database_url, **(env or {})}) as server:
            yield server
    finally:
        await drop_postgres_database(postgres_url, database_url)


async def wait_until_ended(client: httpx.AsyncClient, container_id: str, limit: float = 60.0) -> dict:
    """Poll the record until the container has ended; a loaded machine may take a while."""
    deadline = time.monotonic() + limit
    while True:
        record = (await client.get(f"/api/runtime/containers/{container_id}")).json()
        if record["status"] in ("exited", "dead") or time.monotonic() > deadline:
            return record
        await asyncio.sleep(0.2)


BUILTIN_TEMPLATE_NAMES = ("node", "python", "postgres", "redis", "nginx", "ubuntu")


def toolbox_template_env(toolbox_image: str) -> dict[str, str]:
    """Settings that point every built-in template at the local toolbox image."""
    images = ",".join(f"{name}={toolbox_image}" for name in BUILTIN_TEMPLATE_NAMES)
    return {"COREBASE_TEMPLATES_IMAGES": images}


async def remove_server_containers(data_dir: Path) -> None:
    """Remove every engine container whose corebase.id is in a SQLite server's database, pool members included."""
    await remove_containers("corebase.managed=true", sqlite_container_ids(data_dir))


async def remove_database_containers(database_url: str) -> None:
    """Remove the engine containers of every row in the test database's `containers` table.

    Pool members carry only CoreBase's labels, not RUN_LABEL, so the `corebase.id` label is the
    one that ties them to this test. The ids are random, so no other container matches.
    """
    connection = await asyncpg.connect(database_url)
    try:
        ids = {row["id"] for row in await connection.fetch("SELECT id FROM containers")}
    finally:
        await connection.close()

    await remove_containers("corebase.id", ids)
