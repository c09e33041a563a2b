"""GET /metrics on a real server: auth, container series, request latency, engine errors, pools."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from api_support import (
    create_postgres_database,
    drop_postgres_database,
    remove_database_containers,
    remove_server_containers,
    server_fixture,
    start_body,
    toolbox_template_env,
)
from corebase import __version__
from corebase.app import create_app
from corebase.auth.keys import create_key
from corebase.settings import load_settings
from support.server import RunningServer, free_port, run_server

pytestmark = pytest.mark.engine

# Seconds a bounded wait may take. The server samples containers every second.
WAIT_LIMIT = 60.0
CONTAINER_ROUTE = "/api/runtime/containers/{container_id}"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
async def server(request, tmp_path_factory, docker_available, toolbox_image) -> AsyncIterator[RunningServer]:
    """A server sampling every second, on SQLite and then on PostgreSQL, whose containers are removed afterwards."""
    env = {
        **toolbox_template_env(toolbox_image),
        "COREBASE_MONITORING_INTERVAL": "1",
        "COREBASE_POOL_INTERVAL": "0.2",
    }
    if request.param == "sqlite":
        for running in server_fixture(tmp_path_factory, env):
            yield running
            await remove_server_containers(running.data_dir)
        return

    postgres_url = request.getfixturevalue("postgres_url")
    database_url = await create_postgres_database(postgres_url)
    try:
        data_dir = tmp_path_factory.mktemp("corebase-pg-data")
        with run_server(data_dir, env={"COREBASE_DATABASE_URL": database_url, **env}) as running:
            yield running
    finally:
        try:
            await remove_database_containers(database_url)
        finally:
            await drop_postgres_database(postgres_url, database_url)


async def scrape(client: httpx.AsyncClient) -> list[Sample]:
    """Every sample of one scrape, parsed the way Prometheus reads the text format."""
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    return [sample for family in text_string_to_metric_families(response.text) for sample in family.samples]


# The sample name is positional-only because "name" is also a container label.
def find(samples: list[Sample], metric: str, /, **labels: str) -> list[Sample]:
    return [sample for sample in samples if sample.name == metric and labels.items() <= sample.labels.items()]


def value(samples: list[Sample], metric: str, /, **labels: str) -> float:
    """The value of the one sample named `metric` with `labels`, or 0 when there is none."""
    found = find(samples, metric, **labels)
    assert len(found) <= 1, f"{len(found)} samples of {metric} match {labels}: {found}"
    return found[0].value if found else 0.0


async def wait_for_scrape(
    client: httpx.AsyncClient, check: Callable[[list[Sample]], bool], what: str
) -> list[Sample]:
    deadline = time.monotonic() + WAIT_LIMIT
    while True:
        samples = await scrape(client)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.5)


async def start(client: httpx.AsyncClient, image: str, **fields) -> dict:
    response = await client.post("/api/runtime/start", json=start_body(image, **fields))
    assert response.status_code == 201, response.text
    return response.json()


# --- auth and format -------------------------------------------------------------------------


async def test_metrics_needs_api_key(server):
    async with httpx.AsyncClient(base_url=server.base_url) as anonymous:
        rejected = await anonymous.get("/metrics")
    assert rejected.status_code == 401
    assert rejected.headers["content-type"] == "application/problem+json"

    async with server.async_client() as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"


async def test_metrics_openmetrics_on_request(api):
    response = await api.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert response.text.endswith("# EOF\n")


async def test_build_and_monitoring_figures(api):
    samples = await wait_for_scrape(
        api, lambda samples: value(samples, "corebase_monitor_rounds_total") >= 1, "a sampling round"
    )
    assert value(samples, "corebase_build_info", version=__version__) == 1
    assert value(samples, "corebase_monitor_leader") == 1
    assert value(samples, "corebase_monitor_last_round_seconds") > 0
    assert len(find(samples, "corebase_engine_event_reconnects_total")) == 1
    assert value(samples, "process_resident_memory_bytes") > 0


# --- containers ------------------------------------------------------------------------------


async def test_container_usage_and_state_series(api, test_image):
    name = "cbprom-" + secrets.token_hex(4)
    record = await start(api, test_image, name=name, command=["sleep", "600"], projectId="prom-project")
    ours = {"container_id": record["id"]}

    def sampled_twice(samples: list[Sample]) -> bool:
        # CPU use needs two readings, so it appears one round after memory.
        return bool(find(samples, "corebase_container_cpu_percent", **ours))

    samples = await wait_for_scrape(api, sampled_twice, f"CPU and memory series of {record['id']}")
    labels = {**ours, "name": name, "owner": "admin", "project": "prom-project", "template": ""}
    assert find(samples, "corebase_container_memory_bytes", **ours)[0].labels == labels
    assert value(samples, "corebase_container_memory_bytes", **ours) > 0
    assert value(samples, "corebase_container_memory_limit_bytes", **ours) == record["resources"]["memory"]
    assert value(samples, "corebase_container_cpu_percent", **ours) >= 0
    assert value(samples, "corebase_container_pids", **ours) >= 1
    assert len(find(samples, "corebase_container_network_receive_bytes_total", **ours)) == 1
    assert len(find(samples, "corebase_container_network_transmit_bytes_total", **ours)) == 1
    assert len(find(samples, "corebase_container_block_read_bytes_total", **ours)) == 1
    assert len(find(samples, "corebase_container_block_write_bytes_total", **ours)) == 1
    sampled_at = value(samples, "corebase_container_last_sample_timestamp_seconds", **ours)
    assert abs(time.time() - sampled_at) < WAIT_LIMIT
    assert value(samples, "corebase_container_state", **labels, state="running") == 1

    stopped = await api.post("/api/runtime/stop", json={"containerId": record["id"], "timeout": 0})
    assert stopped.status_code == 200, stopped.text
    samples = await scrape(api)
    assert [sample.labels["state"] for sample in find(samples, "corebase_container_state", **ours)] == ["exited"]
    assert find(samples, "corebase_container_memory_bytes", **ours) == []
    assert find(samples, "corebase_container_cpu_percent", **ours) == []


# --- requests and engine errors --------------------------------------------------------------


async def test_request_latency_by_route_template(server, api):
    missing = "ctr_" + secrets.token_hex(8)
    before = await scrape(api)

    for _ in range(3):
        assert (await api.get(f"/api/runtime/containers/{missing}")).status_code == 404
    async with httpx.AsyncClient(base_url=server.base_url) as anonymous:
        assert (await anonymous.get("/api/runtime/containers")).status_code == 401

    after = await scrape(api)
    count = "corebase_http_request_duration_seconds_count"
    not_found = {"method": "GET", "route": CONTAINER_ROUTE, "status": "404"}
    assert value(after, count, **not_found) - value(before, count, **not_found) == 3
    infinite = value(after, "corebase_http_request_duration_seconds_bucket", **not_found, le="+Inf")
    assert infinite == value(after, count, **not_found)
    rejected = {"method": "GET", "route": "/api/runtime/containers", "status": "401"}
    assert value(after, count, **rejected) - value(before, count, **rejected) == 1
    assert not [sample for sample in after if missing in sample.labels.get("route", "")]


async def test_engine_errors_counted_by_class(api):
    errors = "corebase_engine_errors_total"
    before = await scrape(api)

    # Nothing listens on this loopback port, so the pull fails without leaving the machine.
    image = f"127.0.0.1:{free_port()}/corebase-test/absent:1"
    failed = await api.post("/api/runtime/start", json=start_body(image))
    assert failed.status_code == 502, failed.text
    not_found = await api.get("/api/runtime/stats", params={"containerId": "ctr_" + secrets.token_hex(8)})
    assert not_found.status_code == 404

    after = await scrape(api)
    assert value(after, errors, error="ImagePullFailed") - value(before, errors, error="ImagePullFailed") == 1
    for error in ("EngineError", "EngineUnavailable", "EngineTimeout"):
        assert value(after, errors, error=error) == value(before, errors, error=error), error


# --- pools -----------------------------------------------------------------------------------


@pytest.fixture
async def template(api, toolbox_image) -> str:
    name = "cbprom-pool-" + secrets.token_hex(4)
    body = {
        "name": name,
        "image": toolbox_image,
        "command": ["sleep", "infinity"],
        "memory": "32m",
        "cpus": 0.25,
        "healthcheck": {"test": ["sh", "-c", "exit 0"], "interval": 0.2, "retries": 3},
    }
    assert (await api.post("/api/runtime/templates", json=body)).status_code == 201
    yield name
    await api.delete(f"/api/runtime/pools/{name}")


async def test_pool_figures(api, docker, template):
    configured = await api.put(
        f"/api/runtime/pools/{template}", json={"minIdle": 1, "maxIdle": 2, "maxTotal": 3, "idleTtl": 600}
    )
    assert configured.status_code == 200, configured.text
    ours = {"template": template}

    def one_idle(samples: list[Sample]) -> bool:
        return value(samples, "corebase_pool_members", **ours, state="idle") == 1

    samples = await wait_for_scrape(api, one_idle, f"one idle member in pool {template}")
    assert value(samples, "corebase_pool_min_idle", **ours) == 1
    assert value(samples, "corebase_pool_max_idle", **ours) == 2
    assert value(samples, "corebase_pool_max_total", **ours) == 3
    assert value(samples, "corebase_pool_target_idle", **ours) == 1
    assert value(samples, "corebase_pool_claims_total", **ours) == 0
    assert value(samples, "corebase_pool_claim_duration_seconds_count", **ours) == 0
    assert value(samples, "corebase_pool_cold_starts_total", **ours) == 0
    # Unclaimed members are pool figures only, never per-container series.
    engine_members = await docker.containers.list(filters={"label": [f"corebase.pool={template}"]})
    member_ids = {container._container["Labels"]["corebase.id"] for container in engine_members}
    assert member_ids
    container_ids = {sample.labels.get("container_id") for sample in samples}
    assert not member_ids & container_ids

    # The second start usually comes before the pool has a new idle member, so it is a cold
    # start. Either way the counters must match the sources the responses report.
    records = []
    for _ in range(2):
        response = await api.post("/api/runtime/start", json={"template": template, "projectId": "prom-pool"})
        assert response.status_code == 201, response.text
        records.append(response.json())
    sources = [record["source"] for record in records]
    assert sources[0] == "pool"

    samples = await scrape(api)
    assert value(samples, "corebase_pool_claims_total", **ours) == sources.count("pool")
    assert value(samples, "corebase_pool_claim_duration_seconds_count", **ours) == sources.count("pool")
    assert value(samples, "corebase_pool_claim_duration_seconds_bucket", **ours, le="+Inf") == sources.count("pool")
    assert value(samples, "corebase_pool_claim_duration_seconds_sum", **ours) > 0
    assert value(samples, "corebase_pool_cold_starts_total", **ours) == sources.count("cold")
    for record in records:
        state = find(samples, "corebase_container_state", container_id=record["id"])
        assert [(sample.labels["template"], sample.labels["state"]) for sample in state] == [(template, "running")]


# --- auth off, and two apps in one process ---------------------------------------------------


async def test_public_metrics_without_engine(tmp_path, docker_available):
    # Each server start takes seconds, so one process checks two cases. With prometheus_auth
    # off /metrics is public, and without an engine a start is counted as EngineUnavailable.
    env = {
        "COREBASE_MONITORING_PROMETHEUS_AUTH": "false",
        "COREBASE_DOCKER_URL": f"unix://{tmp_path}/no-engine.sock",
    }
    with run_server(tmp_path / "data", env=env) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as anonymous:
            response = await anonymous.get("/metrics")
            assert response.status_code == 200
            assert (await anonymous.get("/api/runtime/containers")).status_code == 401
            schema = (await anonymous.get("/schema/openapi.json")).json()
            assert schema["paths"]["/metrics"]["get"]["security"] == [{}]

        async with server.async_client() as client:
            failed = await client.post("/api/runtime/start", json={"image": "corebase-test/busybox:1"})
            assert failed.status_code == 503, failed.text
            samples = await scrape(client)
    assert value(samples, "corebase_engine_errors_total", error="EngineUnavailable") == 1
    assert value(samples, "corebase_engine_errors_total", error="ImagePullFailed") == 0


ADMIN_KEY = "cbk_prometheus_admin"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def in_process_settings(data_dir):
    environ = {"COREBASE_ADMIN_API_KEY": ADMIN_KEY}
    return load_settings(environ=environ, overrides={"server": {"data_dir": str(data_dir)}})


def health_requests(text: str) -> float:
    """The number of /health requests that a scrape's request histogram counts, over all statuses."""
    samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples]
    counts = find(samples, "corebase_http_request_duration_seconds_count", route="/health")
    return sum(sample.value for sample in counts)


async def test_metrics_reject_developer_key(tmp_path):
    async with AsyncTestClient(create_app(in_process_settings(tmp_path))) as client:
        _, developer_secret = await create_key("dev", "alice", "developer")
        forbidden = await client.get("/metrics", headers={"Authorization": f"Bearer {developer_secret}"})
        assert forbidden.status_code == 403
        assert forbidden.json()["requiredRole"] == "admin"
        assert (await client.get("/metrics", headers=ADMIN)).status_code == 200


async def test_apps_in_one_process_keep_own_figures(tmp_path):
    # Both apps would register the same metric names, which the global registry rejects.
    first = create_app(in_process_settings(tmp_path / "first"))
    second = create_app(in_process_settings(tmp_path / "second"))

    async with AsyncTestClient(first) as client:
        for _ in range(2):
            assert (await client.get("/health")).status_code in (200, 503)
        first_text = (await client.get("/metrics", headers=ADMIN)).text
    async with AsyncTestClient(second) as client:
        second_text = (await client.get("/metrics", headers=ADMIN)).text

    assert health_requests(first_text) == 2
    assert health_requests(second_text) == 0
