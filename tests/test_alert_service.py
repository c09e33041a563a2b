"""AlertService on a real database, fed made-up samples and events: states, ownership, handover, retries.

The engine is not involved: these tests check the service's own logic. Container behaviour with
alerts is tested on the engine in test_alerts.py.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from api_support import create_postgres_database, drop_postgres_database
from corebase import db
from corebase.alerts.notifiers import DeliveryResult, Notification
from corebase.alerts.service import AlertService
from corebase.alerts.tables import Alert, AlertDelivery
from corebase.auth.caller import Caller
from corebase.auth.keys import create_key
from corebase.containers.tables import Container
from corebase.errors import InvalidField, RuleNotFound
from corebase.events.bus import EventBus
from corebase.events.types import Event
from corebase.metrics.types import Sample
from corebase.settings import load_settings

ADMIN = Caller(key_id="key_admin", user="admin", role="admin")
ALICE = Caller(key_id="key_alice", user="alice", role="developer")
BOB = Caller(key_id="key_bob", user="bob", role="developer")
T0 = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)


class RecordingNotifier:
    """Keeps every notification; fails the first `failures` attempts with a retryable error."""

    name = "recording"

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.sent: list[Notification] = []

    def validate(self, config: dict) -> dict:
        return {"type": self.name}

    async def send(self, notification: Notification, config: dict) -> DeliveryResult:
        self.sent.append(notification)
        if self.failures:
            self.failures -= 1
            return DeliveryResult(ok=False, target="memory", status_code=503, error="unavailable")
        return DeliveryResult(ok=True, target="memory", status_code=200)


@pytest.fixture(params=["sqlite", "postgres"])
async def settings(request, tmp_path):
    overrides = {"server": {"data_dir": str(tmp_path)}, "alerts": {"webhook_backoff": 0.05, "webhook_attempts": 3}}
    if request.param == "sqlite":
        yield load_settings(environ={}, overrides=overrides)
        return
    admin_url = request.getfixturevalue("postgres_url")
    database_url = await create_postgres_database(admin_url)
    try:
        yield load_settings(environ={"COREBASE_DATABASE_URL": database_url}, overrides=overrides)
    finally:
        await drop_postgres_database(admin_url, database_url)


@pytest.fixture
async def bus(settings):
    engine = await db.connect(settings)
    await db.migrate()
    await create_key("admin", "admin", "admin")
    bus = EventBus(settings)
    await bus.start()
    try:
        yield bus
    finally:
        await bus.stop()
        await db.disconnect(engine)


@pytest.fixture
def notifier() -> RecordingNotifier:
    return RecordingNotifier()


@pytest.fixture
async def service(settings, bus, notifier):
    alerts = AlertService(settings, bus, [notifier])
    await alerts.start()
    try:
        yield alerts
    finally:
        await alerts.stop()


async def add_container(container_id: str, owner: str, status: str = "running", project_id: str | None = None) -> None:
    await Container(
        id=container_id,
        name=container_id,
        image="corebase-test/busybox:1",
        owner=owner,
        status=status,
        project_id=project_id,
        created_at=T0,
        updated_at=T0,
        started_at=T0,
    ).save()


def sample(container_id: str, owner: str, cpu: float | None, project_id: str | None = None) -> Sample:
    return Sample(
        container_id=container_id,
        owner=owner,
        project_id=project_id,
        template=None,
        recorded_at=T0,
        cpu_percent=cpu,
        memory_bytes=10 * 1024**2,
        memory_limit_bytes=100 * 1024**2,
        network_rx_bytes=0,
        network_tx_bytes=0,
        block_read_bytes=0,
        block_write_bytes=0,
        pids=3,
    )


def cpu_rule(**fields) -> dict:
    return {
        "name": "busy",
        "metric": "cpu_percent",
        "comparator": ">",
        "threshold": 20,
        "duration": 2,
        "notifiers": [{"type": "recording"}],
        **fields,
    }


async def states(rule_id: str) -> list[str]:
    rows = await Alert.select(Alert.state).where(Alert.rule_id == rule_id).order_by(Alert.started_at)
    return [row["state"] for row in rows]


async def settle(service: AlertService) -> None:
    """Wait until the background deliveries have finished."""
    for _ in range(200):
        if not service.deliveries.in_flight:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("deliveries did not finish")


async def test_metric_alert_goes_pending_firing_resolved(service, notifier):
    await add_container("ctr_a", "alice")
    rule = await service.create_rule(ALICE, cpu_rule())

    await service.evaluate([sample("ctr_a", "alice", 50.0)], T0)
    assert await states(rule.id) == ["pending"]
    await service.evaluate([sample("ctr_a", "alice", 60.0)], T0 + timedelta(seconds=1))
    assert await states(rule.id) == ["pending"]
    await service.evaluate([sample("ctr_a", "alice", 55.0)], T0 + timedelta(seconds=2))
    assert await states(rule.id) == ["firing"]
    await service.evaluate([sample("ctr_a", "alice", 1.0)], T0 + timedelta(seconds=3))
    assert await states(rule.id) == ["resolved"]

    await settle(service)
    assert [item.transition for item in notifier.sent] == ["firing", "resolved"]
    assert notifier.sent[0].alert["state"] == "firing"
    assert notifier.sent[0].rule["id"] == rule.id
    assert notifier.sent[0].delivery_id != notifier.sent[1].delivery_id
    row = await Alert.select().where(Alert.rule_id == rule.id).first()
    assert row["fired_at"] == T0 + timedelta(seconds=2)
    assert row["resolved_at"] == T0 + timedelta(seconds=3)
    assert row["value"] == 1.0


async def test_pending_that_clears_resolves_silently(service, notifier):
    await add_container("ctr_a", "alice")
    rule = await service.create_rule(ALICE, cpu_rule())

    await service.evaluate([sample("ctr_a", "alice", 50.0)], T0)
    await service.evaluate([sample("ctr_a", "alice", 5.0)], T0 + timedelta(seconds=1))

    row = await Alert.select().where(Alert.rule_id == rule.id).first()
    assert row["state"] == "resolved"
    assert row["fired_at"] is None
    await settle(service)
    assert notifier.sent == []


async def test_zero_duration_fires_at_once(service, notifier):
    await add_container("ctr_a", "alice")
    rule = await service.create_rule(ALICE, cpu_rule(duration=0))
    await service.evaluate([sample("ctr_a", "alice", 50.0)], T0)
    assert await states(rule.id) == ["firing"]
    await settle(service)
    assert [item.transition for item in notifier.sent] == ["firing"]


async def test_first_reading_without_cpu_keeps_state(service):
    await add_container("ctr_a", "alice")
    rule = await service.create_rule(ALICE, cpu_rule())
    await service.evaluate([sample("ctr_a", "alice", None)], T0)
    assert await states(rule.id) == []
    await service.evaluate([sample("ctr_a", "alice", 50.0)], T0)
    await service.evaluate([sample("ctr_a", "alice", None)], T0 + timedelta(seconds=1))
    assert await states(rule.id) == ["pending"]


async def test_rules_of_a_developer_watch_only_their_containers(service):
    await add_container("ctr_alice", "alice")
    await add_container("ctr_bob", "bob")
    alice_rule = await service.create_rule(ALICE, cpu_rule(duration=0))
    admin_rule = await service.create_rule(ADMIN, cpu_rule(duration=0))

    await service.evaluate([sample("ctr_alice", "alice", 90.0), sample("ctr_bob", "bob", 90.0)], T0)

    watched = await Alert.select(Alert.rule_id, Alert.container_id, Alert.owner)
    assert {(row["rule_id"], row["container_id"]) for row in watched} == {
        (alice_rule.id, "ctr_alice"),
        (admin_rule.id, "ctr_alice"),
        (admin_rule.id, "ctr_bob"),
    }
    assert {row["owner"] for row in watched if row["rule_id"] == admin_rule.id} == {"admin"}


@pytest.mark.parametrize(
    ("scope", "scope_value", "expected"),
    [
        ("container", "ctr_one", {"ctr_one"}),
        ("project", "proj-x", {"ctr_two"}),
        ("all", None, {"ctr_one", "ctr_two"}),
    ],
)
async def test_scope_selects_containers(service, scope, scope_value, expected):
    await add_container("ctr_one", "alice")
    await add_container("ctr_two", "alice", project_id="proj-x")
    rule = await service.create_rule(ALICE, cpu_rule(duration=0, scope=scope, scope_value=scope_value))
    await service.evaluate(
        [sample("ctr_one", "alice", 90.0), sample("ctr_two", "alice", 90.0, project_id="proj-x")], T0
    )
    rows = await Alert.select(Alert.container_id).where(Alert.rule_id == rule.id)
    assert {row["container_id"] for row in rows} == expected


async def test_stopped_container_resolves_its_alert(service, notifier):
    await add_container("ctr_a", "alice")
    rule = await service.create_rule(ALICE, cpu_rule(duration=0))
    await service.evaluate([sample("ctr_a", "alice", 90.0)], T0)

    # A running container missing from one round keeps its alert.
    await service.evaluate([], T0 + timedelta(seconds=1))
    assert await states(rule.id) == ["firing"]

    await Container.update({Container.status: "exited"}).where(Container.id == "ctr_a")
    await service.evaluate([], T0 + timedelta(seconds=2))
    assert await states(rule.id) == ["resolved"]
    row = await Alert.select().where(Alert.rule_id == rule.id).first()
    assert "no longer running" in row["message"]
    await settle(service)
    assert [item.transition for item in notifier.sent] == ["firing", "resolved"]


async def test_new_leader_continues_from_stored_alerts(settings, bus, service, notifier):
    await add_container("ctr_a", "alice")
    rule = await service.create_rule(ALICE, cpu_rule())
    await service.evaluate([sample("ctr_a", "alice", 50.0)], T0)

    successor = AlertService(settings, bus, [notifier])
    await successor.start()
    try:
        await successor.evaluate([sample("ctr_a", "alice", 50.0)], T0 + timedelta(seconds=2))
        assert await states(rule.id) == ["firing"]
        # The old leader, reading the row it saw before, cannot fire it a second time.
        await service.evaluate([sample("ctr_a", "alice", 50.0)], T0 + timedelta(seconds=3))
        assert await states(rule.id) == ["firing"]
        await settle(successor)
    finally:
        await successor.stop()
    await settle(service)
    assert [item.transition for item in notifier.sent] == ["firing"]


async def test_delete_and_disable_resolve_active_alerts(service, notifier):
    await add_container("ctr_a", "alice")
    deleted = await service.create_rule(ALICE, cpu_rule(duration=0))
    disabled = await service.create_rule(ALICE, cpu_rule(duration=0, name="other"))
    await service.evaluate([sample("ctr_a", "alice", 90.0)], T0)

    await service.delete_rule(ALICE, deleted.id)
    await service.update_rule(ALICE, disabled.id, cpu_rule(duration=0, name="other", enabled=False))

    assert await states(deleted.id) == ["resolved"]
    assert await states(disabled.id) == ["resolved"]
    await settle(service)
    assert sorted(item.transition for item in notifier.sent) == ["firing", "firing", "resolved", "resolved"]
    with pytest.raises(RuleNotFound):
        await service.get_rule(ALICE, deleted.id)


async def test_other_users_rules_are_not_found(service):
    rule = await service.create_rule(ALICE, cpu_rule())
    with pytest.raises(RuleNotFound):
        await service.get_rule(BOB, rule.id)
    with pytest.raises(RuleNotFound):
        await service.update_rule(BOB, rule.id, cpu_rule())
    with pytest.raises(RuleNotFound):
        await service.delete_rule(BOB, rule.id)
    assert [item.id for item in await service.list_rules(BOB)] == []
    assert [item.id for item in await service.list_rules(ADMIN)] == [rule.id]


async def test_container_scope_needs_an_owned_container(service):
    await add_container("ctr_bob", "bob")
    with pytest.raises(InvalidField) as raised:
        await service.create_rule(ALICE, cpu_rule(scope="container", scope_value="ctr_bob"))
    assert raised.value.field == "scopeValue"
    assert (await service.create_rule(ADMIN, cpu_rule(scope="container", scope_value="ctr_bob"))).scope_value == "ctr_bob"


async def test_failed_deliveries_are_retried_and_logged(settings, bus):
    flaky = RecordingNotifier(failures=2)
    service = AlertService(settings, bus, [flaky])
    await service.start()
    try:
        await add_container("ctr_a", "alice")
        rule = await service.create_rule(ALICE, cpu_rule(duration=0))
        await service.evaluate([sample("ctr_a", "alice", 90.0)], T0)
        await settle(service)
    finally:
        await service.stop()

    attempts = await AlertDelivery.select().where(AlertDelivery.rule_id == rule.id).order_by(AlertDelivery.id)
    assert [row["attempt"] for row in attempts] == [1, 2, 3]
    assert [row["ok"] for row in attempts] == [False, False, True]
    assert [row["status_code"] for row in attempts] == [503, 503, 200]
    assert len({item.delivery_id for item in flaky.sent}) == 1


async def test_deliveries_give_up_after_the_last_attempt(settings, bus):
    broken = RecordingNotifier(failures=10)
    service = AlertService(settings, bus, [broken])
    await service.start()
    try:
        await add_container("ctr_a", "alice")
        rule = await service.create_rule(ALICE, cpu_rule(duration=0))
        await service.evaluate([sample("ctr_a", "alice", 90.0)], T0)
        await settle(service)
    finally:
        await service.stop()
    attempts = await AlertDelivery.select().where(AlertDelivery.rule_id == rule.id)
    assert len(attempts) == settings.alerts.webhook_attempts
    assert not any(row["ok"] for row in attempts)


def lifecycle_event(event_type: str, container_id: str = "ctr_a", owner: str = "alice", at: datetime = T0, **data) -> Event:
    return Event(type=event_type, container_id=container_id, owner=owner, data=data, time=at)


async def test_oom_fires_once_for_oom_and_died_events(service, notifier):
    await add_container("ctr_a", "alice", status="exited")
    rule = await service.create_rule(
        ALICE, {"name": "oom", "metric": "oom_killed", "window": 30, "notifiers": [{"type": "recording"}]}
    )
    await service.on_event(lifecycle_event("container.oom"))
    await service.on_event(lifecycle_event("container.died", exitCode=137, oomKilled=True, requested=False))

    rows = await Alert.select().where(Alert.rule_id == rule.id)
    assert [row["state"] for row in rows] == ["firing"]
    assert rows[0]["value"] == 137
    await settle(service)
    assert [item.transition for item in notifier.sent] == ["firing"]


async def test_lifecycle_alert_resolves_after_a_quiet_window(service):
    await add_container("ctr_a", "alice")
    rule = await service.create_rule(ALICE, {"name": "exits", "metric": "exited_unexpectedly", "window": 30})
    await service.on_event(lifecycle_event("container.died", exitCode=3, oomKilled=False, requested=False))
    assert await states(rule.id) == ["firing"]

    # Running again, started at T0 + 5 s: quiet for 25 s is not enough, 30 s is.
    await Container.update({Container.started_at: T0 + timedelta(seconds=5)}).where(Container.id == "ctr_a")
    await service.evaluate([], T0 + timedelta(seconds=30))
    assert await states(rule.id) == ["firing"]
    await service.evaluate([], T0 + timedelta(seconds=35))
    assert await states(rule.id) == ["resolved"]


async def test_requested_stop_and_clean_exit_do_not_fire(service):
    await add_container("ctr_a", "alice", status="exited")
    rule = await service.create_rule(ALICE, {"name": "exits", "metric": "exited_unexpectedly"})
    await service.on_event(lifecycle_event("container.died", exitCode=137, oomKilled=False, requested=True))
    await service.on_event(lifecycle_event("container.died", exitCode=0, oomKilled=False, requested=False))
    assert await states(rule.id) == []


async def test_restart_loop_counts_starts_in_the_window(service):
    await add_container("ctr_a", "alice")
    rule = await service.create_rule(ALICE, {"name": "loop", "metric": "restart_loop", "threshold": 3, "window": 60})
    for seconds in (0, 100, 130):
        await service.on_event(lifecycle_event("container.started", at=T0 + timedelta(seconds=seconds)))
    assert await states(rule.id) == []
    await service.on_event(lifecycle_event("container.started", at=T0 + timedelta(seconds=150)))
    rows = await Alert.select().where(Alert.rule_id == rule.id)
    assert [row["state"] for row in rows] == ["firing"]
    assert rows[0]["value"] == 3


async def test_removal_resolves_every_alert_of_the_container(service):
    await add_container("ctr_a", "alice")
    metric_rule = await service.create_rule(ALICE, cpu_rule(duration=0))
    exit_rule = await service.create_rule(ALICE, {"name": "exits", "metric": "exited_unexpectedly"})
    await service.evaluate([sample("ctr_a", "alice", 90.0)], T0)
    await service.on_event(lifecycle_event("container.died", exitCode=1, oomKilled=False, requested=False))

    await service.on_event(lifecycle_event("container.removed", at=T0 + timedelta(seconds=1)))
    assert await states(metric_rule.id) == ["resolved"]
    assert await states(exit_rule.id) == ["resolved"]


async def test_changes_are_published_as_events(service, bus):
    await add_container("ctr_a", "alice")
    rule = await service.create_rule(ALICE, cpu_rule(duration=1))
    received: list[Event] = []

    async with bus.listen(lambda event: event.type.startswith("alert.")) as listener:

        async def collect() -> None:
            while len(received) < 3:
                received.extend(msgspec.json.decode(payload, type=Event) for payload in await listener.next_batch())

        collector = asyncio.create_task(collect())
        await service.evaluate([sample("ctr_a", "alice", 50.0)], T0)
        await service.evaluate([sample("ctr_a", "alice", 50.0)], T0 + timedelta(seconds=1))
        await service.evaluate([sample("ctr_a", "alice", 5.0)], T0 + timedelta(seconds=2))
        await asyncio.wait_for(collector, 10)

    assert [event.type for event in received] == ["alert.pending", "alert.firing", "alert.resolved"]
    assert {event.data["ruleId"] for event in received} == {rule.id}
    assert received[0].owner == "alice"
    assert received[0].container_id == "ctr_a"


async def test_rule_on_removed_container_stays_editable(service):
    await add_container("ctr_a", "alice")
    await add_container("ctr_gone", "alice", status="removed")
    rule = await service.create_rule(ALICE, cpu_rule(scope="container", scope_value="ctr_a"))
    await Container.update({Container.status: "removed"}).where(Container.id == "ctr_a")

    updated = await service.update_rule(ALICE, rule.id, cpu_rule(scope="container", scope_value="ctr_a", enabled=False))
    assert updated.enabled is False

    with pytest.raises(InvalidField) as moved:
        await service.update_rule(ALICE, rule.id, cpu_rule(scope="container", scope_value="ctr_gone"))
    assert moved.value.field == "scopeValue"
