"""The reconciler's decisions, on SQLite and PostgreSQL, with real engine containers.

Each test builds the container service and the reconciler in this process on a fresh database,
makes the database and the engine disagree the way a crash or an outside change would, runs one
pass and checks both sides. The last test runs a real server behind an engine proxy and checks
that a reconnect of the engine event stream runs a pass.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import aiodocker
import msgspec
import pytest

from api_support import RUN_ID, RUN_LABEL, remove_containers, remove_server_containers
from corebase import leases
from corebase.api.schemas import StartRequest
from corebase.auth.caller import Caller
from corebase.containers.reconciler import LEASE_NAME, Reconciler, ReconcileReport
from corebase.containers.service import ContainerService, _recording_progress, new_container_id, utcnow
from corebase.containers.spec import LABEL_INSTALLATION, LABEL_MANAGED, build_spec
from corebase.containers.tables import Container
from corebase.errors import EngineTimeout, ReconcilerBusy
from corebase.events.bus import EventBus
from corebase.installation import installation_id
from corebase.metrics.prometheus import PrometheusMetrics
from corebase.pool.service import LABEL_POOL, POOL_OWNER
from corebase.runtime.types import ContainerSpec
from corebase.settings import NetworkSettings, ReconcileSettings, Settings
from corebase.templates.catalog import TemplateCatalog
from corebase_docker import DockerRuntime
from support.images import TEST_LABEL
from support.proxy import EngineProxy
from support.server import run_server

pytestmark = pytest.mark.engine

GRACE = 1.0
CLEANUP_LABEL = "corebase-test.reconciler"
DAVE = Caller(key_id="key_test", user="dave", role="developer")


@dataclass
class Harness:
    settings: Settings
    containers: ContainerService
    runtime: DockerRuntime
    docker: aiodocker.Docker
    bus: EventBus
    metrics: PrometheusMetrics
    image: str
    # Carried by every container a test creates outside the installation, so clean-up finds it.
    test_labels: dict[str, str]

    def reconciler(self, orphans: str = "remove") -> Reconciler:
        reconcile = ReconcileSettings(creating_grace=GRACE, orphans=orphans)
        return Reconciler(msgspec.structs.replace(self.settings, reconcile=reconcile), self.containers, self.bus, self.metrics)

    async def start(self) -> Container:
        request = StartRequest(image=self.image, command=["sleep", "600"], memory="16m", labels={RUN_LABEL: RUN_ID})
        return (await self.containers.start(DAVE, request)).row

    def spec(self, container_id: str, owner: str = DAVE.user) -> ContainerSpec:
        """Build the spec the service would create for dave, labelled as this installation's."""
        request = StartRequest(image=self.image, command=["sleep", "600"], memory="16m", labels={RUN_LABEL: RUN_ID})
        return build_spec(
            request, self.settings, container_id=container_id, owner=owner, installation=self.containers.installation_id
        )

    async def interrupted_start(self, create: bool = True) -> tuple[Container, str | None]:
        """Write a `creating` row as a start does, create its container, and stop as a killed process would.

        The row keeps no engine id and its last progress lies past the grace period.
        """
        container_id = new_container_id()
        spec = self.spec(container_id)
        row = await self.containers.insert_creating(container_id, spec, DAVE, labels={RUN_LABEL: RUN_ID})
        engine_id = await self.runtime.create(spec) if create else None
        await Container.update({Container.updated_at: utcnow() - timedelta(seconds=GRACE * 5)}).where(
            Container.id == row.id
        )
        return row, engine_id

    async def row(self, container_id: str) -> Container | None:
        return await Container.objects().output(load_json=True).where(Container.id == container_id).first()

    async def exists(self, engine_id: str) -> bool:
        try:
            await self.docker.containers.container(engine_id).show()
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def repairs(self, kind: str) -> float:
        return self.metrics.registry.get_sample_value("corebase_reconcile_repairs_total", {"kind": kind})


@pytest.fixture
async def harness(database, database_settings, docker, test_image) -> AsyncIterator[Harness]:
    # Without per-owner networks the containers join the engine's default bridge, so tests leave no networks.
    settings = msgspec.structs.replace(database_settings, networks=NetworkSettings(per_owner=False))
    runtime = DockerRuntime()
    containers = ContainerService(settings, runtime, [], TemplateCatalog([], {}))
    containers.installation_id = await installation_id()
    bus = EventBus(settings)
    await bus.start()
    token = secrets.token_hex(6)
    test_labels = {TEST_LABEL: "true", CLEANUP_LABEL: token}
    try:
        yield Harness(settings, containers, runtime, docker, bus, PrometheusMetrics(), test_image, test_labels)
    finally:
        await remove_containers(f"{LABEL_INSTALLATION}={containers.installation_id}")
        await remove_containers(f"{CLEANUP_LABEL}={token}")
        await bus.stop()
        await runtime.close()


def kinds(report: ReconcileReport) -> list[str]:
    return [repair.kind for repair in report.repairs]


# --- rows --------------------------------------------------------------------------------------


