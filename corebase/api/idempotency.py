"""The Idempotency-Key header of POST /api/runtime/start: its parameter, and the start that honours it.

Without the header a start runs as before. With it, `corebase.idempotency` makes sure that one
key of one user starts at most one container, and that a retry gets the first response again.
"""

from __future__ import annotations

import math
from typing import Annotated

import msgspec
from litestar import MediaType, Request, Response
from litestar.datastructures import ResponseHeader
from litestar.params import HeaderParameter
from litestar.status_codes import HTTP_201_CREATED

from corebase.api.records import container_record
from corebase.api.schemas import ContainerRecord, StartRequest
from corebase.auth.caller import Caller
from corebase.containers.service import ContainerService, utcnow
from corebase.errors import IdempotencyKeyInProgress
from corebase.idempotency import HEADER, REPLAY_HEADER, IdempotencyService, check_key, fingerprint, key_id

IdempotencyKeyHeader = Annotated[
    str | None,
    HeaderParameter(
        name=HEADER,
        required=False,
        description="A unique value per start, such as a UUID. A retry with the same key and body returns the "
        "first response instead of starting another container; the same key with another body is a 422.",
        schema_extra={"minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
    ),
]

REPLAY_HEADER_SPEC = ResponseHeader(
    name=REPLAY_HEADER,
    description='"true" when the response is the stored one of an earlier request with the same Idempotency-Key',
    documentation_only=True,
)


async def start_response(
    request: Request,
    data: StartRequest,
    caller: Caller,
    containers: ContainerService,
    idempotency: IdempotencyService,
    key: str | None,
) -> Response[ContainerRecord]:
    """Start a container, or, for a key seen before, return the response stored for it."""
    if key is None:
        started = await containers.start(caller, data)
        return Response(container_record(started.row, credentials=started.credentials), status_code=HTTP_201_CREATED)

    row_key = key_id(caller.user, check_key(key))

    async def start_once() -> tuple[int, bytes, str]:
        started = await containers.start(caller, data, idempotency_key=row_key)
        body = msgspec.json.encode(container_record(started.row, credentials=started.credentials))
        return HTTP_201_CREATED, body, started.row.id

    recovered: list[str] = []

    async def recover() -> tuple[int, bytes, str] | None:
        # The request that held the key died. Its row, written together with the key, shows
        # whether it got as far as a container.
        row = await containers.find_keyed(caller.user, row_key)
        if row is None or row.status == "failed":
            return None
        if row.status == "creating":
            # The reconciler marks the row failed, and removes its container, once the start has
            # made no progress for reconcile.creating_grace. A retry after that starts anew.
            grace = containers.settings.reconcile.creating_grace
            wait = max(1, math.ceil(grace - (utcnow() - row.updated_at).total_seconds()) + 1)
            raise IdempotencyKeyInProgress(
                key,
                f"the request with Idempotency-Key {key!r} stopped while container {row.id} was starting; "
                f"what it left is removed within {wait} s (reconcile.creating_grace), and a retry after that "
                "starts a new container",
                retry_after=wait,
            )
        body = msgspec.json.encode(container_record(row, credentials=row.pending_credentials or {}))
        recovered.append(row.id)
        return HTTP_201_CREATED, body, row.id

    outcome = await idempotency.run(
        caller.user, key, fingerprint(request.method, request.url.path, data), start_once, recover
    )
    if outcome.container_id is not None and (not outcome.replayed or recovered):
        # The response, credentials included, was just stored with the key, so the row need not keep them.
        await containers.forget_credentials(outcome.container_id)
    headers = {REPLAY_HEADER: "true"} if outcome.replayed else None
    return Response(outcome.body, status_code=outcome.status, media_type=MediaType.JSON, headers=headers)
