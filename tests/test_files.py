"""Copying files into and out of real containers through /api/runtime/containers/{id}/files."""

from __future__ import annotations

import io
import json
import os
import secrets
import tarfile
from collections.abc import AsyncIterator

import aiodocker
import httpx
import pytest

from api_support import remove_server_containers, server_fixture, start_body
from support.images import TEST_LABEL
from support.server import RunningServer

pytestmark = pytest.mark.engine

MAX_UPLOAD = 1024 * 1024
SERVER_ENV = {"COREBASE_FILES_MAX_UPLOAD": str(MAX_UPLOAD)}
TAR = {"Content-Type": "application/x-tar"}
OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
async def server(tmp_path_factory, docker_available) -> AsyncIterator[RunningServer]:
    for running in server_fixture(tmp_path_factory, SERVER_ENV):
        try:
            yield running
        finally:
            await remove_server_containers(running.data_dir)


@pytest.fixture(scope="module")
def keys(server: RunningServer) -> dict[str, str]:
    with server.client() as admin:
        secrets_by_user = {}
        for user in ("hana", "ivo"):
            assert admin.post("/api/users", json={"name": user, "role": "developer"}).status_code == 201
            secrets_by_user[user] = admin.post("/api/keys", json={"name": user, "user": user}).json()["secret"]
        return secrets_by_user


@pytest.fixture(scope="module")
async def container(server: RunningServer, keys: dict[str, str], test_image: str) -> AsyncIterator[str]:
    async with server.async_client(keys["hana"]) as hana:
        started = await hana.post("/api/runtime/start", json=start_body(test_image, command=["sleep", "600"]))
        assert started.status_code == 201, started.text
        container_id = started.json()["id"]
        try:
            yield container_id
        finally:
            await hana.post("/api/runtime/remove", json={"containerId": container_id, "force": True})


