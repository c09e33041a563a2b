"""Writing the engine's state onto a row never undoes a remove or stop that finished meanwhile.

The soak benchmark found rows that were removed through the API and then became `exited` again:
the event listener had read the row, asked the engine, and saved the older state after the remove.
These tests run on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime, timezone

from corebase.containers.service import _apply_state, _save_state
from corebase.containers.tables import Container
from corebase.runtime.types import ContainerState


def now() -> datetime:
    return datetime.now(timezone.utc)


async def running_row(container_id: str) -> Container:
    created = now()
    await Container(
        id=container_id,
        docker_id="e" * 64,
        name=container_id,
        image="corebase-test/busybox:1",
        owner="alice",
        status="running",
        created_at=created,
        updated_at=created,
    ).save()
    return await Container.objects().where(Container.id == container_id).first()


def exited_state() -> ContainerState:
    return ContainerState(
        engine_id="e" * 64,
        name="x",
        image="corebase-test/busybox:1",
        status="exited",
        exit_code=143,
        started_at=now(),
        finished_at=now(),
    )


async def test_state_written_when_status_unchanged(database):
    row = await running_row("ctr_00000000000000a1")

    assert _apply_state(row, exited_state())
    assert await _save_state(row, "running")

    stored = await Container.objects().where(Container.id == row.id).first()
    assert stored.status == "exited"
    assert stored.exit_code == 143


async def test_removed_row_stays_removed(database):
    stale = await running_row("ctr_00000000000000a2")
    await Container.update({Container.status: "removed", Container.removed_at: now()}).where(Container.id == stale.id)

    _apply_state(stale, exited_state())
    written = await _save_state(stale, "running")

    stored = await Container.objects().where(Container.id == stale.id).first()
    assert not written
    assert stored.status == "removed"
    assert stored.removed_at is not None
    assert stored.exit_code is None


async def test_refresh_keeps_other_columns(database):
    row = await running_row("ctr_00000000000000a3")
    await Container.update({Container.owner: "bob", Container.name: "claimed"}).where(Container.id == row.id)

    _apply_state(row, exited_state())
    await _save_state(row, "running")

    stored = await Container.objects().where(Container.id == row.id).first()
    assert stored.status == "exited"
    assert stored.owner == "bob"
    assert stored.name == "claimed"
