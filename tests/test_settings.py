"""Settings: defaults, file, environment, precedence and the messages for invalid values."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec
import pytest

from corebase.errors import ConfigError
from corebase.settings import Settings, load_settings

CONFIG_FILE = Path(__file__).parent.parent / "config" / "corebase.toml"


def test_defaults_listen_on_loopback():
    settings = load_settings(environ={})
    assert settings.server.host == "127.0.0.1"
    assert settings.containers.publish_host_ip == "127.0.0.1"


def test_config_file_lists_every_setting_with_its_default():
    documented = tomllib.loads(CONFIG_FILE.read_text())
    defaults = msgspec.to_builtins(Settings())
    assert documented == defaults


def test_config_file_comments_every_setting():
    lines = CONFIG_FILE.read_text().splitlines()
    for index, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[index - 1].startswith("# "), f"setting without a comment: {line}"


def test_environment_overrides_file(tmp_path):
    config = tmp_path / "corebase.toml"
    config.write_text('[server]\nport = 9001\nhost = "0.0.0.0"\n')
    settings = load_settings(config, environ={"COREBASE_SERVER_PORT": "9002"})
    assert settings.server.port == 9002
    assert settings.server.host == "0.0.0.0"


def test_overrides_beat_environment():
    settings = load_settings(environ={"COREBASE_SERVER_PORT": "9002"}, overrides={"server": {"port": 9003}})
    assert settings.server.port == 9003


def test_config_file_from_environment_variable(tmp_path):
    config = tmp_path / "corebase.toml"
    config.write_text("[exec]\ndefault_timeout = 5\n")
    settings = load_settings(environ={"COREBASE_CONFIG": str(config)})
    assert settings.exec.default_timeout == 5


def test_aliases_and_lists():
    settings = load_settings(
        environ={
            "COREBASE_DATABASE_URL": "postgresql://u:p@127.0.0.1/db",
            "COREBASE_ADMIN_API_KEY": "secret",
            "COREBASE_PLUGINS_DISABLED": "a, b",
        }
    )
    assert settings.database.url == "postgresql://u:p@127.0.0.1/db"
    assert settings.auth.admin_api_key == "secret"
    assert settings.plugins.disabled == ["a", "b"]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"COREBASE_SERVER_PORT": "70000"}, "server.port (variable COREBASE_SERVER_PORT)"),
        ({"COREBASE_SERVER_PORT": "eighty"}, "server.port"),
        ({"COREBASE_DOCKER_PULL_POLICY": "sometimes"}, "allowed: always, missing, never"),
        ({"COREBASE_CONTAINERS_DEFAULT_MEMORY": "lots"}, "containers.default_memory"),
        ({"COREBASE_CONTAINERS_DEFAULT_CPUS": "0"}, "containers.default_cpus"),
        ({"COREBASE_AUTH_ADMIN_KEY_FILE": ""}, "auth.admin_key_file"),
        ({"COREBASE_AUTH_ADMIN_KEY_FILE": "../key"}, "auth.admin_key_file"),
    ],
)
def test_invalid_values_name_the_setting(environ, expected):
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=environ)
    assert expected in str(caught.value)


def test_unknown_setting_in_file(tmp_path):
    config = tmp_path / "corebase.toml"
    config.write_text("[server]\nprot = 1\n")
    with pytest.raises(ConfigError, match="unknown setting server.prot"):
        load_settings(config, environ={})


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml", environ={})


def test_invalid_toml(tmp_path):
    config = tmp_path / "corebase.toml"
    config.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config, environ={})


def test_pools_in_settings(tmp_path):
    config = tmp_path / "corebase.toml"
    config.write_text("[pool.pools.python]\nmin_idle = 2\nmax_idle = 3\nmax_total = 5\n")
    pools = load_settings(config, environ={}).pool.pools
    assert (pools["python"].min_idle, pools["python"].max_idle, pools["python"].max_total) == (2, 3, 5)
    assert pools["python"].idle_ttl == 3600.0


def test_inconsistent_pool_sizes_name_the_setting(tmp_path):
    config = tmp_path / "corebase.toml"
    config.write_text("[pool.pools.python]\nmin_idle = 5\nmax_idle = 2\n")
    with pytest.raises(ConfigError, match="pool.pools.python.min_idle: min_idle 5 is above max_idle 2"):
        load_settings(config, environ={})


def test_template_images_from_environment():
    settings = load_settings(environ={"COREBASE_TEMPLATES_IMAGES": "python=registry.local/python:3.12, node=n:22"})
    assert settings.templates.images == {"python": "registry.local/python:3.12", "node": "n:22"}
    with pytest.raises(ConfigError, match="COREBASE_TEMPLATES_IMAGES"):
        load_settings(environ={"COREBASE_TEMPLATES_IMAGES": "python"})


def test_zero_size_is_refused_at_start_up():
    with pytest.raises(ConfigError, match="containers.default_memory .*must be above zero"):
        load_settings(environ={"COREBASE_CONTAINERS_DEFAULT_MEMORY": "0"})


def test_zero_quota_size_is_allowed():
    settings = load_settings(environ={"COREBASE_QUOTAS_MAX_MEMORY": "0"})
    assert settings.quotas.max_memory == "0"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"COREBASE_NETWORKS_SUBNET_POOL": "10.213.0.0/33"}, "networks.subnet_pool"),
        ({"COREBASE_NETWORKS_SUBNET_POOL": "10.213.0.0/24", "COREBASE_NETWORKS_SUBNET_SIZE": "20"}, "do not fit"),
    ],
)
def test_bad_subnet_pool_stops_start_up(environ, expected):
    with pytest.raises(ConfigError, match=expected):
        load_settings(environ=environ)
