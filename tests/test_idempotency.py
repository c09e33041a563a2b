"""Idempotency-Key on POST /api/runtime/start: the key store on both databases, then real servers and the engine."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import aiodocker
import httpx
import msgspec
import pytest

from api_support import RUN_LABEL, postgres_server, remove_server_containers, server_fixture, start_body
from corebase.api.schemas import StartRequest
from corebase.errors import IdempotencyKeyInProgress, IdempotencyKeyReused, InvalidField
from corebase.idempotency import IdempotencyService, check_key, fingerprint
from corebase.idempotency.service import LOCK_SECONDS, key_id, utcnow
from corebase.idempotency.tables import DONE, IN_PROGRESS, IdempotencyKey
from corebase.settings import IdempotencySettings
from support.server import RunningServer

PATH = "/api/runtime/start"


# --- keys and fingerprints -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, problem",
    [
        ("", "empty"),
        ("k" * 256, "256 characters long"),
        ("tab\there", "not printable ASCII"),
        ("café", "not printable ASCII"),
        ("line\nbreak", "not printable ASCII"),
    ],
)
def test_invalid_key_rejected(value: str, problem: str) -> None:
    with pytest.raises(InvalidField) as caught:
        check_key(value)

    assert caught.value.status == 400
    assert caught.value.field == "Idempotency-Key"
    assert problem in caught.value.detail


@pytest.mark.parametrize("value", ["a", "k" * 255, "8e0f2c54-4b1a-4a4e-9d57-0c8f6b2f5a11", "with spaces and ~!@#"])
def test_valid_key_accepted(value: str) -> None:
    assert check_key(value) == value


def test_fingerprint_ignores_layout_and_key_order() -> None:
    first = msgspec.json.decode(b'{"image": "a:1", "env": {"A": "1", "B": "2"}}', type=StartRequest)
    reordered = msgspec.json.decode(b'{"env": {"B": "2", "A": "1"},   "image": "a:1"}', type=StartRequest)
    other = msgspec.json.decode(b'{"image": "a:1", "env": {"A": "1", "B": "3"}}', type=StartRequest)

    assert fingerprint("POST", PATH, first) == fingerprint("POST", PATH, reordered)
    assert fingerprint("POST", PATH, first) != fingerprint("POST", PATH, other)
    assert fingerprint("POST", PATH, first) != fingerprint("POST", "/api/other", first)


# --- the key store, on SQLite and PostgreSQL ------------------------------------------------------


class Action:
    """A stand-in for a start: counts its runs, takes `delay` seconds, and returns a body naming the run."""

    def __init__(self, delay: float = 0.0, error: Exception | None = None) -> None:
        self.runs = 0
        self.delay = delay
        self.error = error

    async def __call__(self) -> tuple[int, bytes, str]:
        self.runs += 1
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return 201, f'{{"id": "ctr_run{self.runs}"}}'.encode(), f"ctr_run{self.runs}"


@pytest.fixture
def service(database) -> IdempotencyService:
    return IdempotencyService(IdempotencySettings(key_ttl=3600))


async def test_first_run_stored_and_replayed(service) -> None:
    action = Action()

    first = await service.run("alice", "k1", "print-a", action)
    again = await service.run("alice", "k1", "print-a", action)

    assert first == (201, b'{"id": "ctr_run1"}', False, "ctr_run1")
    assert again == (201, b'{"id": "ctr_run1"}', True, "ctr_run1")
    assert action.runs == 1
    row = await IdempotencyKey.objects().where(IdempotencyKey.id == key_id("alice", "k1")).first()
    assert row.status == DONE
    assert row.container_id == "ctr_run1"
    assert row.lock_token is None


async def test_other_request_with_key_rejected(service) -> None:
    await service.run("alice", "k1", "print-a", Action())

    with pytest.raises(IdempotencyKeyReused) as caught:
        await service.run("alice", "k1", "print-b", Action())

    assert caught.value.status == 422
    assert caught.value.field == "Idempotency-Key"
    assert caught.value.extra["containerId"] == "ctr_run1"


async def test_key_store_scoped_per_user(service) -> None:
    action = Action()

    alice = await service.run("alice", "shared", "print-a", action)
    bob = await service.run("bob", "shared", "print-b", action)

    assert alice.body == b'{"id": "ctr_run1"}'
    assert bob.body == b'{"id": "ctr_run2"}'
    assert not bob.replayed


async def test_failed_run_frees_key(service) -> None:
    failing = Action(error=InvalidField("memory", "memory is too small"))

    with pytest.raises(InvalidField):
        await service.run("alice", "k1", "print-a", failing)
    corrected = await service.run("alice", "k1", "print-b", Action())

    assert corrected.status == 201
    assert not corrected.replayed
    assert await IdempotencyKey.count().where(IdempotencyKey.owner == "alice") == 1


async def test_concurrent_runs_execute_once(service) -> None:
    action = Action(delay=0.5)

    results = await asyncio.gather(
        *(service.run("alice", "k1", "print-a", action) for _ in range(10)), return_exceptions=True
    )

    assert action.runs == 1
    completed = [result for result in results if not isinstance(result, BaseException)]
    in_progress = [result for result in results if isinstance(result, IdempotencyKeyInProgress)]
    assert len(completed) + len(in_progress) == 10
    assert [result.replayed for result in completed].count(False) == 1
    assert {result.body for result in completed} == {b'{"id": "ctr_run1"}'}
    assert in_progress[0].status == 409
    assert in_progress[0].headers["Retry-After"] == "1"


async def insert_key(key: str, status: str, locked_until: datetime | None, expires_at: datetime) -> None:
    """Store alice's `key` as a request with fingerprint "print-a" left it."""
    await IdempotencyKey.insert(
        IdempotencyKey(
            id=key_id("alice", key),
            owner="alice",
            idempotency_key=key,
            fingerprint="print-a",
            status=status,
            lock_token="another-request" if status == IN_PROGRESS else None,
            locked_until=locked_until,
            created_at=utcnow() - timedelta(hours=2),
            expires_at=expires_at,
        )
    )


