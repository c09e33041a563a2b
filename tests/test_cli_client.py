"""The client commands of `corebase` (login, containers, templates, pools, users, keys) against a real server."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import secrets
import select
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from api_support import RUN_ID, RUN_LABEL, remove_server_containers, server_fixture
from corebase.cli import main
from support.server import RunningServer, free_port

pytestmark = pytest.mark.engine

LABEL = f"{RUN_LABEL}={RUN_ID}"


@pytest.fixture(scope="module")
def server(tmp_path_factory, docker_available) -> RunningServer:
    for running in server_fixture(tmp_path_factory):
        yield running
        asyncio.run(remove_server_containers(running.data_dir))


def clean_env(config_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user with no COREBASE_ variables and a private config directory."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("COREBASE_")}
    env["XDG_CONFIG_HOME"] = str(config_home)
    env.update(extra)
    return env


def corebase(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "corebase", *args], env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def user_env(server, tmp_path_factory) -> dict[str, str]:
    """The environment of a user who ran `corebase login` with the admin key."""
    env = clean_env(tmp_path_factory.mktemp("config"))
    result = corebase("login", server.base_url, env=env, stdin=server.admin_key + "\n")
    assert result.returncode == 0, result.stderr
    return env


def start_container(env: dict[str, str], image: str, *command: str) -> str:
    result = corebase("containers", "start", "-l", LABEL, image, *command, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# --- login ---------------------------------------------------------------------------------------


def test_login_reads_key_from_stdin(server, tmp_path):
    env = clean_env(tmp_path)
    result = corebase("login", server.base_url, env=env, stdin=server.admin_key + "\n")
    assert result.returncode == 0, result.stderr
    assert f"Logged in to {server.base_url} as admin" in result.stderr
    assert server.admin_key not in result.stdout + result.stderr

    path = tmp_path / "corebase" / "config.toml"
    assert path.stat().st_mode & 0o777 == 0o600
    stored = tomllib.loads(path.read_text())["profiles"]["default"]
    assert stored == {"url": server.base_url, "key": server.admin_key, "user": "admin"}


def test_login_rejects_a_wrong_key(server, tmp_path):
    env = clean_env(tmp_path)
    result = corebase("login", server.base_url, "--key", "cbk_wrong", env=env)
    assert result.returncode == 5
    assert "401" in result.stderr
    assert not (tmp_path / "corebase" / "config.toml").exists()


def test_named_profiles_and_logout(server, tmp_path):
    env = clean_env(tmp_path)
    login = corebase("login", "--profile", "second", "--key", server.admin_key, "--json", server.base_url, env=env)
    assert login.returncode == 0, login.stderr
    assert json.loads(login.stdout)["profile"] == "second"

    assert corebase("containers", "ls", env=env).returncode == 2
    listed = corebase("containers", "ls", "--profile", "second", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "items" in json.loads(listed.stdout)
    with_variable = corebase("keys", "ls", env={**env, "COREBASE_PROFILE": "second"})
    assert with_variable.returncode == 0, with_variable.stderr

    assert corebase("logout", "--profile", "second", env=env).returncode == 0
    assert corebase("logout", "--profile", "second", env=env).returncode == 4
    assert corebase("containers", "ls", "--profile", "second", env=env).returncode == 2


def test_login_prompt_does_not_echo(server, tmp_path):
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "corebase", "login", server.base_url],
            env=clean_env(tmp_path),
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            start_new_session=True,
        )
        screen = read_until(controller, b"API key for")
        os.write(controller, server.admin_key.encode() + b"\n")
        assert process.wait(timeout=60) == 0
        screen += read_available(controller)
    finally:
        os.close(controller)
        os.close(terminal)
    assert server.admin_key.encode() not in screen
    assert b"Logged in to" in screen
    assert (tmp_path / "corebase" / "config.toml").exists()


def read_until(descriptor: int, expected: bytes, limit: float = 60.0) -> bytes:
    """Read a terminal's output until `expected` appears; the limit only stops a hung test."""
    seen = b""
    deadline = time.monotonic() + limit
    while expected not in seen:
        assert time.monotonic() < deadline, f"{expected!r} did not appear; the terminal showed {seen!r}"
        ready, _, _ = select.select([descriptor], [], [], 0.5)
        if ready:
            seen += os.read(descriptor, 4096)
    return seen


