"""Pytest fixtures for plugin authors: a running CoreBase server and a local test image.

Installing corebase registers this module with pytest through the `pytest11` entry point named
`corebase`, so the tests of a plugin package can use these fixtures without a conftest.py:

- `corebase_image` (session): tag of a busybox image built locally, without a registry.
- `corebase_server` (session): a `corebase serve` subprocess on a free 127.0.0.1 port, with SQLite
  in a temporary directory, every installed plugin loaded and an admin key. It is a
  corebase.testing.server.RunningServer.
- `corebase_client` (function): an httpx.Client for `corebase_server` that sends the admin key.
- `corebase_server_factory` (session): starts more servers with settings of their own.

At the end of the session every server is stopped, and the engine containers and networks it
created are removed. The fixtures need a Docker Engine. Without one they skip their tests, and
with CI=true they fail them. `-p no:corebase` turns the plugin off.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corebase.testing.images import BUSYBOX_BINARY, TEST_IMAGE, ensure_test_image
from corebase.testing.server import RunningServer, remove_server_objects, run_server, stop_server
from corebase.testing.services import engine_problem, require_service

# Replaced by the test image's tag in the values of corebase_env entries.
IMAGE_PLACEHOLDER = "{image}"
ENV_PREFIX = "COREBASE_"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("corebase", "CoreBase test server and image")
    group.addoption(
        "--corebase-image",
        metavar="TAG",
        help=f"tag of the local busybox test image that corebase_image builds (ini corebase_image, default {TEST_IMAGE})",
    )
    group.addoption(
        "--corebase-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a COREBASE_* setting for the corebase_server fixture's server; repeat the option for more. "
        "It wins over the ini's corebase_env lines, and {image} in VALUE is replaced by the test image's tag",
    )
    group.addoption(
        "--corebase-busybox",
        metavar="PATH",
        help=f"static busybox binary copied into the test image (ini corebase_busybox, default {BUSYBOX_BINARY})",
    )
    parser.addini("corebase_image", "tag of the local busybox test image that corebase_image builds", default=TEST_IMAGE)
    parser.addini(
        "corebase_env",
        "COREBASE_* settings for the corebase_server fixture's server, one NAME=VALUE per line",
        type="linelist",
        default=[],
    )
    parser.addini(
        "corebase_busybox", "static busybox binary copied into the test image", default=str(BUSYBOX_BINARY)
    )


def pytest_configure(config: pytest.Config) -> None:
    # Check the entries now, so a typo stops the run with a usage error before any test starts.
    server_env(config)


def server_env(config: pytest.Config) -> dict[str, str]:
    """Return the corebase_env settings, ini lines first and --corebase-env options after them.

    Raises pytest.UsageError for an entry that is not NAME=VALUE with a COREBASE_ name.
    """
    env = {}
    for entry in [*config.getini("corebase_env"), *config.getoption("corebase_env")]:
        name, separator, value = entry.partition("=")
        name = name.strip()
        if not separator or not name.startswith(ENV_PREFIX):
            raise pytest.UsageError(
                f"invalid corebase_env entry {entry!r}: write NAME=VALUE with a COREBASE_* setting name, "
                "such as COREBASE_MONITORING_INTERVAL=1"
            )
        env[name] = value
    return env


def image_tag(config: pytest.Config) -> str:
    """Return the test image's tag: --corebase-image, else the corebase_image ini value."""
    return config.getoption("corebase_image") or config.getini("corebase_image")


def build_image(config: pytest.Config) -> str:
    """Build the test image unless the engine has it already, and return its tag.

    Fails the test, with the fix, when the busybox binary is missing.
    """
    busybox = Path(config.getoption("corebase_busybox") or config.getini("corebase_busybox"))
    try:
        return asyncio.run(ensure_test_image(tag=image_tag(config), busybox=busybox))
    except FileNotFoundError as exc:
        pytest.fail(f"cannot build the CoreBase test image: {exc}; or point --corebase-busybox at one", pytrace=False)


class ServerFactory:
    """Starts CoreBase servers for a test session, each with a data directory of its own.

    `close` stops them all and removes the engine containers and networks they created.
    """

    def __init__(self, config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._config = config
        self._tmp_path_factory = tmp_path_factory
        self._stack = contextlib.ExitStack()
        self._servers: list[RunningServer] = []

    def start(self, env: dict[str, str] | None = None) -> RunningServer:
        """Start a server with the COREBASE_* settings in `env`, and return it once /health answers.

        `{image}` in a value is replaced by the test image's tag, which is built when needed. The
        server runs until the end of the session or until `stop` is called with it.
        """
        env = dict(env or {})
        if any(IMAGE_PLACEHOLDER in value for value in env.values()):
            tag = build_image(self._config)
            env = {name: value.replace(IMAGE_PLACEHOLDER, tag) for name, value in env.items()}

        data_dir = self._tmp_path_factory.mktemp("corebase-server")
        server = self._stack.enter_context(run_server(data_dir, env=env))
        self._servers.append(server)
        return server

    def stop(self, server: RunningServer) -> None:
        """Stop `server` and remove the engine containers and networks it created."""
        stop_server(server.process)
        self._servers.remove(server)
        asyncio.run(remove_server_objects(server))

    def close(self) -> None:
        """Stop every server, then remove what each created, even when a removal fails."""
        self._stack.close()
        errors = []
        for server in self._servers:
            try:
                asyncio.run(remove_server_objects(server))
            except Exception as exc:  # noqa: BLE001 - report every server's failure, not only the first
                errors.append(f"{server.base_url}: {exc!r}")
        if errors:
            raise RuntimeError("removing the test servers' containers failed: " + "; ".join(errors))


@pytest.fixture(scope="session")
def corebase_engine() -> None:
    """Check once per session that the Docker Engine responds; skip, or fail under CI=true, when it does not."""
    problem = asyncio.run(engine_problem())
    if problem:
        require_service("Docker Engine", problem)


@pytest.fixture(scope="session")
def corebase_image(corebase_engine: None, pytestconfig: pytest.Config) -> str:
    """Tag of the local busybox test image, built once when the engine does not have it."""
    return build_image(pytestconfig)


@pytest.fixture(scope="session")
def corebase_server_factory(
    corebase_engine: None, pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerFactory]:
    """A ServerFactory whose servers are stopped and cleaned up at the end of the session."""
    factory = ServerFactory(pytestconfig, tmp_path_factory)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def corebase_server(corebase_server_factory: ServerFactory, pytestconfig: pytest.Config) -> RunningServer:
    """A CoreBase server with the corebase_env settings, shared by the session's tests."""
    return corebase_server_factory.start(server_env(pytestconfig))


@pytest.fixture
def corebase_client(corebase_server: RunningServer) -> Iterator[httpx.Client]:
    """An httpx.Client for corebase_server that sends the admin key, closed after the test."""
    with corebase_server.client() as client:
        yield client
