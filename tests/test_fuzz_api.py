"""Property-based fuzzing of every HTTP operation in the OpenAPI document, with schemathesis.

Schemathesis generates valid and invalid requests from the document and sends them, with an
admin key and with a developer key, to a real `corebase serve` on the real engine with SQLite.
Every response must not be a 5xx, its status must be documented for the operation, and its
content type, headers and body must match the documented ones. Schemathesis's other default
checks run too: invalid requests are rejected, valid ones are accepted, a request without a key
gets a 401, and an undocumented method gets a 405 with a correct Allow header.

The document is built in-process when this module is imported, because schemathesis creates one
test per operation at collection time. `test_served_schema_is_fuzzed_schema` checks that the server
under test serves the same document at /schema/openapi.json.
NOTE: schemathesis.pytest.from_fixture, which could load the document from the server, fails on
pytest 9.2 because it sets `Function._nodeid`, which pytest no longer has.

The run is bounded for CI. COREBASE_FUZZ_EXAMPLES sets how many requests the fuzzing phase generates
per operation (default 5), for example 200 for a longer local run; the coverage phase adds its
boundary values either way.
"""

from __future__ import annotations

import os
import secrets

import httpx
import pytest
import schemathesis

from api_support import remove_server_containers, toolbox_template_env
from corebase.app import create_app
from corebase.settings import load_settings
from support.server import RunningServer, run_server

MAX_EXAMPLES = int(os.environ.get("COREBASE_FUZZ_EXAMPLES", "5"))


def _build_document() -> dict:
    app = create_app(load_settings(environ={}))
    return app.openapi_schema.to_schema()


DOCUMENT = _build_document()

CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {
            "max-examples": MAX_EXAMPLES,
            "mode": "all",
            # CoreBase ignores query parameters it does not know, as most HTTP APIs do, so a request
            # with an extra one is not invalid.
            "allow-extra-parameters": False,
            # No example database, so a run writes no .hypothesis folder and CI runs stay independent.
            "database": "none",
        },
        "checks": {
            # A 422 rejects a value that a JSON Schema cannot describe, such as a memory limit below
            # the engine's minimum or a template name that is taken. A 400 stays unexpected, because
            # a request that matches the schema must always decode.
            "positive_data_acceptance": {"expected-statuses": ["2xx", "401", "403", "404", "409", "422", "429"]},
        },
    }
)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


@pytest.fixture(scope="module")
async def fuzz_server(tmp_path_factory, docker_available, toolbox_image) -> RunningServer:
    """A server whose starts stay local: images are never pulled and templates run the toolbox image."""
    data_dir = tmp_path_factory.mktemp("corebase-fuzz")
    env = {**toolbox_template_env(toolbox_image), "COREBASE_DOCKER_PULL_POLICY": "never"}
    try:
        with run_server(data_dir, env=env) as server:
            yield server
    finally:
        await remove_server_containers(data_dir)


@pytest.fixture(scope="module")
def developer_key(fuzz_server: RunningServer) -> str:
    """The secret of a new developer's API key."""
    with fuzz_server.client() as client:
        name = "fuzz-" + secrets.token_hex(4)
        response = client.post("/api/users", json={"name": name, "role": "developer"})
        assert response.status_code == 201, response.text
        response = client.post("/api/keys", json={"name": "fuzz", "user": name})
        assert response.status_code == 201, response.text
        return response.json()["secret"]


def test_served_schema_is_fuzzed_schema(fuzz_server: RunningServer) -> None:
    served = httpx.get(fuzz_server.base_url + "/schema/openapi.json", timeout=30).json()

    assert served == DOCUMENT


@schema.parametrize()
def test_fuzz_as_admin(case, fuzz_server: RunningServer) -> None:
    case.call_and_validate(base_url=fuzz_server.base_url, headers={"Authorization": f"Bearer {fuzz_server.admin_key}"})


@schema.parametrize()
def test_fuzz_as_developer(case, fuzz_server: RunningServer, developer_key: str) -> None:
    case.call_and_validate(base_url=fuzz_server.base_url, headers={"Authorization": f"Bearer {developer_key}"})
