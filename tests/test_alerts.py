"""Alert rules end to end: a real server process, the real engine and a webhook receiver on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from aiohttp import web

from api_support import postgres_server, server_fixture, start_body
from corebase import db
from corebase.auth.keys import create_key
from corebase.settings import load_settings
from support.server import RunningServer

pytestmark = pytest.mark.engine

SERVER_ENV = {
    "COREBASE_MONITORING_INTERVAL": "1",
    "COREBASE_ALERTS_WEBHOOK_BACKOFF": "0.2",
    "COREBASE_ALERTS_WEBHOOK_HOSTS": "127.0.0.1",
    "COREBASE_ALERTS_WEBHOOK_TIMEOUT": "5",
}
SECRET = "test-secret-" + "x" * 16
# Seconds to wait for a state that depends on sampling rounds or engine events.
WAIT = 60.0
# Burns CPU in a child process, so `kill` from an exec stops the burning and leaves the container running.
BURNER = ["sh", "-c", "mkdir -p /tmp; (while :; do :; done) & echo $! > /tmp/burner; exec sleep 600"]
SLEEPER = ["sleep", "600"]


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory, docker_available) -> RunningServer:
    yield from server_fixture(tmp_path_factory, SERVER_ENV)


@pytest.fixture(scope="module")
async def pg_server(tmp_path_factory, docker_available, postgres_url) -> RunningServer:
    async for server in postgres_server(tmp_path_factory, postgres_url, SERVER_ENV):
        yield server


@pytest.fixture
async def api(sqlite_server) -> AsyncIterator[httpx.AsyncClient]:
    async with sqlite_server.async_client() as client:
        yield client


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 that responds with the status codes in `statuses` in turn, then 200."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    requests: asyncio.Queue = field(default_factory=asyncio.Queue)

    async def handle(self, request: web.Request) -> web.Response:
        await self.requests.put(Received(dict(request.headers), await request.read()))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    async def next(self) -> Received:
        return await asyncio.wait_for(self.requests.get(), WAIT)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    hook.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield hook
    finally:
        await runner.cleanup()


def webhook(receiver: Receiver) -> dict:
    return {"type": "webhook", "url": receiver.url, "secret": SECRET}


async def start(client: httpx.AsyncClient, image: str, command: list[str], **fields) -> dict:
    response = await client.post("/api/runtime/start", json=start_body(image, command=command, **fields))
    assert response.status_code == 201, response.text
    return response.json()


async def create_rule(client: httpx.AsyncClient, **fields) -> dict:
    response = await client.post("/api/alerts/rules", json=fields)
    assert response.status_code == 201, response.text
    return response.json()


async def wait_for_alert(client: httpx.AsyncClient, rule_id: str, state: str) -> dict:
    deadline = time.monotonic() + WAIT
    while True:
        page = (await client.get("/api/alerts", params={"ruleId": rule_id})).json()
        matching = [item for item in page["items"] if item["state"] == state]
        if matching:
            return matching[0]
        assert time.monotonic() < deadline, f"no {state} alert for rule {rule_id}; alerts: {page['items']}"
        await asyncio.sleep(0.2)


async def wait_for_deliveries(client: httpx.AsyncClient, alert_id: str, count: int) -> list[dict]:
    deadline = time.monotonic() + WAIT
    while True:
        deliveries = (await client.get(f"/api/alerts/{alert_id}/deliveries")).json()
        if len(deliveries) >= count or time.monotonic() > deadline:
            return deliveries
        await asyncio.sleep(0.2)


def assert_signed(received: Received) -> None:
    expected = "sha256=" + hmac.new(SECRET.encode(), received.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(received.headers["X-CoreBase-Signature"], expected)


@pytest.fixture(params=["sqlite", "postgres"])
def server(request) -> RunningServer:
    return request.getfixturevalue("sqlite_server" if request.param == "sqlite" else "pg_server")


async def test_cpu_rule_fires_and_resolves_with_signed_webhooks(server, receiver, test_image):
    async with server.async_client() as client:
        burner = await start(client, test_image, BURNER, cpus=0.5)
        rule = await create_rule(
            client,
            name="busy",
            metric="cpu_percent",
            comparator=">",
            threshold=20,
            duration=2,
            scope="container",
            scopeValue=burner["id"],
            notifiers=[webhook(receiver), {"type": "log"}],
        )

        pending = await wait_for_alert(client, rule["id"], "pending")
        assert pending["containerId"] == burner["id"]
        assert pending["firedAt"] is None

        firing_hook = await receiver.next()
        assert_signed(firing_hook)
        body = firing_hook.json()
        assert body["transition"] == "firing"
        assert body["alert"]["id"] == pending["id"]
        assert body["alert"]["state"] == "firing"
        assert body["alert"]["value"] > 20
        assert body["rule"]["id"] == rule["id"]
        assert "secret" not in body["rule"]["notifiers"][0]
        assert firing_hook.headers["X-CoreBase-Delivery"] == body["deliveryId"]
        assert firing_hook.headers["X-CoreBase-Transition"] == "firing"
        assert int(firing_hook.headers["X-CoreBase-Timestamp"]) > 0

        firing = await wait_for_alert(client, rule["id"], "firing")
        assert firing["id"] == pending["id"]

        stopped = await client.post(
            "/api/runtime/exec", json={"containerId": burner["id"], "command": ["sh", "-c", "kill $(cat /tmp/burner)"]}
        )
        assert stopped.json()["exitCode"] == 0

        resolved_hook = await receiver.next()
        assert_signed(resolved_hook)
        body = resolved_hook.json()
        assert body["transition"] == "resolved"
        assert body["alert"]["id"] == pending["id"]
        assert body["alert"]["value"] <= 20
        assert body["deliveryId"] != firing_hook.json()["deliveryId"]

        resolved = await wait_for_alert(client, rule["id"], "resolved")
        assert resolved["resolvedAt"] is not None
        assert resolved["firedAt"] is not None

        deliveries = await wait_for_deliveries(client, pending["id"], 4)
        assert sorted((item["notifier"], item["transition"], item["ok"]) for item in deliveries) == [
            ("log", "firing", True),
            ("log", "resolved", True),
            ("webhook", "firing", True),
            ("webhook", "resolved", True),
        ]
        webhook_targets = {item["target"] for item in deliveries if item["notifier"] == "webhook"}
        assert webhook_targets == {receiver.url}

        await client.post("/api/runtime/remove", json={"containerId": burner["id"], "force": True})
    assert f"alert {pending['id']} firing" in server.log()


async def test_memory_kill_fires_oom_rule(api, receiver, test_image):
    rule = await create_rule(api, name="oom", metric="oom_killed", notifiers=[webhook(receiver)])
    eater = await start(api, test_image, ["tail", "/dev/zero"], memory="16m")

    hook = await receiver.next()
    assert_signed(hook)
    body = hook.json()
    assert body["transition"] == "firing"
    assert body["alert"]["containerId"] == eater["id"]
    assert body["alert"]["metric"] == "oom_killed"
    alert = await wait_for_alert(api, rule["id"], "firing")
    assert "memory" in alert["message"]

    record = (await api.get(f"/api/runtime/containers/{eater['id']}")).json()
    assert record["oomKilled"] is True

    await api.post("/api/runtime/remove", json={"containerId": eater["id"], "force": True})
    resolved = await wait_for_alert(api, rule["id"], "resolved")
    assert resolved["id"] == alert["id"]
    assert "removed" in resolved["message"]
    assert (await receiver.next()).json()["transition"] == "resolved"
    await api.delete(f"/api/alerts/rules/{rule['id']}")


async def test_unexpected_exit_fires_but_stop_does_not(api, test_image):
    rule = await create_rule(api, name="exits", metric="exited_unexpectedly", notifiers=[{"type": "log"}])
    stopped = await start(api, test_image, SLEEPER)
    crashing = await start(api, test_image, ["sh", "-c", "sleep 1; exit 3"])
    await api.post("/api/runtime/stop", json={"containerId": stopped["id"], "timeout": 0})

    alert = await wait_for_alert(api, rule["id"], "firing")
    assert alert["containerId"] == crashing["id"]
    assert alert["value"] == 3
    # The stop's died event arrived before the crash's, so had it fired it would be listed by now.
    page = (await api.get("/api/alerts", params={"ruleId": rule["id"]})).json()
    assert [item["containerId"] for item in page["items"]] == [crashing["id"]]

    for container in (stopped, crashing):
        await api.post("/api/runtime/remove", json={"containerId": container["id"], "force": True})
    await api.delete(f"/api/alerts/rules/{rule['id']}")


async def test_restarts_in_a_row_fire_restart_loop(api, test_image):
    container = await start(api, test_image, SLEEPER)
    rule = await create_rule(
        api, name="loop", metric="restart_loop", threshold=3, window=120, scope="container", scopeValue=container["id"]
    )
    for _ in range(3):
        restarted = await api.post("/api/runtime/restart", json={"containerId": container["id"], "timeout": 0})
        assert restarted.status_code == 200, restarted.text

    alert = await wait_for_alert(api, rule["id"], "firing")
    assert alert["value"] >= 3
    assert "started" in alert["message"]
    await api.post("/api/runtime/remove", json={"containerId": container["id"], "force": True})


async def test_webhook_retries_until_the_receiver_accepts(api, receiver, test_image):
    receiver.statuses = [500, 500]
    rule = await create_rule(api, name="retry", metric="exited_unexpectedly", notifiers=[webhook(receiver)])
    crashing = await start(api, test_image, ["sh", "-c", "exit 7"])

    attempts = [await receiver.next() for _ in range(3)]
    assert len({item.headers["X-CoreBase-Delivery"] for item in attempts}) == 1
    for attempt in attempts:
        assert_signed(attempt)

    alert = await wait_for_alert(api, rule["id"], "firing")
    deliveries = await wait_for_deliveries(api, alert["id"], 3)
    assert [item["attempt"] for item in deliveries] == [1, 2, 3]
    assert [item["statusCode"] for item in deliveries] == [500, 500, 200]
    assert [item["ok"] for item in deliveries] == [False, False, True]
    assert "HTTP 500" in deliveries[0]["error"]
    await api.post("/api/runtime/remove", json={"containerId": crashing["id"], "force": True})
    await api.delete(f"/api/alerts/rules/{rule['id']}")


def valid_rule(**overrides) -> dict:
    return {"name": "busy", "metric": "cpu_percent", "comparator": ">", "threshold": 20, **overrides}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"comparator": "=>"}, "comparator"),
        ({"metric": "disk_io"}, "metric"),
        ({"notifiers": [{"type": "email", "to": "a@example.com"}]}, "notifiers[0].type"),
        ({"notifiers": [{"type": "webhook", "url": "not a url", "secret": SECRET}]}, "notifiers[0].url"),
        ({"notifiers": [{"type": "webhook", "url": "http://192.0.2.1/hook", "secret": SECRET}]}, "notifiers[0].url"),
        ({"scope": "container", "scopeValue": "ctr_missing"}, "scopeValue"),
        ({"metric": "restart_loop", "comparator": None, "threshold": 1}, "threshold"),
    ],
)
async def test_invalid_rule_is_422_and_stores_nothing(api, overrides, field):
    before = (await api.get("/api/alerts/rules")).json()
    response = await api.post("/api/alerts/rules", json=valid_rule(**overrides))
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["field"] == field
    assert problem["type"].endswith("/invalid-field")
    assert response.headers["content-type"].startswith("application/problem+json")
    assert (await api.get("/api/alerts/rules")).json() == before


async def test_wrong_type_is_400_naming_the_field(api):
    response = await api.post("/api/alerts/rules", json=valid_rule(threshold="high"))
    assert response.status_code == 400
    assert response.json()["field"] == "threshold"


async def test_rule_round_trip_hides_the_secret(api, receiver):
    created = await create_rule(api, **valid_rule(duration=5, severity="critical", notifiers=[webhook(receiver)]))
    assert created["id"].startswith("rule_")
    assert created["owner"] == "admin"
    assert created["window"] is None
    assert created["notifiers"] == [{"type": "webhook", "url": receiver.url, "secretSet": True}]
    assert SECRET not in json.dumps(created)

    fetched = (await api.get(f"/api/alerts/rules/{created['id']}")).json()
    assert fetched == created
    listed = (await api.get("/api/alerts/rules")).json()
    assert created["id"] in [item["id"] for item in listed]

    # The record as read, sent back: the secret stays because the url did not change.
    replaced = {key: fetched[key] for key in ("name", "metric", "comparator", "threshold", "duration", "scope", "severity")}
    replaced.update(threshold=80, notifiers=fetched["notifiers"])
    replaced["notifiers"][0].pop("secretSet")
    response = await api.put(f"/api/alerts/rules/{created['id']}", json=replaced)
    assert response.status_code == 200, response.text
    assert response.json()["threshold"] == 80
    assert response.json()["notifiers"][0]["secretSet"] is True
    assert response.json()["updatedAt"] > created["updatedAt"]

    assert (await api.delete(f"/api/alerts/rules/{created['id']}")).status_code == 204
    missing = await api.get(f"/api/alerts/rules/{created['id']}")
    assert missing.status_code == 404
    assert missing.json()["type"].endswith("/rule-not-found")
    assert missing.json()["ruleId"] == created["id"]


async def test_unknown_ids_are_404(api):
    for path in ("/api/alerts/rules/rule_nope", "/api/alerts/alr_nope", "/api/alerts/alr_nope/deliveries"):
        response = await api.get(path)
        assert response.status_code == 404, path
    assert (await api.put("/api/alerts/rules/rule_nope", json=valid_rule())).status_code == 404
    assert (await api.delete("/api/alerts/rules/rule_nope")).status_code == 404


async def test_history_filters(api):
    bad = await api.get("/api/alerts", params={"state": "burning"})
    assert bad.status_code == 422
    assert bad.json()["field"] == "state"
    page = (await api.get("/api/alerts", params={"state": "firing", "limit": 1})).json()
    assert page["limit"] == 1
    assert len(page["items"]) <= 1
    assert all(item["state"] == "firing" for item in page["items"])


async def developer_key(server: RunningServer, user: str) -> str:
    """Create a developer API key in the server's SQLite database; no endpoint creates keys."""
    settings = load_settings(environ={}, overrides={"server": {"data_dir": str(server.data_dir)}})
    engine = await db.connect(settings)
    try:
        _, secret = await create_key(f"{user} (test)", user, "developer")
    finally:
        await db.disconnect(engine)
    return secret