async def test_stale_lock_taken_over(service) -> None:
    await insert_key("k1", IN_PROGRESS, utcnow() - timedelta(seconds=1), utcnow() + timedelta(hours=1))
    action = Action()

    outcome = await service.run("alice", "k1", "print-a", action)

    assert action.runs == 1
    assert not outcome.replayed


async def test_stale_lock_stores_recovered_result(service) -> None:
    await insert_key("k1", IN_PROGRESS, utcnow() - timedelta(seconds=1), utcnow() + timedelta(hours=1))
    action = Action()

    async def recover():
        return 201, b'{"id": "ctr_dead"}', "ctr_dead"

    outcome = await service.run("alice", "k1", "print-a", action, recover)
    again = await service.run("alice", "k1", "print-a", action, recover)

    assert action.runs == 0
    assert outcome == (201, b'{"id": "ctr_dead"}', True, "ctr_dead")
    assert again == outcome
    row = await IdempotencyKey.objects().where(IdempotencyKey.id == key_id("alice", "k1")).first()
    assert row.status == DONE
    assert row.container_id == "ctr_dead"


async def test_stale_lock_without_result_runs(service) -> None:
    await insert_key("k1", IN_PROGRESS, utcnow() - timedelta(seconds=1), utcnow() + timedelta(hours=1))
    action = Action()
    asked: list[bool] = []

    async def recover():
        asked.append(True)
        return None

    outcome = await service.run("alice", "k1", "print-a", action, recover)

    assert asked == [True]
    assert action.runs == 1
    assert outcome == (201, b'{"id": "ctr_run1"}', False, "ctr_run1")


async def test_recovery_in_progress_keeps_key(service) -> None:
    await insert_key("k1", IN_PROGRESS, utcnow() - timedelta(seconds=1), utcnow() + timedelta(hours=1))
    action = Action()

    async def recover():
        raise IdempotencyKeyInProgress("k1")

    with pytest.raises(IdempotencyKeyInProgress):
        await service.run("alice", "k1", "print-a", action, recover)

    assert action.runs == 0
    row = await IdempotencyKey.objects().where(IdempotencyKey.id == key_id("alice", "k1")).first()
    assert row.status == IN_PROGRESS
    assert row.lock_token is None
    # The retry handed the key back, so the next one takes it over at once and calls recover again.
    asked = []

    async def recover_now():
        asked.append(True)
        return 201, b'{"id": "ctr_left"}', "ctr_left"

    outcome = await service.run("alice", "k1", "print-a", action, recover_now)

    assert asked == [True]
    assert action.runs == 0
    assert outcome == (201, b'{"id": "ctr_left"}', True, "ctr_left")


async def test_first_run_not_recovered(service) -> None:
    async def recover():
        raise AssertionError("only a key taken over from a dead request is recovered")

    outcome = await service.run("alice", "k1", "print-a", Action(), recover)

    assert not outcome.replayed


