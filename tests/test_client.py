"""The Python client (corebase.client) against a real `corebase serve` on the real engine, sync and async."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from api_support import RUN_ID, RUN_LABEL, remove_server_containers, server_fixture, toolbox_template_env
from corebase import errors as server_errors
from corebase.api.schemas import ContainerPage, ContainerRecord, ExecRecord, HealthRecord, StatsHistory, StatsRecord
from corebase.client import (
    AsyncClient,
    Client,
    ConfigurationError,
    Conflict,
    ConnectionFailed,
    EngineUnavailable,
    Forbidden,
    NotFound,
    PolicyDenied,
    QuotaExceeded,
    RateLimited,
    ServerError,
    Unauthorized,
    ValidationError,
)
from corebase.client import errors as client_errors
from corebase.client.config import Profile, resolve, save_profile
from corebase.client.containers import LogChunk
from support.proxy import EngineProxy
from support.server import RunningServer, free_port, run_server

pytestmark = pytest.mark.engine

ROOT = Path(__file__).parent.parent
LABELS = {RUN_LABEL: RUN_ID}
# Prints one line on each stream, then idles, so exec, logs and stats have something to read.
CHATTY = ["sh", "-c", "echo out-line; echo err-line >&2; exec sleep 600"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, docker_available, toolbox_image) -> RunningServer:
    # Built-in templates run the local toolbox image, so the documentation's template examples work.
    for running in server_fixture(tmp_path_factory, toolbox_template_env(toolbox_image)):
        yield running
        asyncio.run(remove_server_containers(running.data_dir))


@pytest.fixture
def client(server) -> Client:
    with Client(server.base_url, server.admin_key) as sync_client:
        yield sync_client


@pytest.fixture
async def async_client(server) -> AsyncClient:
    async with AsyncClient(server.base_url, server.admin_key) as client:
        yield client


def developer_key(client: Client, role: str = "developer") -> str:
    """Create a user with `role` and return a key of theirs."""
    name = f"sdk-{role}-{secrets.token_hex(3)}"
    client.users.create(name, role=role)
    return client.keys.create("tests", user=name).secret


# --- containers ----------------------------------------------------------------------------------


def test_sync_container_lifecycle(client, test_image):
    project = "sdk-" + secrets.token_hex(3)
    record = client.containers.start(
        test_image,
        command=CHATTY,
        project_id=project,
        env={"GREETING": "hello"},
        labels=LABELS,
        memory="64m",
        ports={8080: None},
        idempotency_key=secrets.token_hex(8),
    )
    try:
        assert isinstance(record, ContainerRecord)
        assert record.status == "running"
        assert record.project_id == project
        assert record.resources.memory == 64 * 1024**2
        assert record.ports[0].container_port == 8080

        assert client.containers.get(record.name).id == record.id
        page = client.containers.list(project_id=project)
        assert isinstance(page, ContainerPage)
        assert [item.id for item in page.items] == [record.id]

        result = client.containers.exec(record.id, ["sh", "-c", 'echo "$GREETING"; echo oops >&2; exit 3'])
        assert isinstance(result, ExecRecord)
        assert result.exit_code == 3
        assert result.stdout == "hello\n"
        assert result.stderr == "oops\n"

        chunks = list(client.containers.logs(record.id))
        assert LogChunk(stream="stdout", text="out-line\n") in chunks
        assert LogChunk(stream="stderr", text="err-line\n") in chunks
        stdout_only = list(client.containers.logs(record.id, stderr=False))
        assert {chunk.stream for chunk in stdout_only} == {"stdout"}

        stats = client.containers.stats(record.id)
        assert isinstance(stats, StatsRecord)
        assert stats.memory_limit_bytes == 64 * 1024**2
        history = client.containers.stats_history(record.id)
        assert isinstance(history, StatsHistory)
        assert history.container_id == record.id

        assert client.containers.stop(record.id, timeout=1).status == "exited"
        assert client.containers.restart(record.id, timeout=1).status == "running"
    finally:
        removed = client.containers.remove(record.id, force=True)
    assert removed.status == "removed"


async def test_async_container_lifecycle(async_client, test_image):
    record = await async_client.containers.start(test_image, command=CHATTY, labels=LABELS, name="sdk-" + secrets.token_hex(4))
    try:
        assert record.status == "running"
        assert (await async_client.containers.get(record.id)).name == record.name

        result = await async_client.containers.exec(record.id, ["echo", "async"])
        assert result.exit_code == 0
        assert result.stdout == "async\n"

        chunks = [chunk async for chunk in async_client.containers.logs(record.id, tail=5, stdout=False)]
        assert chunks == [LogChunk(stream="stderr", text="err-line\n")]

        stats = await async_client.containers.stats(record.id)
        assert stats.container_id == record.id
        stopped = await async_client.containers.stop(record.id, timeout=1)
        assert stopped.status == "exited"
    finally:
        await async_client.containers.remove(record.id, force=True)


FINITE = ["sh", "-c", "for i in 1 2 3; do echo line-$i; sleep 0.3; done"]


def test_sync_logs_follow_until_exit(client, test_image):
    record = client.containers.start(test_image, command=FINITE, labels=LABELS)
    try:
        text = "".join(chunk.text for chunk in client.containers.logs(record.id, follow=True))
        assert text == "line-1\nline-2\nline-3\n"
    finally:
        client.containers.remove(record.id, force=True)


async def test_async_logs_follow_until_exit(async_client, test_image):
    record = await async_client.containers.start(test_image, command=FINITE, labels=LABELS)
    try:
        chunks = [chunk async for chunk in async_client.containers.logs(record.id, follow=True)]
        assert "".join(chunk.text for chunk in chunks) == "line-1\nline-2\nline-3\n"
        assert {chunk.stream for chunk in chunks} == {"stdout"}
    finally:
        await async_client.containers.remove(record.id, force=True)


def test_iterate_walks_every_page(client, test_image):
    project = "pages-" + secrets.token_hex(3)
    started = [
        client.containers.start(test_image, command=["sleep", "600"], project_id=project, labels=LABELS) for _ in range(3)
    ]
    try:
        walked = [record.id for record in client.containers.iterate(project_id=project, limit=2)]
        assert sorted(walked) == sorted(record.id for record in started)
        assert client.containers.list(project_id=project, limit=2).total == 3
    finally:
        for record in started:
            client.containers.remove(record.id, force=True)


async def test_async_iterate_walks_every_page(async_client, test_image):
    project = "apages-" + secrets.token_hex(3)
    started = [
        await async_client.containers.start(test_image, command=["sleep", "600"], project_id=project, labels=LABELS)
        for _ in range(2)
    ]
    try:
        walked = [record.id async for record in async_client.containers.iterate(project_id=project, limit=1)]
        assert sorted(walked) == sorted(record.id for record in started)
    finally:
        for record in started:
            await async_client.containers.remove(record.id, force=True)


# --- errors --------------------------------------------------------------------------------------


def test_unknown_container_is_not_found(client):
    with pytest.raises(NotFound) as caught:
        client.containers.get("ctr_0000000000000000")
    assert caught.value.status == 404
    assert caught.value.slug == "container-not-found"
    assert caught.value.problem["containerId"] == "ctr_0000000000000000"


async def test_async_unknown_container_is_not_found(async_client):
    with pytest.raises(NotFound):
        await async_client.containers.exec("ctr_0000000000000000", ["true"])


def test_invalid_field_names_the_field(client, test_image):
    with pytest.raises(ValidationError) as caught:
        client.containers.start(test_image, memory="12", labels=LABELS)
    assert caught.value.status == 422
    assert caught.value.field == "memory"
    assert "6m" in caught.value.detail


def test_undecodable_body_is_a_validation_error(client):
    with pytest.raises(ValidationError) as caught:
        client.templates.create({"name": "bad-types", "image": "busybox", "cpus": "many"})
    assert caught.value.status == 400
    assert caught.value.field == "cpus"


def test_policy_denial_lists_reasons(client, test_image):
    with pytest.raises(PolicyDenied) as caught:
        client.containers.start(test_image, volumes=["/etc:/host-etc"], labels=LABELS)
    assert caught.value.status == 403
    assert [reason["policy"] for reason in caught.value.reasons] == ["no-host-mounts"]
    assert isinstance(caught.value, Forbidden)


def test_name_in_use_is_a_conflict(client, test_image):
    name = "taken-" + secrets.token_hex(3)
    record = client.containers.start(test_image, command=["sleep", "600"], name=name, labels=LABELS)
    try:
        with pytest.raises(Conflict) as caught:
            client.containers.start(test_image, command=["sleep", "600"], name=name, labels=LABELS)
        assert caught.value.slug == "name-in-use"
    finally:
        client.containers.remove(record.id, force=True)


def test_wrong_key_is_unauthorized(server):
    with Client(server.base_url, "cbk_wrong") as wrong:
        with pytest.raises(Unauthorized) as caught:
            wrong.containers.list()
    assert caught.value.status == 401


def test_viewer_start_is_forbidden(server, client, test_image):
    with Client(server.base_url, developer_key(client, role="viewer")) as viewer:
        assert viewer.containers.list().total >= 0
        with pytest.raises(Forbidden) as caught:
            viewer.containers.start(test_image, labels=LABELS)
    assert type(caught.value) is Forbidden


def test_quota_exceeded_names_the_quota(server, client, test_image):
    key = developer_key(client)
    user = Client(server.base_url, key)
    try:
        name = user.quotas.me().user
        client.quotas.set(name, max_container_memory="32m")
        with pytest.raises(QuotaExceeded) as caught:
            user.containers.start(test_image, memory="64m", labels=LABELS)
        assert caught.value.quota == "maxContainerMemory"
        assert caught.value.limit == 32 * 1024**2
        assert user.containers.list().total == 0
    finally:
        user.close()


def test_refused_connection_is_connection_failed():
    with Client(f"http://127.0.0.1:{free_port()}", "cbk_any") as nowhere:
        with pytest.raises(ConnectionFailed) as caught:
            nowhere.health()
    assert "cannot connect to CoreBase" in str(caught.value)


# The client class that a problem of each status must be, or be a subclass of.
CLASS_OF_STATUS = {
    400: ValidationError,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: client_errors.TooLarge,
    422: ValidationError,
    429: RateLimited,
}


def test_every_server_problem_maps_to_its_class():
    pending, server_classes = [server_errors.ApiError], []
    while pending:
        cls = pending.pop()
        server_classes.append(cls)
        pending.extend(cls.__subclasses__())

    for server_class in server_classes:
        mapped = client_errors.error_class(server_class.status, server_errors.PROBLEM_TYPE_BASE + server_class.slug)
        expected = CLASS_OF_STATUS.get(server_class.status, ServerError)
        assert issubclass(mapped, expected), f"{server_class.__name__} maps to {mapped.__name__}"


@pytest.mark.parametrize(
    ("status", "problem_type", "expected"),
    [
        (403, "https://corebase.dev/problems/policy-denied", PolicyDenied),
        (403, "https://corebase.dev/problems/quota-exceeded", QuotaExceeded),
        (404, "https://corebase.dev/problems/image-not-found", NotFound),
        (503, "https://corebase.dev/problems/engine-unavailable", EngineUnavailable),
        (400, "https://corebase.dev/problems/invalid-request", ValidationError),
        (429, "https://corebase.dev/problems/too-many-requests", RateLimited),
        (503, "about:blank", EngineUnavailable),
        (500, None, ServerError),
        (418, None, client_errors.ApiError),
    ],
)
def test_problem_type_picks_the_class(status, problem_type, expected):
    assert client_errors.error_class(status, problem_type) is expected


# --- an engine outage and rate limits ------------------------------------------------------------


@pytest.fixture(scope="module")
def outage_server(tmp_path_factory, docker_available):
    """A server behind an engine proxy that a test can cut, with a small rate limit per key."""
    directory = tmp_path_factory.mktemp("outage")
    proxy = EngineProxy(directory / "engine.sock").start()
    env = {
        "COREBASE_DOCKER_URL": proxy.url,
        "COREBASE_RATE_LIMIT_REQUESTS_PER_MINUTE": "60",
        "COREBASE_RATE_LIMIT_BURST": "5",
    }
    try:
        with run_server(directory / "data", env=env) as running:
            yield running, proxy
    finally:
        proxy.stop()


def test_engine_outage_is_engine_unavailable(outage_server, test_image):
    server, proxy = outage_server
    with Client(server.base_url, server.admin_key) as admin:
        proxy.refuse()
        try:
            health = admin.health()
            with pytest.raises(EngineUnavailable) as caught:
                admin.containers.start(test_image, labels=LABELS)
        finally:
            proxy.accept()
        assert admin.containers.list(status="failed").total == 0
    assert isinstance(health, HealthRecord)
    assert health.status == "degraded"
    assert health.engine.ok is False
    assert caught.value.status == 503
    assert caught.value.retry_after is not None


async def test_rate_limit_gives_retry_after(outage_server):
    server, _ = outage_server
    with Client(server.base_url, server.admin_key) as admin:
        key = admin.keys.create("burst-" + secrets.token_hex(3)).secret
    async with AsyncClient(server.base_url, key) as limited:
        with pytest.raises(RateLimited) as caught:
            for _ in range(50):
                await limited.quotas.me()
    assert caught.value.status == 429
    assert caught.value.retry_after >= 1


# --- the other resources -------------------------------------------------------------------------


def test_templates_and_pools(client, toolbox_image):
    name = "sdk-tpl-" + secrets.token_hex(3)
    created = client.templates.create({"name": name, "image": toolbox_image, "command": ["sleep", "600"], "memory": "64m"})
    try:
        assert created.version == 1
        assert created.memory == 64 * 1024**2
        assert name in [template.name for template in client.templates.list(category="custom")]
        updated = client.templates.update(name, {"image": toolbox_image, "command": ["sleep", "601"]})
        assert updated.version == 2
        assert client.templates.get(name, version=1).command == ["sleep", "600"]

        # No idle member is wanted, so the pool starts nothing on the engine.
        pool = client.pools.set(name, min_idle=0, max_idle=0, max_total=1, idle_ttl=60)
        assert (pool.min_idle, pool.max_total, pool.idle_ttl) == (0, 1, 60)
        assert client.pools.get(name).template == name
        assert name in [item.template for item in client.pools.list()]
        assert client.pools.delete(name) is None
        with pytest.raises(NotFound):
            client.pools.get(name)
    finally:
        client.templates.delete(name, force=True)
    with pytest.raises(NotFound):
        client.templates.get(name)


async def test_users_keys_and_quotas(server, async_client):
    name = "sdk-user-" + secrets.token_hex(3)
    user = await async_client.users.create(name, role="viewer")
    assert user.role == "viewer"
    assert (await async_client.users.update(name, role="developer")).role == "developer"
    assert name in [item.name for item in await async_client.users.list()]

    created = await async_client.keys.create("laptop", scopes=["read"], expires_in=3600, user=name)
    assert created.secret.startswith("cbk_")
    assert created.scopes == ["read"]
    assert created.id in [key.id for key in await async_client.keys.list(user=name)]
    async with AsyncClient(server.base_url, created.secret) as own:
        assert (await own.quotas.me()).user == name

    quota = await async_client.quotas.set(name, max_containers=2, max_memory="1g")
    assert quota.limits.max_containers == 2
    assert quota.overrides.max_memory == 1024**3
    assert (await async_client.quotas.get(name)).overrides.max_containers == 2
    await async_client.quotas.delete(name)
    assert (await async_client.quotas.get(name)).overrides.max_containers is None

    revoked = await async_client.keys.revoke(created.id)
    assert revoked.revoked_at is not None
    async with AsyncClient(server.base_url, created.secret) as own:
        with pytest.raises(Unauthorized):
            await own.quotas.me()

    disabled = await async_client.users.update(name, disabled=True)
    assert disabled.disabled_at is not None


def test_alert_rules_alerts_and_audit(client):
    rule = client.alerts.rules.create("sdk memory", "memory_percent", comparator=">", threshold=90, duration=30)
    try:
        assert rule.metric == "memory_percent"
        assert client.alerts.rules.get(rule.id).threshold == 90
        changed = client.alerts.rules.update(rule.id, "sdk memory", "memory_percent", comparator=">", threshold=95)
        assert changed.threshold == 95
        assert rule.id in [item.id for item in client.alerts.rules.list()]
        assert client.alerts.list(rule_id=rule.id).total == 0
        assert list(client.alerts.iterate(rule_id=rule.id)) == []
    finally:
        client.alerts.rules.delete(rule.id)

    page = client.audit.list(action="alerts.*", limit=2)
    assert page.total >= 1
    records = list(client.audit.iterate(actor="admin", limit=5))
    assert len(records) >= page.total


async def test_system_calls(async_client):
    health = await async_client.health()
    assert health.status == "ok"
    assert "corebase_docker" in [plugin.name for plugin in await async_client.plugins()]
    assert (await async_client.monitoring()).enabled in (True, False)


# --- configuration -------------------------------------------------------------------------------


def test_client_reads_the_environment(server, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("COREBASE_URL", server.base_url)
    monkeypatch.setenv("COREBASE_API_KEY", server.admin_key)
    with Client() as client:
        assert client.config.url == server.base_url
        assert client.quotas.me().user == "admin"


def test_client_reads_a_stored_profile(server, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("COREBASE_URL", raising=False)
    monkeypatch.delenv("COREBASE_API_KEY", raising=False)
    save_profile("work", Profile(url=server.base_url, key=server.admin_key))
    with Client(profile="work") as client:
        assert client.config.profile == "work"
        assert client.quotas.me().user == "admin"
    path = tmp_path / "corebase" / "config.toml"
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("arguments", "environ", "expected"),
    [
        ({}, {"COREBASE_API_KEY": "env-key"}, ("http://stored:1", "env-key", "default")),
        ({}, {}, ("http://stored:1", "stored-key", "default")),
        ({"api_key": "arg-key"}, {"COREBASE_API_KEY": "env-key"}, ("http://stored:1", "arg-key", "default")),
        ({"url": "http://other:2/"}, {"COREBASE_API_KEY": "env-key"}, ("http://other:2", "env-key", None)),
        ({}, {"COREBASE_URL": "http://stored:1/", "COREBASE_API_KEY": "env-key"}, ("http://stored:1", "env-key", None)),
        ({}, {"COREBASE_URL": "http://stored:1"}, ("http://stored:1", "stored-key", "default")),
        ({"profile": "work"}, {"COREBASE_URL": "http://x:3", "COREBASE_API_KEY": "k"}, ("http://work:4", "work-key", "work")),
        ({}, {"COREBASE_PROFILE": "work"}, ("http://work:4", "work-key", "work")),
    ],
)
def test_configuration_order(tmp_path, arguments, environ, expected):
    path = tmp_path / "config.toml"
    save_profile("default", Profile(url="http://stored:1", key="stored-key"), path)
    save_profile("work", Profile(url="http://work:4", key="work-key"), path)
    config = resolve(**arguments, environ=environ, path=path)
    assert (config.url, config.api_key, config.profile) == expected


def test_default_url_without_profiles(tmp_path):
    config = resolve(environ={"COREBASE_API_KEY": "env-key"}, path=tmp_path / "config.toml")
    assert config.url == "http://127.0.0.1:8420"
    assert config.profile is None


@pytest.mark.parametrize(
    ("arguments", "environ", "message"),
    [
        ({"url": "http://elsewhere:9"}, {}, "no API key"),
        ({"profile": "missing"}, {}, "no profile 'missing'"),
        ({}, {"COREBASE_PROFILE": "missing"}, "COREBASE_PROFILE names the profile 'missing'"),
        ({"url": "ftp://host", "api_key": "k"}, {}, "invalid server URL"),
        ({"profile": "bad name"}, {}, "invalid profile name"),
    ],
)
def test_configuration_errors(tmp_path, arguments, environ, message):
    path = tmp_path / "config.toml"
    # The stored key belongs to http://stored:1 and is never sent to another URL.
    save_profile("default", Profile(url="http://stored:1", key="stored-key"), path)
    with pytest.raises(ConfigurationError) as caught:
        resolve(**arguments, environ=environ, path=path)
    assert message in str(caught.value)


def test_broken_profile_file_names_the_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[profiles.default]\nurl = 3\n")
    with pytest.raises(ConfigurationError) as caught:
        resolve(environ={}, path=path)
    assert str(path) in str(caught.value)


def test_profile_values_round_trip(tmp_path):
    path = tmp_path / "config.toml"
    key = 'cbk_"quoted"\\back ünïcode'
    save_profile("default", Profile(url="http://127.0.0.1:1", key=key, user="ann"), path)
    assert resolve(environ={}, path=path).api_key == key


# --- the documentation's examples ----------------------------------------------------------------


def sdk_examples() -> list[str]:
    text = (ROOT / "docs" / "sdk.md").read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_docs_have_examples():
    assert len(sdk_examples()) >= 4


@pytest.mark.parametrize("index", range(len(sdk_examples())))
def test_docs_example_runs(server, tmp_path, index):
    env = {name: value for name, value in os.environ.items() if not name.startswith("COREBASE_")}
    env.update(COREBASE_URL=server.base_url, COREBASE_API_KEY=server.admin_key, XDG_CONFIG_HOME=str(tmp_path))
    script = tmp_path / f"example_{index}.py"
    script.write_text(sdk_examples()[index], encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"example {index} failed:\n{result.stdout}\n{result.stderr}"