def read_available(descriptor: int) -> bytes:
    seen = b""
    while select.select([descriptor], [], [], 0.5)[0]:
        try:
            chunk = os.read(descriptor, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    return seen


# --- containers ----------------------------------------------------------------------------------


def test_container_session(user_env, test_image):
    container = start_container(user_env, test_image, "sh", "-c", "echo to-out; echo to-err >&2; exec sleep 600")
    assert container.startswith("ctr_")

    table = corebase("containers", "ls", env=user_env)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:4] == ["ID", "NAME", "IMAGE", "STATUS"]
    assert container in table.stdout

    listed = json.loads(corebase("containers", "ls", "--json", env=user_env).stdout)
    assert container in [item["id"] for item in listed["items"]]
    assert {"items", "total", "limit", "offset"} <= set(listed)

    record = json.loads(corebase("containers", "inspect", container, "--json", env=user_env).stdout)
    assert record["status"] == "running"
    assert record["labels"][RUN_LABEL] == RUN_ID
    shown = corebase("containers", "inspect", container, env=user_env)
    assert "status" in shown.stdout
    assert "running" in shown.stdout

    ran = corebase("containers", "exec", container, "sh", "-c", "echo out; echo err >&2; exit 7", env=user_env)
    assert ran.returncode == 7
    assert ran.stdout == "out\n"
    assert ran.stderr == "err\n"
    as_json = corebase("containers", "exec", "--json", container, "--", "echo", "hi", env=user_env)
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout)["stdout"] == "hi\n"

    logs = corebase("containers", "logs", container, env=user_env)
    assert logs.returncode == 0
    assert logs.stdout == "to-out\n"
    assert logs.stderr == "to-err\n"
    lines = [json.loads(line) for line in corebase("containers", "logs", container, "--json", env=user_env).stdout.splitlines()]
    assert {"stream": "stdout", "text": "to-out\n"} in lines
    assert {"stream": "stderr", "text": "to-err\n"} in lines

    assert corebase("containers", "stop", container, "--timeout", "1", env=user_env).stdout.strip() == container
    stopped = json.loads(corebase("containers", "inspect", container, "--json", env=user_env).stdout)
    assert stopped["status"] == "exited"
    restarted = corebase("containers", "restart", container, "--json", env=user_env)
    assert json.loads(restarted.stdout)["status"] == "running"

    refused = corebase("containers", "rm", container, env=user_env)
    assert refused.returncode == 6
    assert "-f (--force)" in refused.stderr
    removed = corebase("containers", "rm", "-f", container, "--json", env=user_env)
    assert json.loads(removed.stdout)["status"] == "removed"


def test_logs_follow_until_exit(user_env, test_image):
    container = start_container(user_env, test_image, "sh", "-c", "for i in 1 2 3; do echo tick-$i; sleep 0.3; done")
    try:
        followed = corebase("containers", "logs", "-f", container, env=user_env)
        assert followed.returncode == 0
        assert followed.stdout == "tick-1\ntick-2\ntick-3\n"
    finally:
        corebase("containers", "rm", "-f", container, env=user_env)


def test_closed_pipe_ends_quietly(user_env, test_image):
    container = start_container(user_env, test_image, "sh", "-c", "seq 1 200000; exec sleep 600")
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "corebase", "containers", "logs", "-f", container],
            env=user_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        # The reader takes one line and goes away, as `| head -1` does.
        assert process.stdout.readline() == b"1\n"
        process.stdout.close()
        assert process.wait(timeout=60) == 0
        assert b"Traceback" not in process.stderr.read()
        process.stderr.close()
    finally:
        corebase("containers", "rm", "-f", container, env=user_env)