@pytest.fixture
async def hana(server: RunningServer, keys: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with server.async_client(keys["hana"]) as client:
        yield client


def files_url(container_id: str) -> str:
    return f"/api/runtime/containers/{container_id}/files"


def tar_of(members: dict[str, bytes | None]) -> bytes:
    """Build a tar archive: a name mapped to its bytes is a file, mapped to None a directory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            member = tarfile.TarInfo(name)
            if data is None:
                member.type = tarfile.DIRTYPE
                member.mode = 0o755
                archive.addfile(member)
            else:
                member.size = len(data)
                member.mode = 0o644
                archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


async def cat(client: httpx.AsyncClient, container_id: str, path: str) -> dict:
    return (await client.post("/api/runtime/exec", json={"containerId": container_id, "command": ["cat", path]})).json()


async def test_upload_file_then_cat(hana: httpx.AsyncClient, container: str):
    uploaded = await hana.put(files_url(container), params={"path": "/notes.txt"}, content=b"first\nsecond\n", headers=OCTET)
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json() == {"containerId": container, "path": "/notes.txt", "size": 13}

    assert (await cat(hana, container, "/notes.txt"))["stdout"] == "first\nsecond\n"

    replaced = await hana.put(files_url(container), params={"path": "/notes.txt"}, content=b"new", headers=OCTET)
    assert replaced.status_code == 200
    assert (await cat(hana, container, "/notes.txt"))["stdout"] == "new"


async def test_upload_tar_with_nested_directories(hana: httpx.AsyncClient, container: str):
    top = "tree-" + secrets.token_hex(4)
    archive = tar_of(
        {
            f"{top}/": None,
            f"{top}/a/": None,
            f"{top}/a/b/": None,
            f"{top}/a/b/deep.txt": b"deep",
            f"{top}/a/top.txt": b"top",
            f"{top}/empty/": None,
        }
    )
    uploaded = await hana.put(files_url(container), params={"path": "/"}, content=archive, headers=TAR)
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["size"] == len(archive)

    assert (await cat(hana, container, f"/{top}/a/b/deep.txt"))["stdout"] == "deep"
    assert (await cat(hana, container, f"/{top}/a/top.txt"))["stdout"] == "top"
    listing = await hana.post("/api/runtime/exec", json={"containerId": container, "command": ["ls", f"/{top}"]})
    assert listing.json()["stdout"].split() == ["a", "empty"]


async def test_download_directory(hana: httpx.AsyncClient, container: str):
    top = "download-" + secrets.token_hex(4)
    archive = tar_of({f"{top}/": None, f"{top}/one.txt": b"1", f"{top}/sub/": None, f"{top}/sub/two.txt": b"22"})
    assert (await hana.put(files_url(container), params={"path": "/"}, content=archive, headers=TAR)).status_code == 200

    response = await hana.get(files_url(container), params={"path": f"/{top}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-tar"
    stat = json.loads(response.headers["x-container-path-stat"])
    assert (stat["name"], stat["type"]) == (top, "directory")

    with tarfile.open(fileobj=io.BytesIO(response.content)) as downloaded:
        names = sorted(downloaded.getnames())
        assert names == [top, f"{top}/one.txt", f"{top}/sub", f"{top}/sub/two.txt"]
        assert downloaded.extractfile(f"{top}/sub/two.txt").read() == b"22"


async def test_binary_round_trip(hana: httpx.AsyncClient, container: str):
    data = os.urandom(MAX_UPLOAD - 4096)
    uploaded = await hana.put(files_url(container), params={"path": "/blob.bin"}, content=data, headers=OCTET)
    assert uploaded.status_code == 200, uploaded.text

    async with hana.stream("GET", files_url(container), params={"path": "/blob.bin"}) as response:
        assert response.status_code == 200
        body = b"".join([chunk async for chunk in response.aiter_bytes()])
    with tarfile.open(fileobj=io.BytesIO(body)) as downloaded:
        assert downloaded.extractfile("blob.bin").read() == data


async def test_stat_with_head(hana: httpx.AsyncClient, container: str):
    name = "naïve-" + secrets.token_hex(3) + ".txt"
    uploaded = await hana.put(files_url(container), params={"path": f"/{name}"}, content=b"12345", headers=OCTET)
    assert uploaded.status_code == 200, uploaded.text

    response = await hana.head(files_url(container), params={"path": f"/{name}"})
    assert response.status_code == 200
    assert response.content == b""
    header = response.headers["x-container-path-stat"]
    assert header.isascii()
    stat = json.loads(header)
    assert stat["name"] == name
    assert stat["size"] == 5
    assert stat["type"] == "file"
    assert stat["mode"] == 0o644
    assert stat["modifiedAt"].endswith("Z")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_missing_path_is_not_found(hana: httpx.AsyncClient, container: str, method: str):
    response = await hana.request(method, files_url(container), params={"path": "/no/such/file"})
    assert response.status_code == 404
    if method == "GET":
        problem = response.json()
        assert problem["field"] == "path"
        assert problem["path"] == "/no/such/file"
        assert "/no/such/file" in problem["detail"]


async def test_upload_into_missing_directory(hana: httpx.AsyncClient, container: str):
    response = await hana.put(files_url(container), params={"path": "/missing-dir"}, content=tar_of({"x.txt": b"x"}), headers=TAR)
    assert response.status_code == 404
    problem = response.json()
    assert problem["field"] == "path"
    assert "create the directory" in problem["detail"]

    single = await hana.put(files_url(container), params={"path": "/missing-dir/x.txt"}, content=b"x", headers=OCTET)
    assert single.status_code == 404
    assert single.json()["path"] == "/missing-dir"


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [("GET", "etc", {}), ("PUT", "notes.txt", OCTET), ("PUT", "relative/dir", TAR), ("PUT", "/dir/", OCTET), ("GET", "", {})],
)
async def test_bad_path_is_rejected(hana: httpx.AsyncClient, container: str, method: str, path: str, headers: dict):
    response = await hana.request(method, files_url(container), params={"path": path}, content=b"x" if headers else None, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "path"


async def test_oversize_upload_leaves_nothing(hana: httpx.AsyncClient, container: str):
    response = await hana.put(files_url(container), params={"path": "/big.bin"}, content=b"\0" * (MAX_UPLOAD + 1), headers=OCTET)
    assert response.status_code == 413
    problem = response.json()
    assert problem["limit"] == MAX_UPLOAD
    assert "files.max_upload" in problem["detail"]
    assert (await hana.head(files_url(container), params={"path": "/big.bin"})).status_code == 404


async def test_upload_needs_content_length(hana: httpx.AsyncClient, container: str):
    async def chunks():
        yield b"no length"

    response = await hana.put(files_url(container), params={"path": "/chunked.txt"}, content=chunks(), headers=OCTET)
    assert response.status_code == 411
    assert response.json()["field"] == "Content-Length"


async def test_upload_needs_known_content_type(hana: httpx.AsyncClient, container: str):
    response = await hana.put(files_url(container), params={"path": "/a.json"}, json={"a": 1})
    assert response.status_code == 415
    assert response.json()["field"] == "Content-Type"


async def test_archive_onto_file_is_rejected(hana: httpx.AsyncClient, container: str):
    assert (await hana.put(files_url(container), params={"path": "/plain.txt"}, content=b"x", headers=OCTET)).status_code == 200
    response = await hana.put(files_url(container), params={"path": "/plain.txt"}, content=tar_of({"y": b"y"}), headers=TAR)
    assert response.status_code == 422
    assert response.json()["field"] == "path"


async def test_invalid_archive_is_rejected(hana: httpx.AsyncClient, container: str):
    response = await hana.put(files_url(container), params={"path": "/"}, content=b"this is no tar archive", headers=TAR)
    assert response.status_code == 400
    assert response.json()["field"] == "body"


async def test_other_users_container_not_found(server: RunningServer, keys: dict[str, str], container: str):
    async with server.async_client(keys["ivo"]) as ivo:
        for method, options in (
            ("GET", {"params": {"path": "/"}}),
            ("HEAD", {"params": {"path": "/"}}),
            ("PUT", {"params": {"path": "/intruder.txt"}, "content": b"x", "headers": OCTET}),
        ):
            other = await ivo.request(method, files_url(container), **options)
            missing = await ivo.request(method, files_url("ctr_0000000000000000"), **options)
            assert other.status_code == missing.status_code == 404, method
            if method != "HEAD":
                assert other.json()["title"] == missing.json()["title"]

    async with server.async_client(keys["hana"]) as hana:
        assert (await hana.head(files_url(container), params={"path": "/intruder.txt"})).status_code == 404


async def test_read_only_volume_is_conflict(server: RunningServer, keys: dict[str, str], test_image: str, docker: aiodocker.Docker):
    volume = "cbtest-ro-" + secrets.token_hex(4)
    created = await docker.volumes.create({"Name": volume, "Labels": {TEST_LABEL: "files"}})
    container_id = None
    async with server.async_client(keys["hana"]) as hana:
        try:
            started = await hana.post(
                "/api/runtime/start", json=start_body(test_image, command=["sleep", "600"], volumes=[f"{volume}:/data:ro"])
            )
            assert started.status_code == 201, started.text
            container_id = started.json()["id"]

            response = await hana.put(files_url(container_id), params={"path": "/data"}, content=tar_of({"z": b"z"}), headers=TAR)
            assert response.status_code == 409
            problem = response.json()
            assert problem["field"] == "path"
            assert "read-only" in problem["detail"]
        finally:
            if container_id is not None:
                await hana.post("/api/runtime/remove", json={"containerId": container_id, "force": True})
            await created.delete()
