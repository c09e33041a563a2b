"""The example plugin, loaded by a real CoreBase server that the corebase pytest plugin starts.

The fixtures corebase_server, corebase_client and corebase_image come from the `corebase`
pytest plugin, which pytest loads because CoreBase is installed. pyproject.toml points the
busybox-httpd template at the local test image through the corebase_env ini option.
"""

from __future__ import annotations

import json
import time

import pytest

from corebase_example.policies import image_tag

# Seconds to wait for an alert to reach the notifier's file; the engine reports the exit at once.
ALERT_WAIT = 60.0


def test_plugin_is_listed(corebase_client):
    plugins = {plugin["name"]: plugin for plugin in corebase_client.get("/api/plugins").json()}

    example = plugins["corebase_example"]

    assert example["version"] == "0.1.0"
    assert set(example["hooks"]) == {"corebase_templates", "corebase_security_policies", "corebase_notifiers"}


def test_template_is_listed(corebase_client, corebase_image):
    templates = {template["name"]: template for template in corebase_client.get("/api/runtime/templates").json()}

    template = templates["busybox-httpd"]

    assert template["category"] == "static"
    assert template["image"] == corebase_image
    assert template["ports"] == [8080]


def test_template_starts_a_web_server(corebase_client):
    started = corebase_client.post("/api/runtime/start", json={"template": "busybox-httpd", "projectId": "example"})
    assert started.status_code == 201, started.text
    container = started.json()
    assert container["status"] == "running"

    page = fetch_page(corebase_client, container["id"])

    assert page == "hello from busybox-httpd\n"


def fetch_page(client, container_id: str) -> str:
    """Fetch the start page from inside the container, retrying while httpd starts."""
    body = {"containerId": container_id, "command": ["wget", "-q", "-O", "-", "http://127.0.0.1:8080/"]}
    deadline = time.monotonic() + 30
    while True:
        result = client.post("/api/runtime/exec", json=body).json()
        if result["exitCode"] == 0 or time.monotonic() > deadline:
            return result["stdout"]
        time.sleep(0.2)


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ("busybox", "names no tag"),
        ("busybox:latest", "uses the tag 'latest'"),
        ("localhost:5000/team/app", "names no tag"),
    ],
)
def test_policy_denies_unpinned_images(corebase_client, image, reason):
    evaluation = corebase_client.post("/api/policies/evaluate", json={"image": image}).json()

    verdict = policy_verdict(evaluation, "pinned-image-tag")

    assert evaluation["allowed"] is False
    assert verdict["allowed"] is False
    assert reason in verdict["reasons"][0]


@pytest.mark.parametrize(
    "image",
    ["busybox:1.36.1", "localhost:5000/team/app:2", "busybox@sha256:" + "a" * 64],
)
def test_policy_allows_pinned_images(corebase_client, image):
    evaluation = corebase_client.post("/api/policies/evaluate", json={"image": image}).json()

    verdict = policy_verdict(evaluation, "pinned-image-tag")

    assert verdict["allowed"] is True


def policy_verdict(evaluation: dict, name: str) -> dict:
    return next(verdict for verdict in evaluation["verdicts"] if verdict["policy"] == name)


def test_denied_start_creates_nothing(corebase_client):
    before = corebase_client.get("/api/runtime/containers").json()

    denied = corebase_client.post("/api/runtime/start", json={"image": "busybox:latest"})
    after = corebase_client.get("/api/runtime/containers").json()

    assert denied.status_code == 403
    assert [reason["policy"] for reason in denied.json()["reasons"]] == ["pinned-image-tag"]
    assert after == before


def test_image_tag_ignores_registry_port():
    assert image_tag("localhost:5000/app") is None
    assert image_tag("localhost:5000/app:3") == "3"


def test_notifier_rejects_a_path(corebase_client):
    rule = {"name": "exits", "metric": "exited_unexpectedly", "notifiers": [{"type": "jsonl", "file": "../escape"}]}

    response = corebase_client.post("/api/alerts/rules", json=rule)

    assert response.status_code == 422
    assert response.json()["field"] == "notifiers[0].file"


def test_notifier_writes_alerts(corebase_server, corebase_client, corebase_image):
    rule = {"name": "exits", "metric": "exited_unexpectedly", "notifiers": [{"type": "jsonl", "file": "exits.jsonl"}]}
    created = corebase_client.post("/api/alerts/rules", json=rule)
    assert created.status_code == 201, created.text

    body = {"image": corebase_image, "command": ["sh", "-c", "exit 3"], "projectId": "example"}
    started = corebase_client.post("/api/runtime/start", json=body)
    assert started.status_code == 201, started.text

    lines = wait_for_alerts(corebase_server.data_dir / "example-alerts" / "exits.jsonl", started.json()["id"])

    assert lines, f"no alert reached the file within {ALERT_WAIT} s"
    assert lines[0]["transition"] == "firing"
    assert lines[0]["rule"]["id"] == created.json()["id"]


def wait_for_alerts(path, container_id: str) -> list[dict]:
    """Return the lines of `path` about `container_id`, once there is one or ALERT_WAIT seconds have passed."""
    deadline = time.monotonic() + ALERT_WAIT
    while True:
        lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        matching = [line for line in lines if line["alert"]["containerId"] == container_id]
        if matching or time.monotonic() > deadline:
            return matching
        time.sleep(0.2)


def test_factory_server_takes_own_settings(corebase_server_factory):
    server = corebase_server_factory.start({"COREBASE_PLUGINS_DISABLED": "corebase_example"})

    with server.client() as client:
        plugins = {plugin["name"] for plugin in client.get("/api/plugins").json()}

    assert "corebase_example" not in plugins
    assert "corebase_docker" in plugins
