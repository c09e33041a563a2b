"""Application hooks: extra routes, start-up and shut-down, run through the real app factory."""

from __future__ import annotations

from litestar import get
from litestar.di import NamedDependency
from litestar.testing import AsyncTestClient

from corebase import hookimpl
from corebase.app import create_app
from corebase.auth.caller import Caller
from corebase.plugins import AppContext
from corebase.settings import load_settings

ADMIN_KEY = "cbk_hooks_test_key"


class RecordingPlugin:
    """Adds a route and records the start-up and shut-down calls it receives."""

    def __init__(self) -> None:
        self.events: list[str] = []

    @hookimpl
    def corebase_routes(self, settings):
        @get("/api/hello")
        async def hello(caller: NamedDependency[Caller]) -> dict:
            return {"user": caller.user, "role": caller.role}

        @get("/public/ping", exclude_from_auth=True)
        async def ping() -> dict:
            return {"pong": True}

        return [hello, ping]

    @hookimpl
    async def corebase_startup(self, context: AppContext):
        self.events.append(f"startup:{type(context.runtime).__name__}:{'containers' in context.state}")

    @hookimpl
    def corebase_shutdown(self, context: AppContext):
        self.events.append("shutdown")


def settings_for(tmp_path):
    return load_settings(
        environ={"COREBASE_ADMIN_API_KEY": ADMIN_KEY}, overrides={"server": {"data_dir": str(tmp_path)}}
    )


async def test_extra_routes_and_lifecycle_hooks(tmp_path):
    plugin = RecordingPlugin()
    app = create_app(settings_for(tmp_path), extra_plugins=[plugin])

    async with AsyncTestClient(app) as client:
        assert plugin.events == ["startup:DockerRuntime:True"]

        anonymous = await client.get("/api/hello")
        assert anonymous.status_code == 401
        authorised = await client.get("/api/hello", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert authorised.json() == {"user": "admin", "role": "admin"}
        assert (await client.get("/public/ping")).json() == {"pong": True}

        listed = await client.get("/api/plugins", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        recorded = [item for item in listed.json() if "corebase_routes" in item["hooks"]]
        assert recorded[0]["hooks"] == ["corebase_routes", "corebase_shutdown", "corebase_startup"]

    assert plugin.events == ["startup:DockerRuntime:True", "shutdown"]


async def test_failing_shutdown_hook_does_not_stop_the_others(tmp_path):
    calls: list[str] = []

    class Failing:
        @hookimpl
        def corebase_shutdown(self, context):
            calls.append("failing")
            raise RuntimeError("shutdown failed on purpose")

    class Healthy:
        @hookimpl
        def corebase_shutdown(self, context):
            calls.append("healthy")

    app = create_app(settings_for(tmp_path), extra_plugins=[Healthy(), Failing()])
    async with AsyncTestClient(app):
        pass
    assert sorted(calls) == ["failing", "healthy"]
