"""/api/users (admins only) and /api/keys (every user their own keys; admins every key)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from corebase.api.openapi import problem_responses
from corebase.api.schemas import Body, Record
from corebase.auth import accounts
from corebase.auth.access import ADMIN_ONLY, SELF_SERVICE
from corebase.auth.caller import Caller, Role
from corebase.auth.keys import key_scopes
from corebase.auth.tables import ApiKey, User

CallerDependency = NamedDependency[Caller]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Scope = Annotated[str, msgspec.Meta(description="read, write or admin")]


class UserBody(Body):
    name: Name
    role: Role = "developer"


class UserChange(Body):
    """Fields to change; an omitted field keeps its value."""

    role: Role | None = None
    # True disables the user, whose keys stop working at once; false enables the user again.
    disabled: bool | None = None


class UserRecord(Record):
    name: str
    role: str
    created_at: datetime
    updated_at: datetime
    disabled_at: datetime | None


class KeyBody(Body):
    name: Name
    # Scopes narrow the user's role: read, write, admin. Empty means everything the role allows.
    scopes: list[Scope] = []
    # RFC 3339 with a UTC offset, such as 2027-01-31T12:00:00Z.
    expires_at: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    # Seconds from now until the key expires; an alternative to expiresAt.
    expires_in: Annotated[float, msgspec.Meta(gt=0, le=10 * 365 * 86400)] | None = None
    # Admins only: the user the key is for; the caller when omitted.
    user: str | None = None


class KeyRecord(Record):
    id: str
    name: str
    user: str
    role: str
    scopes: list[str]
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


class CreatedKeyRecord(KeyRecord, kw_only=True):
    # The key itself, shown in this response only; CoreBase stores just its hash.
    secret: str


def user_record(row: User) -> UserRecord:
    return UserRecord(
        name=row.name, role=row.role, created_at=row.created_at, updated_at=row.updated_at, disabled_at=row.disabled_at
    )


def key_fields(row: ApiKey) -> dict:
    return {
        "id": row.id,
        "name": row.name,
        "user": row.user,
        "role": row.role,
        "scopes": key_scopes(row),
        "prefix": row.prefix,
        "created_at": row.created_at,
        "last_used_at": row.last_used_at,
        "expires_at": row.expires_at,
        "revoked_at": row.revoked_at,
    }


class UserController(Controller):
    path = "/api/users"
    tags = ["users"]
    opt = {"access": ADMIN_ONLY}

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Create a user with a role; give it a key with POST /api/keys",
        responses=problem_responses(409, 422),
    )
    async def create_user(self, caller: CallerDependency, data: JSONBody[UserBody]) -> UserRecord:
        return user_record(await accounts.create_user(caller, data.name, data.role))

    @get("/", summary="List users")
    async def list_users(self, caller: CallerDependency) -> list[UserRecord]:
        return [user_record(row) for row in await accounts.list_users()]

    @get("/{name:str}", summary="Read a user", responses=problem_responses(404))
    async def get_user(self, caller: CallerDependency, name: FromPath[str]) -> UserRecord:
        return user_record(await accounts.get_user(name))

    @patch(
        "/{name:str}",
        summary="Change a user's role, or disable or enable the user",
        description="Takes effect at once in the process that handles it, and in other API processes "
        "within auth.key_cache_seconds (30 by default), which is how long they cache a verified key.",
        responses=problem_responses(404, 409),
    )
    async def change_user(
        self, state: State, caller: CallerDependency, name: FromPath[str], data: JSONBody[UserChange]
    ) -> UserRecord:
        return user_record(await accounts.change_user(caller, state.key_verifier, name, data.role, data.disabled))


class KeyController(Controller):
    path = "/api/keys"
    tags = ["keys"]
    # Every role manages its own keys; the service keeps each new key within the caller's scopes.
    opt = {"access": SELF_SERVICE}

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Create an API key; the secret is in this response only",
        responses=problem_responses(404, 409, 422),
    )
    async def create_key(self, caller: CallerDependency, data: JSONBody[KeyBody]) -> CreatedKeyRecord:
        expires_at = accounts.expiry_from(data.expires_at, data.expires_in)
        row, secret = await accounts.create_user_key(caller, data.name, data.scopes, expires_at, data.user)
        return CreatedKeyRecord(**key_fields(row), secret=secret)

    @get("/", summary="List the caller's keys (an admin: every key, or one user's with ?user=)")
    async def list_keys(
        self, caller: CallerDependency, user: Annotated[str | None, QueryParameter()] = None
    ) -> list[KeyRecord]:
        return [KeyRecord(**key_fields(row)) for row in await accounts.list_keys(caller, user)]

    @get("/{key_id:str}", summary="Read an API key, without its secret", responses=problem_responses(404))
    async def get_key(self, caller: CallerDependency, key_id: FromPath[str]) -> KeyRecord:
        return KeyRecord(**key_fields(await accounts.get_key(caller, key_id)))

    @delete(
        "/{key_id:str}",
        status_code=HTTP_200_OK,
        summary="Revoke an API key",
        description="Takes effect at once in the process that handles it, and in other API processes "
        "within auth.key_cache_seconds (30 by default).",
        responses=problem_responses(404),
    )
    async def delete_key(self, state: State, caller: CallerDependency, key_id: FromPath[str]) -> KeyRecord:
        return KeyRecord(**key_fields(await accounts.revoke_key(caller, state.key_verifier, key_id)))

    @post(
        "/{key_id:str}/revoke",
        status_code=HTTP_200_OK,
        summary="Revoke an API key (same as DELETE)",
        responses=problem_responses(404),
    )
    async def revoke_key(self, state: State, caller: CallerDependency, key_id: FromPath[str]) -> KeyRecord:
        return KeyRecord(**key_fields(await accounts.revoke_key(caller, state.key_verifier, key_id)))