async def test_live_lock_answers_in_progress(service) -> None:
    await insert_key("k1", IN_PROGRESS, utcnow() + timedelta(seconds=LOCK_SECONDS), utcnow() + timedelta(hours=1))

    with pytest.raises(IdempotencyKeyInProgress):
        await service.run("alice", "k1", "print-a", Action())


async def test_expired_key_runs_again(service) -> None:
    action = Action()
    await service.run("alice", "k1", "print-a", action)
    await IdempotencyKey.update({IdempotencyKey.expires_at: utcnow() - timedelta(seconds=1)}).where(
        IdempotencyKey.owner == "alice"
    )

    outcome = await service.run("alice", "k1", "print-b", action)

    assert action.runs == 2
    assert outcome.body == b'{"id": "ctr_run2"}'


async def test_prune_removes_only_expired_unlocked_keys(service) -> None:
    now = utcnow()
    hour = timedelta(hours=1)
    rows = {
        "done-expired": (DONE, None, now - hour),
        "done-valid": (DONE, None, now + hour),
        "running-expired": (IN_PROGRESS, now + hour, now - hour),
        "abandoned-expired": (IN_PROGRESS, now - hour, now - hour),
    }
    for name, (status, locked_until, expires_at) in rows.items():
        await insert_key(name, status, locked_until, expires_at)

    pruned = await service.prune()

    left = await IdempotencyKey.select(IdempotencyKey.idempotency_key).output(as_list=True)
    assert pruned == 2
    assert sorted(left) == ["done-valid", "running-expired"]


# --- real servers and the engine -----------------------------------------------------------------


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory, docker_available, toolbox_image) -> RunningServer:
    env = {"COREBASE_POOL_INTERVAL": "0.2"}
    for running in server_fixture(tmp_path_factory, env):
        yield running
        asyncio.run(remove_server_containers(running.data_dir))


@pytest.fixture(scope="module")
async def pg_server(tmp_path_factory, docker_available, postgres_url) -> RunningServer:
    async for running in postgres_server(tmp_path_factory, postgres_url):
        yield running


@pytest.fixture(params=["sqlite", "postgres"])
def server(request) -> RunningServer:
    return request.getfixturevalue("sqlite_server" if request.param == "sqlite" else "pg_server")


@pytest.fixture
async def api(server) -> AsyncIterator[httpx.AsyncClient]:
    async with server.async_client() as client:
        yield client


def new_key() -> str:
    return "cbtest-" + secrets.token_hex(8)


def tagged_body(image: str, **fields) -> tuple[dict, str]:
    """A start body with a label of its own, so the test can count exactly its containers in the engine."""
    tag = secrets.token_hex(6)
    return start_body(image, command=["sleep", "600"], labels={"cbtest.idempotency": tag}, **fields), tag


async def engine_containers(docker: aiodocker.Docker, tag: str) -> list[dict]:
    found = await docker.containers.list(all=True, filters={"label": [f"cbtest.idempotency={tag}"]})
    return [container._container for container in found]


async def start(api: httpx.AsyncClient, body: dict, key: str | bytes) -> httpx.Response:
    return await api.post(PATH, json=body, headers={"Idempotency-Key": key})


@pytest.mark.engine
async def test_retry_returns_same_container(api, test_image, docker) -> None:
    body, tag = tagged_body(test_image)
    key = new_key()

    first = await start(api, body, key)
    retry = await start(api, body, key)

    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    assert retry.status_code == 201
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.content == first.content
    assert len(await engine_containers(docker, tag)) == 1


@pytest.mark.engine
async def test_start_without_key_repeats(api, test_image, docker) -> None:
    body, tag = tagged_body(test_image)

    first = await api.post(PATH, json=body)
    second = await api.post(PATH, json=body)

    assert first.status_code == 201, first.text
    assert second.status_code == 201, second.text
    assert second.json()["id"] != first.json()["id"]
    assert len(await engine_containers(docker, tag)) == 2


