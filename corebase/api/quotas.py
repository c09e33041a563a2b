"""/api/quotas: a caller's own limits and usage, and per-user overrides managed by admins."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, delete, get, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_204_NO_CONTENT

from corebase.api.openapi import problem_responses
from corebase.api.schemas import Body, Record
from corebase.auth.access import ADMIN_ONLY
from corebase.auth.caller import Caller
from corebase.auth.tables import User
from corebase.errors import Forbidden, InvalidField, UserNotFound
from corebase.quotas.service import QuotaLimits, QuotaOverrides, QuotaService
from corebase.sizes import parse_size

Count = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
Cpus = Annotated[float, msgspec.Meta(ge=0, le=1_000_000)]


class QuotaBody(Body):
    """A user's overrides. An omitted or null field takes the configured default."""

    max_containers: Count | None = None
    # Bytes, or a string such as "512m" or "16g".
    max_memory: int | str | None = None
    max_cpus: Cpus | None = None
    max_container_memory: int | str | None = None
    max_container_cpus: Cpus | None = None


class QuotaLimitsRecord(Record):
    max_containers: int
    # Bytes.
    max_memory: int
    max_cpus: float
    max_container_memory: int
    max_container_cpus: float


class QuotaOverridesRecord(Record):
    max_containers: int | None
    max_memory: int | None
    max_cpus: float | None
    max_container_memory: int | None
    max_container_cpus: float | None


class QuotaUsageRecord(Record):
    containers: int
    # Sum of the memory limits of the user's active containers, in bytes.
    memory: int
    cpus: float


class QuotaRecord(Record):
    user: str
    # False for admins, whom quotas do not limit.
    enforced: bool
    limits: QuotaLimitsRecord
    # The stored per-user values, where null means the configured default applies.
    overrides: QuotaOverridesRecord
    usage: QuotaUsageRecord
    updated_at: datetime | None


class QuotaController(Controller):
    path = "/api/quotas"
    tags = ["quotas"]

    # "me" is a reserved user name (corebase/auth/accounts.py), so this route shadows no user.
    @get("/me", summary="Read your own quota limits and current usage")
    async def get_own(self, state: State, caller: NamedDependency[Caller]) -> QuotaRecord:
        return await _quota_record(_service(state), caller.user, enforced=not caller.is_admin)

    @get(
        "/{user:str}",
        summary="Read a user's quota limits, overrides and usage (admin)",
        opt={"access": ADMIN_ONLY},
        responses=problem_responses(404),
    )
    async def get_quota(self, state: State, caller: NamedDependency[Caller], user: FromPath[str]) -> QuotaRecord:
        _require_admin(caller)
        enforced = await _user_role(user) != "admin"
        return await _quota_record(_service(state), user, enforced=enforced)

    @put(
        "/{user:str}",
        summary="Set a user's quota overrides, replacing earlier ones (admin)",
        opt={"access": ADMIN_ONLY},
        responses=problem_responses(404, 422),
    )
    async def put_quota(
        self, state: State, caller: NamedDependency[Caller], user: FromPath[str], data: JSONBody[QuotaBody]
    ) -> QuotaRecord:
        _require_admin(caller)
        enforced = await _user_role(user) != "admin"
        service = _service(state)
        await service.set_overrides(user, _overrides(data))
        return await _quota_record(service, user, enforced=enforced)

    @delete(
        "/{user:str}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Remove a user's overrides (admin)",
        opt={"access": ADMIN_ONLY},
        responses=problem_responses(404),
    )
    async def delete_quota(self, state: State, caller: NamedDependency[Caller], user: FromPath[str]) -> None:
        _require_admin(caller)
        await _user_role(user)
        await _service(state).delete_overrides(user)


def _service(state: State) -> QuotaService:
    return state.containers.quotas


def _require_admin(caller: Caller) -> None:
    if not caller.is_admin:
        raise Forbidden(
            f"managing quotas needs the admin role, and user {caller.user!r} has the {caller.role} role; "
            "read your own quota with GET /api/quotas/me",
            role=caller.role,
        )


async def _user_role(user: str) -> str:
    """Return the role of `user`, or raise UserNotFound when no such user exists."""
    row = await User.select(User.role).where(User.name == user).first()
    if row is None:
        raise UserNotFound(user)
    return row["role"]


def _size(field: str, value: int | str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise InvalidField(field, f"{field}: {exc}") from None


def _overrides(data: QuotaBody) -> QuotaOverrides:
    return QuotaOverrides(
        max_containers=data.max_containers,
        max_memory_bytes=_size("maxMemory", data.max_memory),
        max_cpus=data.max_cpus,
        max_container_memory_bytes=_size("maxContainerMemory", data.max_container_memory),
        max_container_cpus=data.max_container_cpus,
    )


async def _quota_record(service: QuotaService, user: str, enforced: bool) -> QuotaRecord:
    overrides = await service.overrides(user)
    limits: QuotaLimits = await service.limits(user, overrides)
    usage = await service.usage(user)
    return QuotaRecord(
        user=user,
        enforced=enforced,
        limits=QuotaLimitsRecord(
            max_containers=limits.max_containers,
            max_memory=limits.max_memory_bytes,
            max_cpus=limits.max_cpus,
            max_container_memory=limits.max_container_memory_bytes,
            max_container_cpus=limits.max_container_cpus,
        ),
        overrides=QuotaOverridesRecord(
            max_containers=overrides.max_containers,
            max_memory=overrides.max_memory_bytes,
            max_cpus=overrides.max_cpus,
            max_container_memory=overrides.max_container_memory_bytes,
            max_container_cpus=overrides.max_container_cpus,
        ),
        usage=QuotaUsageRecord(containers=usage.containers, memory=usage.memory_bytes, cpus=usage.cpus),
        updated_at=overrides.updated_at,
    )
