"""The pytest plugin for plugin authors, run through pytester as a plugin package's test suite would run it."""

from __future__ import annotations

import json

import aiodocker
import pytest

from api_support import RUN_ID, RUN_LABEL

pytest_plugins = ["pytester"]

# A plugin author's test file: it starts a container through the server and records what it used.
AUTHOR_TESTS = """
import json
import os

RECORD = os.environ["PLUGIN_TEST_RECORD"]
LABELS = json.loads(os.environ["PLUGIN_TEST_LABELS"])


def test_server_serves_and_starts_containers(corebase_server, corebase_client, corebase_image):
    plugins = corebase_client.get("/api/plugins").json()
    assert "corebase_docker" in {plugin["name"] for plugin in plugins}

    python = corebase_client.get("/api/runtime/templates/python").json()
    assert python["image"] == corebase_image

    body = {"image": corebase_image, "command": ["sleep", "300"], "labels": LABELS}
    started = corebase_client.post("/api/runtime/start", json=body)
    assert started.status_code == 201, started.text

    with open(RECORD, "w") as handle:
        json.dump({"id": started.json()["id"], "networkPrefix": corebase_server.network_prefix}, handle)
"""


def run_author_tests(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=300)


def test_invalid_env_entry_is_a_usage_error(pytester):
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = run_author_tests(pytester, "--corebase-env", "MONITORING_INTERVAL=1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*invalid corebase_env entry 'MONITORING_INTERVAL=1'*COREBASE_*"])


def test_fixtures_are_listed(pytester):
    result = run_author_tests(pytester, "--fixtures")
    for fixture in ("corebase_engine", "corebase_image", "corebase_server", "corebase_client", "corebase_server_factory"):
        result.stdout.fnmatch_lines([f"{fixture} *pytest_plugin.py*"])


@pytest.mark.engine
async def test_author_suite_runs_and_cleans_up(pytester, test_image, monkeypatch):
    record = pytester.path / "record.json"
    monkeypatch.setenv("PLUGIN_TEST_RECORD", str(record))
    # The session's own clean-up also removes a container that carries this run's label.
    monkeypatch.setenv("PLUGIN_TEST_LABELS", json.dumps({RUN_LABEL: RUN_ID}))
    pytester.makeini(
        f"""
        [pytest]
        corebase_image = {test_image}
        corebase_env =
            COREBASE_TEMPLATES_IMAGES=python={{image}}
        """
    )
    pytester.makepyfile(test_author=AUTHOR_TESTS)

    result = run_author_tests(pytester)

    assert result.ret == pytest.ExitCode.OK, str(result.stdout) + str(result.stderr)
    result.assert_outcomes(passed=1)
    started = json.loads(record.read_text())
    docker = aiodocker.Docker()
    try:
        left = await docker.containers.list(all=True, filters={"label": [f"corebase.id={started['id']}"]})
        networks = [
            network["Name"]
            for network in await docker.networks.list()
            if network["Name"].startswith(started["networkPrefix"] + "-")
        ]
    finally:
        await docker.close()
    assert left == []
    assert networks == []


def test_ci_makes_missing_engine_fail(pytester, monkeypatch):
    # An engine address nothing listens on stands in for a machine without an engine.
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
    monkeypatch.setenv("CI", "true")
    pytester.makepyfile("def test_needs_engine(corebase_server):\n    pass\n")
    result = run_author_tests(pytester)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*Docker Engine is not available*CI=true*"])


def test_missing_engine_skips_outside_ci(pytester, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile("def test_needs_engine(corebase_image):\n    pass\n")
    result = run_author_tests(pytester, "-rs")
    result.assert_outcomes(skipped=1)