@pytest.mark.engine
async def test_concurrent_starts_make_one_container(api, test_image, docker) -> None:
    body, tag = tagged_body(test_image)
    key = new_key()

    responses = await asyncio.gather(*(start(api, body, key) for _ in range(10)))

    statuses = sorted(response.status_code for response in responses)
    created = [response for response in responses if response.status_code == 201]
    assert set(statuses) <= {201, 409}, [response.text for response in responses]
    assert len({response.json()["id"] for response in created}) == 1
    assert [response.headers.get("Idempotent-Replayed") for response in created].count(None) == 1
    for response in responses:
        if response.status_code == 409:
            assert response.json()["field"] == "Idempotency-Key"
            assert response.headers["Retry-After"] == "1"
    assert len(await engine_containers(docker, tag)) == 1

    settled = await start(api, body, key)
    assert settled.headers["Idempotent-Replayed"] == "true"
    assert settled.json()["id"] == created[0].json()["id"]
    assert len(await engine_containers(docker, tag)) == 1


@pytest.mark.engine
async def test_key_with_other_body_rejected(api, test_image, docker) -> None:
    body, tag = tagged_body(test_image)
    key = new_key()
    first = await start(api, body, key)

    other = await start(api, {**body, "projectId": "another"}, key)

    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert other.json()["field"] == "Idempotency-Key"
    assert other.json()["containerId"] == first.json()["id"]
    assert len(await engine_containers(docker, tag)) == 1


@pytest.mark.engine
@pytest.mark.parametrize("key", [b"", b"k" * 256, b"caf\xe9", b"tab\there"], ids=["empty", "long", "latin1", "tab"])
async def test_invalid_key_answers_400(api, test_image, docker, key) -> None:
    body, tag = tagged_body(test_image)

    response = await start(api, body, key)

    assert response.status_code == 400
    assert response.json()["field"] == "Idempotency-Key"
    assert await engine_containers(docker, tag) == []


@pytest.mark.engine
async def test_failed_start_frees_key(api, test_image, docker) -> None:
    body, tag = tagged_body(test_image)
    key = new_key()

    rejected = await start(api, {**body, "memory": "1"}, key)
    rejected_again = await start(api, {**body, "memory": "1"}, key)
    corrected = await start(api, {**body, "memory": "64m"}, key)

    assert rejected.status_code == 422
    assert rejected.json()["field"] == "memory"
    assert rejected_again.status_code == 422
    assert rejected_again.json()["field"] == "memory"
    assert corrected.status_code == 201, corrected.text
    assert "Idempotent-Replayed" not in corrected.headers
    assert len(await engine_containers(docker, tag)) == 1


@pytest.mark.engine
async def test_same_key_from_two_users(server, api, test_image, docker) -> None:
    user = "cbidem-" + secrets.token_hex(3)
    assert (await api.post("/api/users", json={"name": user, "role": "developer"})).status_code == 201
    secret = (await api.post("/api/keys", json={"name": user, "user": user})).json()["secret"]
    body, tag = tagged_body(test_image)
    key = new_key()

    admins = await start(api, body, key)
    async with server.async_client(secret) as developer:
        developers = await start(developer, body, key)

    assert developers.status_code == 201, developers.text
    assert "Idempotent-Replayed" not in developers.headers
    assert developers.json()["id"] != admins.json()["id"]
    assert developers.json()["owner"] == user
    assert len(await engine_containers(docker, tag)) == 2


@pytest.mark.engine
async def test_pool_claim_replayed(sqlite_server, toolbox_image, docker) -> None:
    async with sqlite_server.async_client() as api:
        template = "cbidem-" + secrets.token_hex(4)
        definition = {"name": template, "image": toolbox_image, "command": ["sleep", "infinity"], "memory": "32m"}
        assert (await api.post("/api/runtime/templates", json=definition)).status_code == 201
        assert (await api.put(f"/api/runtime/pools/{template}", json={"minIdle": 1, "maxIdle": 1, "maxTotal": 2})).status_code == 200
        async with asyncio.timeout(90):
            while (await api.get(f"/api/runtime/pools/{template}")).json()["idle"] < 1:
                await asyncio.sleep(0.2)
        key = new_key()

        claimed = await start(api, {"template": template, "labels": {RUN_LABEL: "idempotency"}}, key)
        retry = await start(api, {"template": template, "labels": {RUN_LABEL: "idempotency"}}, key)
        await api.delete(f"/api/runtime/pools/{template}")

    assert claimed.status_code == 201, claimed.text
    assert claimed.json()["source"] == "pool"
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.json()["id"] == claimed.json()["id"]


