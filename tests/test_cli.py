"""The `corebase` command: start-up errors, `migrate`, and migrations from an installed wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
MIGRATIONS = len(list((ROOT / "migrations").glob("corebase_*.py")))
APPLIED_ALL = f"applied {MIGRATIONS} migration(s)"
# Port 1 on loopback refuses connections; the password must never appear in a message.
UNREACHABLE_DATABASE = "postgresql://corebase:hunter2@127.0.0.1:1/corebase"


def corebase(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, pythonpath: str | None = None):
    process_env = {name: value for name, value in os.environ.items() if not name.startswith("COREBASE_")}
    process_env.update(env or {})
    if pythonpath is not None:
        process_env["PYTHONPATH"] = pythonpath
    return subprocess.run(
        [sys.executable, "-m", "corebase", *args],
        env=process_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"COREBASE_SERVER_PORT": "http"}, "invalid setting server.port (variable COREBASE_SERVER_PORT)"),
        ({"COREBASE_DOCKER_PULL_POLICY": "often"}, "allowed: always, missing, never"),
        ({"COREBASE_DATABASE_URL": "mysql://localhost/db"}, "unsupported scheme 'mysql'"),
    ],
)
def test_invalid_setting_stops_start_up(tmp_path, env, expected):
    result = corebase("serve", "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_runtime_stops_start_up(tmp_path):
    result = corebase("serve", "--data-dir", str(tmp_path), env={"COREBASE_PLUGINS_DISABLED": "corebase_docker"})
    assert result.returncode == 2
    assert "no plugin provides a container runtime" in result.stderr


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"COREBASE_REDIS_URL": "redis://user:hunter2@127.0.0.1:1/0"}, "cannot connect to Redis at redis://user:***@127.0.0.1:1/0"),
        ({"COREBASE_DATABASE_AUTO_MIGRATE": "false"}, "database migration(s) are pending"),
        ({"COREBASE_DATABASE_URL": UNREACHABLE_DATABASE}, "cannot open the database postgresql://127.0.0.1:1/corebase"),
    ],
)
def test_start_up_failure_prints_the_reason(tmp_path, env, expected):
    result = corebase("serve", "--data-dir", str(tmp_path), "--port", "0", env=env)
    assert result.returncode != 0
    assert "CoreBase could not start: " in result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr


@pytest.mark.parametrize("command", [("migrate",), ("audit", "verify")])
def test_unreachable_database_is_one_line(tmp_path, command):
    result = corebase(*command, "--data-dir", str(tmp_path), env={"COREBASE_DATABASE_URL": UNREACHABLE_DATABASE})
    assert result.returncode == 2
    assert "corebase: cannot open the database postgresql://127.0.0.1:1/corebase" in result.stderr
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr


def test_migrate_is_idempotent(tmp_path):
    first = corebase("migrate", "--data-dir", str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert APPLIED_ALL in first.stdout
    second = corebase("migrate", "--data-dir", str(tmp_path))
    assert second.returncode == 0
    assert "up to date" in second.stdout
    assert (tmp_path / "corebase.sqlite").exists()


@pytest.mark.postgres
async def test_migrate_on_postgres(postgres_url):
    from api_support import create_postgres_database, drop_postgres_database

    database_url = await create_postgres_database(postgres_url)
    try:
        result = corebase("migrate", env={"COREBASE_DATABASE_URL": database_url})
        assert result.returncode == 0, result.stderr
        assert APPLIED_ALL in result.stdout
    finally:
        await drop_postgres_database(postgres_url, database_url)


def test_migrations_run_from_an_installed_wheel(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if build.returncode != 0 and "hatchling" in build.stderr:
        build = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(ROOT)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("corebase-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(name.startswith("corebase/migrations/corebase_") for name in names)
    assert "corebase_docker/__init__.py" in names

    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)

    # Run from an unrelated directory with the unpacked wheel first on the path, so neither the
    # source tree nor its migrations folder can be found.
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    check = subprocess.run(
        [sys.executable, "-c", "import corebase.piccolo_app as app; print(app.migrations_folder())"],
        env={**os.environ, "PYTHONPATH": str(site)},
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    assert check.stdout.strip() == str(site / "corebase" / "migrations")

    result = corebase("migrate", "--data-dir", str(tmp_path / "data"), cwd=workdir, pythonpath=str(site))
    assert result.returncode == 0, result.stderr
    assert APPLIED_ALL in result.stdout


@pytest.mark.postgres
async def test_concurrent_migrations_on_postgres(postgres_url):
    from api_support import create_postgres_database, drop_postgres_database

    database_url = await create_postgres_database(postgres_url)
    try:
        env = {name: value for name, value in os.environ.items() if not name.startswith("COREBASE_")}
        env["COREBASE_DATABASE_URL"] = database_url
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "corebase", "migrate"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(3)
        ]
        outputs = [process.communicate(timeout=120) for process in processes]
        for process, (stdout, stderr) in zip(processes, outputs):
            assert process.returncode == 0, stderr
        assert sum(APPLIED_ALL in stdout for stdout, _ in outputs) == 1
    finally:
        await drop_postgres_database(postgres_url, database_url)