async def test_rules_and_alerts_are_private(sqlite_server, api, test_image):
    admin_container = await start(api, test_image, SLEEPER)
    admin_rule = await create_rule(api, **valid_rule(name="admin's"))

    async with sqlite_server.async_client(await developer_key(sqlite_server, "alice")) as alice:
        assert (await alice.get(f"/api/alerts/rules/{admin_rule['id']}")).status_code == 404
        assert (await alice.delete(f"/api/alerts/rules/{admin_rule['id']}")).status_code == 404
        assert admin_rule["id"] not in [item["id"] for item in (await alice.get("/api/alerts/rules")).json()]

        on_admin_container = await alice.post(
            "/api/alerts/rules", json=valid_rule(scope="container", scopeValue=admin_container["id"])
        )
        assert on_admin_container.status_code == 422
        assert on_admin_container.json()["field"] == "scopeValue"

        alice_rule = await create_rule(alice, **valid_rule(name="alice's"))
        assert alice_rule["owner"] == "alice"
        assert (await alice.get("/api/alerts")).json()["items"] == []

    assert alice_rule["id"] in [item["id"] for item in (await api.get("/api/alerts/rules")).json()]
    assert (await api.delete(f"/api/alerts/rules/{alice_rule['id']}")).status_code == 204
    await api.delete(f"/api/alerts/rules/{admin_rule['id']}")
    await api.post("/api/runtime/remove", json={"containerId": admin_container["id"], "force": True})
