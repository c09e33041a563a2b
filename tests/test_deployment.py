"""docker-compose.yml is valid for the compose tool, and keeps the API on the host's loopback address.

The tests only run `config`, which reads and checks the file: they start, pull and build nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from corebase.testing.services import require_service

ROOT = Path(__file__).parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"


def compose_command() -> list[str]:
    """Return `docker compose` when the Compose plugin is there, else `docker-compose`; skip or fail without either."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    require_service(
        "The compose tool",
        "neither `docker compose` nor `docker-compose` is installed; run scripts/services.sh install as root "
        "or apt-get install docker-compose",
    )


def run_config(env: dict[str, str]) -> subprocess.CompletedProcess:
    # Only PATH and the given variables, so the developer's own COREBASE_* or DOCKER_GID cannot hide a problem.
    return subprocess.run(
        [*compose_command(), "--file", str(COMPOSE_FILE), "config"],
        env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def config() -> subprocess.CompletedProcess:
    """The output of `config` with the one variable the file requires."""
    return run_config({"DOCKER_GID": "999"})


def test_compose_file_is_valid(config):
    assert config.returncode == 0, config.stderr
    assert "127.0.0.1" in config.stdout


def test_compose_names_missing_docker_gid():
    result = run_config({})

    assert result.returncode != 0
    assert "DOCKER_GID" in result.stderr


@pytest.mark.parametrize("service", ["corebase", "postgres", "redis"])
def test_compose_defines_service(config, service):
    services = config.stdout.partition("services:")[2]

    assert f"\n  {service}:\n" in services