def test_start_options_reach_the_container(user_env, test_image):
    name = "cli-" + secrets.token_hex(3)
    result = corebase(
        "containers", "start", "--json", "--name", name, "--project", "cli-proj", "-e", "COLOR=blue",
        "-m", "64m", "-p", "8080", "-l", LABEL, test_image, "sleep", "600",
        env=user_env,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    try:
        assert record["name"] == name
        assert record["projectId"] == "cli-proj"
        assert record["resources"]["memory"] == 64 * 1024**2
        assert record["ports"][0]["containerPort"] == 8080
        assert record["command"] == ["sleep", "600"]
        echoed = corebase("containers", "exec", name, "sh", "-c", "echo $COLOR", env=user_env)
        assert echoed.stdout == "blue\n"
        page = json.loads(corebase("containers", "ls", "--project", "cli-proj", "--all", "--json", env=user_env).stdout)
        assert [item["id"] for item in page["items"]] == [record["id"]]
    finally:
        corebase("containers", "rm", "-f", record["id"], env=user_env)


def test_exec_timeout_exits_124(user_env, test_image):
    container = start_container(user_env, test_image, "sleep", "600")
    try:
        result = corebase("containers", "exec", "--timeout", "1", container, "sleep", "30", env=user_env)
        assert result.returncode == 124
        assert "timeout" in result.stderr
    finally:
        corebase("containers", "rm", "-f", container, env=user_env)


# --- exit codes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["containers", "inspect", "ctr_0000000000000000"], 4, "does not exist"),
        (["containers", "start", "-l", LABEL, "-m", "12", "IMAGE"], 1, "memory"),
        (["containers", "start", "-l", LABEL, "-v", "/etc:/x", "IMAGE"], 1, "no-host-mounts"),
        (["containers", "exec", "ctr_0000000000000000"], 2, "no command given"),
        (["containers", "inspect", ""], 2, "must not be empty"),
        (["containers", "start", "-p", "http", "IMAGE"], 2, "is not [HOST:]PORT"),
        (["containers", "frobnicate"], 2, "invalid choice"),
        (["templates", "create", "-f", "/nonexistent.json"], 2, "cannot read /nonexistent.json"),
    ],
)
def test_exit_codes(user_env, test_image, args, code, message):
    result = corebase(*[test_image if arg == "IMAGE" else arg for arg in args], env=user_env)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_name_conflict_exits_6(user_env, test_image):
    name = "dup-" + secrets.token_hex(3)
    first = corebase("containers", "start", "--name", name, "-l", LABEL, test_image, "sleep", "600", env=user_env)
    try:
        second = corebase("containers", "start", "--name", name, "-l", LABEL, test_image, "sleep", "600", env=user_env)
        assert second.returncode == 6
        assert "already in use" in second.stderr
    finally:
        corebase("containers", "rm", "-f", first.stdout.strip(), env=user_env)


def test_connection_errors_exit_3_and_auth_5(server, tmp_path):
    nowhere = clean_env(tmp_path, COREBASE_URL=f"http://127.0.0.1:{free_port()}", COREBASE_API_KEY="cbk_any")
    refused = corebase("containers", "ls", env=nowhere)
    assert refused.returncode == 3
    assert "cannot connect to CoreBase" in refused.stderr

    wrong = clean_env(tmp_path, COREBASE_URL=server.base_url, COREBASE_API_KEY="cbk_wrong")
    rejected = corebase("containers", "ls", "--json", env=wrong)
    assert rejected.returncode == 5
    assert json.loads(rejected.stderr)["status"] == 401

    assert corebase("containers", "ls", env=clean_env(tmp_path)).returncode == 2


def test_start_without_image_is_usage_error(user_env):
    started = corebase("containers", "start", env=user_env)
    assert started.returncode == 2
    assert "name an image" in started.stderr


def test_viewer_admin_call_exits_5(server, user_env, tmp_path):
    name = "viewer-" + secrets.token_hex(3)
    assert corebase("users", "create", name, "--role", "viewer", env=user_env).returncode == 0
    key = corebase("keys", "create", "cli", "--user", name, env=user_env).stdout.strip()
    viewer = clean_env(tmp_path, COREBASE_URL=server.base_url, COREBASE_API_KEY=key)
    assert corebase("containers", "ls", env=viewer).returncode == 0
    refused = corebase("users", "ls", env=viewer)
    assert refused.returncode == 5
    assert "403" in refused.stderr


# --- templates, pools, users, keys ---------------------------------------------------------------