async def test_consistent_state_needs_no_repair(harness):
    await harness.start()
    report = await harness.reconciler().run_now()
    assert report.repairs == []
    assert report.error is None


async def test_gone_container_marks_row_removed(harness):
    row = await harness.start()
    await harness.docker.containers.container(row.docker_id).delete(force=True)

    report = await harness.reconciler().run_now()

    assert kinds(report) == ["gone"]
    stored = await harness.row(row.id)
    assert stored.status == "removed"
    assert "no longer exists" in stored.error
    assert (await harness.containers.quotas.usage(DAVE.user)).containers == 0


async def test_drift_takes_engine_state(harness):
    row = await harness.start()
    await harness.docker.containers.container(row.docker_id).kill()
    await harness.docker.containers.container(row.docker_id).wait()

    report = await harness.reconciler().run_now()

    assert kinds(report) == ["drifted"]
    assert report.repairs[0].previous_status == "running"
    stored = await harness.row(row.id)
    assert stored.status == "exited"
    assert stored.exit_code == 137
    assert harness.repairs("drifted") == 1


async def test_interrupted_start_fails_and_frees_quota(harness):
    row, engine_id = await harness.interrupted_start()
    assert row.docker_id is None
    assert (await harness.containers.quotas.usage(DAVE.user)).containers == 1

    async with harness.bus.listen(lambda event: event.type == "container.reconciled") as listener:
        report = await harness.reconciler().run_now()
        events = [json.loads(item) for item in await asyncio.wait_for(listener.next_batch(), 10)]

    assert kinds(report) == ["interrupted"]
    stored = await harness.row(row.id)
    assert stored.status == "failed"
    assert "interrupted" in stored.error
    assert not await harness.exists(engine_id)
    assert (await harness.containers.quotas.usage(DAVE.user)).containers == 0
    assert events[0]["containerId"] == row.id
    assert events[0]["owner"] == DAVE.user
    assert events[0]["data"]["repair"] == "interrupted"
    # The row had no engine id yet, so the repair names the labelled container it removed.
    assert events[0]["data"]["engineId"] == engine_id == report.repairs[0].engine_id
    assert harness.repairs("interrupted") == 1


async def test_interrupted_start_before_create(harness):
    row, _ = await harness.interrupted_start(create=False)
    report = await harness.reconciler().run_now()
    assert kinds(report) == ["interrupted"]
    assert (await harness.row(row.id)).status == "failed"


async def test_start_in_progress_is_left_alone(harness):
    row, engine_id = await harness.interrupted_start()
    await Container.update({Container.updated_at: utcnow()}).where(Container.id == row.id)

    report = await harness.reconciler().run_now()

    assert report.repairs == []
    assert 0 < report.recheck_in <= GRACE
    assert (await harness.row(row.id)).status == "creating"
    assert await harness.exists(engine_id)


async def test_progress_renews_creating_row(harness):
    row, _ = await harness.interrupted_start(create=False)
    async with _recording_progress(row.id, every=0.1):
        await asyncio.sleep(0.5)
    report = await harness.reconciler().run_now()
    assert report.repairs == []


async def test_start_loses_to_reconciler(harness):
    """A start whose row the reconciler failed meanwhile removes its container and raises."""
    container_id = new_container_id()
    spec = harness.spec(container_id)
    row = await harness.containers.insert_creating(container_id, spec, DAVE, labels={RUN_LABEL: RUN_ID})
    await Container.update({Container.status: "failed"}).where(Container.id == row.id)

    with pytest.raises(EngineTimeout, match="taken as interrupted"):
        await harness.containers.launch(row, spec)

    assert await harness.runtime.list({"corebase.id": container_id}) == []
    assert (await harness.row(container_id)).status == "failed"


# --- containers without an active row ----------------------------------------------------------


async def test_orphan_is_removed(harness):
    engine_id = await harness.runtime.create(harness.spec(new_container_id()))
    report = await harness.reconciler().run_now()
    assert kinds(report) == ["orphan_removed"]
    assert not await harness.exists(engine_id)


async def test_container_of_failed_row_is_removed(harness):
    row = await harness.start()
    await Container.update({Container.status: "failed"}).where(Container.id == row.id)

    report = await harness.reconciler().run_now()

    assert kinds(report) == ["orphan_removed"]
    assert report.repairs[0].previous_status == "failed"
    assert not await harness.exists(row.docker_id)


async def test_orphan_is_adopted_and_charged(harness):
    container_id = new_container_id()
    engine_id = await harness.runtime.create(harness.spec(container_id, owner="erin"))
    await harness.runtime.start(engine_id)

    reconciler = harness.reconciler(orphans="adopt")
    report = await reconciler.run_now()

    assert kinds(report) == ["orphan_adopted"]
    row = await harness.row(container_id)
    assert row.owner == "erin"
    assert row.status == "running"
    assert row.docker_id == engine_id
    assert row.source == "adopted"
    assert row.labels == {RUN_LABEL: RUN_ID}
    usage = await harness.containers.quotas.usage("erin")
    assert usage.containers == 1
    assert usage.memory_bytes == 16 * 1024 * 1024
    assert (await reconciler.run_now()).repairs == []