def leave_as_dead_request(data_dir, key: str, credentials: dict[str, str]) -> None:
    """Put the admin's `key` back in the state a request killed after its start, before storing the response, leaves."""
    with sqlite3.connect(data_dir / "corebase.sqlite") as connection:
        updated = connection.execute(
            "UPDATE idempotency_keys SET status = ?, lock_token = 'dead', locked_until = ?, response_status = NULL, "
            "response_body = NULL, container_id = NULL WHERE idempotency_key = ?",
            (IN_PROGRESS, str(utcnow() - timedelta(seconds=1)), key),
        )
        assert updated.rowcount == 1
        connection.execute(
            "UPDATE containers SET pending_credentials = ? WHERE idempotency_key = (SELECT id FROM idempotency_keys "
            "WHERE idempotency_key = ?)",
            (msgspec.json.encode(credentials).decode(), key),
        )


@pytest.mark.engine
async def test_retry_after_dead_request_finds_container(sqlite_server, toolbox_image, docker) -> None:
    template = "cbidem-" + secrets.token_hex(4)
    definition = {"name": template, "image": toolbox_image, "command": ["sleep", "600"], "generatedEnv": ["SECRET"]}
    tag = secrets.token_hex(6)
    body = {"template": template, "env": {"MODE": "x"}, "labels": {RUN_LABEL: "idempotency", "cbtest.idempotency": tag}}
    key = new_key()
    async with sqlite_server.async_client() as api:
        assert (await api.post("/api/runtime/templates", json=definition)).status_code == 201
        first = await start(api, body, key)
        assert first.status_code == 201, first.text
        leave_as_dead_request(sqlite_server.data_dir, key, first.json()["credentials"])

        retry = await start(api, body, key)
        again = await start(api, body, key)

    assert retry.status_code == 201, retry.text
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.json()["id"] == first.json()["id"]
    assert retry.json()["credentials"] == first.json()["credentials"]
    assert again.content == retry.content
    assert len(await engine_containers(docker, tag)) == 1
    # Once the response is stored with the key, the container's row no longer keeps the secret.
    with sqlite3.connect(sqlite_server.data_dir / "corebase.sqlite") as connection:
        kept = connection.execute("SELECT pending_credentials FROM containers WHERE id = ?", (first.json()["id"],)).fetchone()
    assert kept == (None,)


@pytest.mark.engine
async def test_retry_while_dead_start_creating(sqlite_server, test_image, docker) -> None:
    tag = secrets.token_hex(6)
    body = {"image": test_image, "command": ["sleep", "600"], "labels": {RUN_LABEL: "idempotency", "cbtest.idempotency": tag}}
    key = new_key()
    database = sqlite_server.data_dir / "corebase.sqlite"
    async with sqlite_server.async_client() as api:
        first = await start(api, body, key)
        assert first.status_code == 201, first.text
        leave_as_dead_request(sqlite_server.data_dir, key, {})
        # The dead request's start had not finished: its row is still `creating`, renewed just now.
        with sqlite3.connect(database) as connection:
            connection.execute(
                "UPDATE containers SET status = 'creating', updated_at = ? WHERE id = ?",
                (str(utcnow()), first.json()["id"]),
            )
        try:
            retry = await start(api, body, key)
            again = await start(api, body, key)
        finally:
            with sqlite3.connect(database) as connection:
                connection.execute("UPDATE containers SET status = 'running' WHERE id = ?", (first.json()["id"],))

    problem = retry.json()
    assert retry.status_code == 409, retry.text
    assert problem["field"] == "Idempotency-Key"
    assert first.json()["id"] in problem["detail"]
    assert "reconcile.creating_grace" in problem["detail"]
    # reconcile.creating_grace is 60 s, counted from the row's last update.
    assert 55 <= int(retry.headers["Retry-After"]) <= 61
    # The next retry gets the same 409, not the one for a request that is still running.
    assert again.status_code == 409, again.text
    assert first.json()["id"] in again.json()["detail"]
    assert len(await engine_containers(docker, tag)) == 1


@pytest.mark.engine
async def test_expired_key_starts_again(tmp_path_factory, test_image, docker) -> None:
    body, tag = tagged_body(test_image)
    key = new_key()

    for running in server_fixture(tmp_path_factory, {"COREBASE_IDEMPOTENCY_KEY_TTL": "1"}):
        async with running.async_client() as api:
            first = await start(api, body, key)
            time.sleep(1.5)
            later = await start(api, body, key)

    assert first.status_code == 201
    assert later.status_code == 201
    assert "Idempotent-Replayed" not in later.headers
    assert later.json()["id"] != first.json()["id"]
    assert len(await engine_containers(docker, tag)) == 2