def test_templates_from_files(user_env, test_image, tmp_path):
    name = "cli-tpl-" + secrets.token_hex(3)
    toml_file = tmp_path / "template.toml"
    toml_file.write_text(f'name = "{name}"\nimage = "{test_image}"\ncommand = ["sleep", "600"]\nmemory = "64m"\n')
    created = corebase("templates", "create", "-f", str(toml_file), env=user_env)
    assert created.returncode == 0, created.stderr
    assert f"Created template '{name}' version 1" in created.stderr

    other = name + "-json"
    from_stdin = corebase(
        "templates", "create", "-f", "-", "--json", env=user_env, stdin=json.dumps({"name": other, "image": test_image})
    )
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert json.loads(from_stdin.stdout)["name"] == other

    table = corebase("templates", "ls", "--category", "custom", env=user_env).stdout
    assert name in table
    assert other in table
    shown = json.loads(corebase("templates", "show", name, "--json", env=user_env).stdout)
    assert shown["memory"] == 64 * 1024**2
    invalid = corebase("templates", "create", "-f", "-", env=user_env, stdin=json.dumps({"name": "x y", "image": test_image}))
    assert invalid.returncode == 1
    assert "name" in invalid.stderr


def test_pool_set_keeps_unnamed_options(user_env, test_image, tmp_path):
    name = "cli-pool-" + secrets.token_hex(3)
    template = tmp_path / "pool.json"
    template.write_text(json.dumps({"name": name, "image": test_image, "command": ["sleep", "600"]}))
    assert corebase("templates", "create", "-f", str(template), env=user_env).returncode == 0

    # No idle member is wanted, so the pool starts nothing on the engine.
    first = corebase("pools", "set", name, "--min-idle", "0", "--max-idle", "0", "--max-total", "3", "--json", env=user_env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["maxTotal"] == 3
    second = json.loads(corebase("pools", "set", name, "--idle-ttl", "120", "--json", env=user_env).stdout)
    assert (second["maxTotal"], second["minIdle"], second["idleTtl"]) == (3, 0, 120)

    assert name in corebase("pools", "ls", env=user_env).stdout
    assert "maxTotal" in corebase("pools", "show", name, env=user_env).stdout
    assert corebase("pools", "rm", name, env=user_env).returncode == 0
    assert corebase("pools", "show", name, env=user_env).returncode == 4


def test_users_and_keys(server, user_env, tmp_path):
    name = "cli-user-" + secrets.token_hex(3)
    created = json.loads(corebase("users", "create", name, "--json", env=user_env).stdout)
    assert created["role"] == "developer"
    assert name in corebase("users", "ls", env=user_env).stdout
    assert json.loads(corebase("users", "set-role", name, "viewer", "--json", env=user_env).stdout)["role"] == "viewer"

    made = corebase("keys", "create", "laptop", "--user", name, "--scope", "read", "--expires-in", "3600", env=user_env)
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("cbk_")
    assert "shown only once" in made.stderr
    keys = json.loads(corebase("keys", "ls", "--user", name, "--json", env=user_env).stdout)
    assert [key["scopes"] for key in keys] == [["read"]]

    own = clean_env(tmp_path, COREBASE_URL=server.base_url, COREBASE_API_KEY=secret)
    assert corebase("keys", "ls", env=own).returncode == 0
    disabled = json.loads(corebase("users", "disable", name, "--json", env=user_env).stdout)
    assert disabled["disabledAt"] is not None
    assert corebase("keys", "ls", env=own).returncode == 5
    assert json.loads(corebase("users", "enable", name, "--json", env=user_env).stdout)["disabledAt"] is None

    revoked = json.loads(corebase("keys", "revoke", keys[0]["id"], "--json", env=user_env).stdout)
    assert revoked["revokedAt"] is not None
    assert corebase("keys", "ls", env=own).returncode == 5


# --- the entry point -----------------------------------------------------------------------------


def test_main_returns_the_exit_code(server, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("COREBASE_URL", server.base_url)
    monkeypatch.setenv("COREBASE_API_KEY", server.admin_key)
    assert main(["containers", "ls", "--json"]) == 0
    assert "items" in json.loads(capsys.readouterr().out)
    assert main(["containers", "inspect", "ctr_0000000000000000"]) == 4
    assert main(["containers", "--bogus"]) == 2


def test_terminal_without_size_counts_as_80_by_24():
    from corebase.cli.terminal import _terminal_size

    controller, terminal = pty.openpty()
    try:
        # A new pseudo-terminal reports 0 columns and 0 lines until someone sets its size.
        assert os.get_terminal_size(terminal) == (0, 0)
        assert _terminal_size(terminal) == (80, 24)
    finally:
        os.close(controller)
        os.close(terminal)