async def test_removed_row_is_revived_by_adoption(harness):
    row = await harness.start()
    await Container.update({Container.status: "removed"}).where(Container.id == row.id)

    report = await harness.reconciler(orphans="adopt").run_now()

    assert kinds(report) == ["orphan_adopted"]
    assert (await harness.row(row.id)).status == "running"
    assert (await harness.containers.quotas.usage(DAVE.user)).containers == 1


@pytest.mark.parametrize("orphans", ["remove", "adopt"])
async def test_other_containers_are_untouched(harness, orphans):
    # One without CoreBase's labels, and one of another installation on the same engine.
    plain = await harness.docker.containers.create(
        {"Image": harness.image, "Cmd": ["sleep", "600"], "Labels": harness.test_labels}
    )
    foreign_spec = harness.spec(new_container_id())
    foreign_spec.labels.update({**harness.test_labels, LABEL_INSTALLATION: "inst_" + secrets.token_hex(8)})
    foreign = await harness.runtime.create(foreign_spec)

    report = await harness.reconciler(orphans).run_now()

    assert report.repairs == []
    assert await harness.exists(plain.id)
    assert await harness.exists(foreign)
    assert await Container.count() == 0


# --- pools and leadership ---------------------------------------------------------------------


async def test_pool_members_are_left_to_pool(harness):
    pool_caller = Caller(key_id="", user=POOL_OWNER, role="admin")
    member_id = new_container_id()
    spec = harness.spec(member_id, owner=POOL_OWNER)
    spec.labels[LABEL_POOL] = "busybox"
    member = await harness.containers.insert_creating(member_id, spec, pool_caller, pool="busybox")
    await harness.containers.launch(member, spec)
    await Container.update({Container.pool_state: "idle"}).where(Container.id == member_id)
    # A stopped idle member is the pool manager's to retire.
    await harness.docker.containers.container(member.docker_id).kill()

    # A member's container whose row is gone belongs to no one, so it is removed even in adopt mode.
    stray_spec = harness.spec(new_container_id(), owner=POOL_OWNER)
    stray_spec.labels[LABEL_POOL] = "busybox"
    stray = await harness.runtime.create(stray_spec)

    report = await harness.reconciler(orphans="adopt").run_now()

    assert kinds(report) == ["orphan_removed"]
    assert report.repairs[0].engine_id == stray
    assert (await harness.row(member_id)).status == "running"
    assert await harness.exists(member.docker_id)


async def test_busy_while_another_process_leads(harness):
    assert await leases.acquire(LEASE_NAME, "elsewhere:1:abcd", 30)
    with pytest.raises(ReconcilerBusy) as raised:
        await harness.reconciler().run_now()
    assert raised.value.status == 409
    assert "elsewhere:1:abcd" in raised.value.detail
    assert "lease runs out within" in raised.value.detail
    assert int(raised.value.headers["Retry-After"]) >= 1


# --- a real server -----------------------------------------------------------------------------


async def test_engine_reconnect_runs_a_pass(tmp_path, docker, test_image):
    """An orphan created while the event stream is cut is removed once the stream reconnects."""
    proxy = EngineProxy(tmp_path / "engine.sock").start()
    data_dir = tmp_path / "data"
    installation = None
    env = {
        "COREBASE_DOCKER_URL": proxy.url,
        "COREBASE_EVENTS_RECONNECT_DELAY": "0.5",
        # Passes at start-up and on wake-ups only, so the reconnect is what runs the second one.
        "COREBASE_RECONCILE_INTERVAL": "3600",
    }
    try:
        with run_server(data_dir, env=env) as server, server.client() as client:
            status = client.get("/api/admin/reconcile").json()
            installation = status["installation"]
            assert installation.startswith("inst_")

            proxy.cut()
            proxy.refuse()
            orphan = await docker.containers.create(
                {
                    "Image": test_image,
                    "Cmd": ["sleep", "600"],
                    "Labels": {
                        LABEL_MANAGED: "true",
                        "corebase.id": new_container_id(),
                        "corebase.owner": "dave",
                        LABEL_INSTALLATION: installation,
                        RUN_LABEL: RUN_ID,
                    },
                }
            )
            await asyncio.sleep(1.0)
            proxy.accept()

            deadline = asyncio.get_running_loop().time() + 60
            while True:
                last = client.get("/api/admin/reconcile").json()["lastPass"]
                if last and any(repair["engineId"] == orphan.id for repair in last["repairs"]):
                    break
                assert asyncio.get_running_loop().time() < deadline, f"no pass removed the orphan; last pass: {last}"
                await asyncio.sleep(0.3)
            assert [repair["kind"] for repair in last["repairs"]] == ["orphan_removed"]
            assert (await docker.containers.list(all=True, filters={"id": [orphan.id]})) == []

            ran = client.post("/api/admin/reconcile")
            assert ran.status_code == 200, ran.text
            assert ran.json()["repairs"] == []
    finally:
        proxy.stop()
        if installation is not None:
            await remove_containers(f"{LABEL_INSTALLATION}={installation}")
        await remove_server_containers(data_dir)
