"""/api/runtime/containers/{id}/files: copy files into a container and out of it as tar streams.

An upload is a tar archive (Content-Type application/x-tar), extracted into the directory named
by `path`, or a single file (application/octet-stream) written to the path `path` names. Either
way it streams: the body goes to the engine as it arrives, so its size is bounded by
`files.max_upload` and not by memory. A download is the engine's tar archive of `path`, streamed
as the engine sends it. The X-Container-Path-Stat header of a download, and of the HEAD request
on the same URL, describes `path` as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from typing import Annotated
from urllib.parse import quote

import msgspec
from litestar import Controller, Request, Response, get, head, put
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream
from litestar.status_codes import HTTP_200_OK

from corebase.api.openapi import ENGINE_STATUSES, problem_responses
from corebase.api.query_forms import ABSOLUTE_PATH_PATTERN
from corebase.api.schemas import STAT_HEADER, PathStatRecord, UploadRecord
from corebase.auth.caller import Caller
from corebase.containers.service import ContainerService
from corebase.errors import InvalidField
from corebase.runtime.types import PathStat

TAR = "application/x-tar"
OCTET_STREAM = "application/octet-stream"

ContainerPath = Annotated[
    str,
    QueryParameter(
        description="Absolute path in the container, such as /app or /app/notes.txt", pattern=ABSOLUTE_PATH_PATTERN
    ),
]
STAT_HEADER_SPEC = ResponseHeader(
    documentation_only=True,
    name=STAT_HEADER,
    description='The path as JSON: {"name", "size", "mode", "type", "modifiedAt", "linkTarget"}; non-ASCII '
    "characters are written as \\u escapes",
)


@dataclasses.dataclass
class UploadOperation(Operation):
    """The upload's OpenAPI operation, with the request body the handler streams itself.

    The handler reads the body from the request instead of a `data` parameter, so that it is not
    held in memory, and Litestar documents no request body for such a handler.
    """

    def __post_init__(self) -> None:
        binary = OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY))
        self.request_body = RequestBody(
            required=True,
            description="A tar archive to extract into the directory `path`, or the bytes of the file `path`",
            content={TAR: binary, OCTET_STREAM: binary},
        )


def _upload_problems():
    responses = problem_responses(400, 404, 409, 411, 413, 415, 422, *ENGINE_STATUSES)
    responses[413] = dataclasses.replace(
        responses[413], description="The upload is larger than files.max_upload; `limit` gives it in bytes"
    )
    return responses


class FileController(Controller):
    path = "/api/runtime/containers/{container_id:str}/files"
    tags = ["files"]

    @put(
        "/",
        status_code=HTTP_200_OK,
        summary="Upload a tar archive into a directory, or one file to a path",
        description="Content-Type application/x-tar: the archive is extracted into the existing directory `path`. "
        "Content-Type application/octet-stream: the body becomes the file `path` (mode 0644), replacing a file "
        "there. The body needs a Content-Length, at most files.max_upload bytes. A missing directory is a 404, a "
        "read-only target a 409.",
        responses=_upload_problems(),
        operation_class=UploadOperation,
        request_max_body_size=None,
        opt={"audit_action": "runtime.files.upload"},
    )
    async def upload(
        self,
        request: Request,
        caller: NamedDependency[Caller],
        containers: NamedDependency[ContainerService],
        container_id: FromPath[str],
        path: ContainerPath,
    ) -> UploadRecord:
        media_type = request.content_type[0]
        if media_type not in (TAR, OCTET_STREAM):
            raise InvalidField(
                "Content-Type",
                f"Content-Type {media_type or 'missing'!r} is not accepted; send {TAR} for an archive or "
                f"{OCTET_STREAM} for one file",
                status=415,
            )
        size = _content_length(request)
        row = await containers.upload(
            caller, container_id, path, request.stream(), size=size, single_file=media_type == OCTET_STREAM
        )
        return UploadRecord(container_id=row.id, path=path, size=size or 0)

    @get(
        "/",
        summary="Download a file or directory as a tar stream",
        description="The response is the tar archive the engine makes of `path`: one member for a file, the "
        "directory and its contents for a directory. It streams as it is read, so a large directory is not "
        "held in memory. X-Container-Path-Stat describes `path`.",
        media_type=TAR,
        response_headers=[STAT_HEADER_SPEC],
        responses=problem_responses(400, 404, *ENGINE_STATUSES),
    )
    async def download(
        self,
        caller: NamedDependency[Caller],
        containers: NamedDependency[ContainerService],
        container_id: FromPath[str],
        path: ContainerPath,
    ) -> Stream:
        stat, chunks = await containers.download(caller, container_id, path)
        name = posixpath.basename(path.rstrip("/")) or "root"
        headers = {
            STAT_HEADER: stat_header(stat),
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}.tar",
        }
        return Stream(chunks, media_type=TAR, headers=headers)

    @head(
        "/",
        summary="Describe a path without downloading it",
        description="The same X-Container-Path-Stat header as the download, with no body.",
        response_headers=[STAT_HEADER_SPEC],
        responses=problem_responses(400, 404, *ENGINE_STATUSES),
    )
    async def stat(
        self,
        caller: NamedDependency[Caller],
        containers: NamedDependency[ContainerService],
        container_id: FromPath[str],
        path: ContainerPath,
    ) -> Response[None]:
        _, stat = await containers.stat_path(caller, container_id, path)
        return Response(content=None, headers={STAT_HEADER: stat_header(stat)})


def stat_header(stat: PathStat) -> str:
    """Encode a PathStat as the ASCII JSON of a PathStatRecord, as HTTP headers need."""
    record = PathStatRecord(**msgspec.structs.asdict(stat))
    # msgspec writes non-ASCII characters as they are, so the standard library escapes them.
    return json.dumps(msgspec.to_builtins(record), separators=(",", ":"))


def _content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    if not value.isdigit():
        raise InvalidField("Content-Length", f"Content-Length {value!r} is not a number of bytes", status=400)
    return int(value)
