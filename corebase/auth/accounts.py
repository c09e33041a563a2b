"""Managing users (admins only) and API keys (each user their own; admins everyone's).

A key never grants more than the key that created it: its scopes must lie within the creator's
effective scopes, and its expiry may not be later than the creator's. The same holds for revoking,
so a read-only key cannot revoke a stronger key of the same user.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta

from corebase.auth.access import ROLE_SCOPES, SCOPES, effective_scopes
from corebase.auth.caller import Caller, Role
from corebase.auth.keys import KeyVerifier, create_key, key_scopes, utcnow
from corebase.auth.tables import ApiKey, User
from corebase.errors import Conflict, Forbidden, InvalidField, KeyNotFound, UserNotFound

logger = logging.getLogger(__name__)

USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,199}$")
# Names that routes use for the caller themselves, such as GET /api/quotas/me.
RESERVED_USER_NAMES = frozenset({"me"})


# --- users -----------------------------------------------------------------------------------


async def create_user(caller: Caller, name: str, role: Role) -> User:
    if not USER_NAME.match(name):
        raise InvalidField(
            "name", f"user name {name!r} is invalid; use up to 200 letters, digits, '.', '_', '@' or '-', starting with a letter or digit"
        )
    if name.lower() in RESERVED_USER_NAMES:
        raise InvalidField("name", f"user name {name!r} is reserved for the caller's own routes, such as /api/quotas/me; choose another name")
    if await User.exists().where(User.name == name):
        raise Conflict(f"a user named {name!r} already exists; change it with PATCH /api/users/{name}", user=name)

    now = utcnow()
    await User.insert(User(name=name, role=role, created_at=now, updated_at=now))
    logger.info("created user %s with role %s by %s", name, role, caller.user)
    return await get_user(name)


async def list_users() -> list[User]:
    return await User.objects().order_by(User.name)


async def get_user(name: str) -> User:
    row = await User.objects().where(User.name == name).first()
    if row is None:
        raise UserNotFound(name)
    return row


async def change_user(
    caller: Caller, verifier: KeyVerifier, name: str, role: Role | None, disabled: bool | None
) -> User:
    """Change a user's role or disabled state; every key of the user follows at once in this process."""
    row = await get_user(name)
    loses_admin = row.role == "admin" and row.disabled_at is None and (disabled or role not in (None, "admin"))
    if loses_admin and await _active_admins() <= 1:
        raise Conflict(
            f"user {name!r} is the last active admin; make another user admin first, so the API stays manageable",
            user=name,
        )

    now = utcnow()
    values: dict = {User.updated_at: now}
    if role is not None:
        values[User.role] = role
    if disabled is not None:
        values[User.disabled_at] = (row.disabled_at or now) if disabled else None
    await User.update(values).where(User.name == name)
    if role is not None:
        # Keep each key's recorded role equal to the user's, which the verifier applies.
        await ApiKey.update({ApiKey.role: role}).where(ApiKey.user == name)
    verifier.forget()
    logger.info("changed user %s (role=%s, disabled=%s) by %s", name, role, disabled, caller.user)
    return await get_user(name)


async def _active_admins() -> int:
    return await User.count().where((User.role == "admin") & User.disabled_at.is_null())


# --- keys ------------------------------------------------------------------------------------


async def create_user_key(
    caller: Caller,
    name: str,
    scopes: list[str],
    expires_at: datetime | None,
    user: str | None,
) -> tuple[ApiKey, str]:
    """Create a key for the caller, or for `user` when the caller is an admin; return the row and its secret."""
    owner = user or caller.user
    if owner != caller.user and not caller.is_admin:
        raise Forbidden(
            f"only an admin can create keys for another user; omit 'user' to create a key for {caller.user!r}",
            requiredRole="admin",
        )
    target = await get_user(owner)
    if target.disabled_at is not None:
        raise Conflict(f"user {owner!r} is disabled; enable the user before creating a key", user=owner)

    _check_scopes(caller, target.role, scopes)
    if expires_at is not None and expires_at <= utcnow():
        raise InvalidField("expiresAt", f"expiresAt {expires_at.isoformat()} is in the past; give a future time")
    limit = await _caller_key_expiry(caller)
    if limit is not None and (expires_at is None or expires_at > limit):
        raise InvalidField(
            "expiresAt",
            f"the key in use expires at {limit.isoformat()}, so a key it creates must expire no later; "
            "set expiresAt or expiresIn within that",
        )

    row, secret = await create_key(name, owner, target.role, scopes=sorted(set(scopes)), expires_at=expires_at)
    logger.info("created API key %s (%s) for %s by %s", row.id, row.prefix, owner, caller.user)
    return row, secret


def expiry_from(expires_at: datetime | None, expires_in: float | None) -> datetime | None:
    """Return the expiry time from an absolute time or a number of seconds; at most one may be given."""
    if expires_at is not None and expires_in is not None:
        raise InvalidField("expiresIn", "give either expiresAt or expiresIn, not both")
    if expires_in is not None:
        return utcnow() + timedelta(seconds=expires_in)
    return expires_at


async def list_keys(caller: Caller, user: str | None) -> list[ApiKey]:
    """Return the caller's keys; an admin gets every key, or the keys of `user`."""
    if user is not None and user != caller.user and not caller.is_admin:
        raise Forbidden(
            f"only an admin can list the keys of another user; omit 'user' to list the keys of {caller.user!r}",
            requiredRole="admin",
        )
    query = ApiKey.objects().order_by(ApiKey.created_at)
    if not caller.is_admin:
        query = query.where(ApiKey.user == caller.user)
    elif user is not None:
        query = query.where(ApiKey.user == user)
    return await query


async def get_key(caller: Caller, key_id: str) -> ApiKey:
    """Return a key the caller may see; another user's key is reported missing, exactly like an unknown id."""
    row = await ApiKey.objects().where(ApiKey.id == key_id).first()
    if row is None or not (caller.is_admin or row.user == caller.user):
        raise KeyNotFound(key_id)
    return row


async def revoke_key(caller: Caller, verifier: KeyVerifier, key_id: str) -> ApiKey:
    """Revoke a key at once in this process; revoking a revoked key changes nothing."""
    row = await get_key(caller, key_id)
    caller_scopes = effective_scopes(caller.role, caller.scopes)
    if not effective_scopes(row.role, key_scopes(row)) <= caller_scopes:
        raise Forbidden(
            f"API key {key_id} may do more than the key in use ({', '.join(sorted(caller_scopes))}); "
            "revoke it with a key that has at least its scopes",
            keyScopes=sorted(caller_scopes),
        )
    if row.revoked_at is None:
        await ApiKey.update({ApiKey.revoked_at: utcnow()}).where(ApiKey.id == key_id)
        verifier.forget()
        logger.info("revoked API key %s of %s by %s", key_id, row.user, caller.user)
    return await get_key(caller, key_id)


def _check_scopes(caller: Caller, role: str, scopes: list[str]) -> None:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise InvalidField("scopes", f"unknown scope {', '.join(unknown)}; use any of {', '.join(SCOPES)}")
    beyond_role = sorted(set(scopes) - ROLE_SCOPES[role])
    if beyond_role:
        raise InvalidField(
            "scopes",
            f"the role {role} does not grant {', '.join(beyond_role)}; scopes can only narrow a role, "
            f"which grants {', '.join(sorted(ROLE_SCOPES[role]))}",
        )
    # A key may not create a key stronger than itself, for its own user or, as an admin, for another.
    caller_scopes = effective_scopes(caller.role, caller.scopes)
    requested_scopes = effective_scopes(role, scopes)
    if not requested_scopes <= caller_scopes:
        raise InvalidField(
            "scopes",
            f"the key in use is limited to {', '.join(sorted(caller_scopes))}, so the new key must be too; "
            f"set scopes to a subset of {sorted(caller_scopes)}",
        )


async def _caller_key_expiry(caller: Caller) -> datetime | None:
    row = await ApiKey.select(ApiKey.expires_at).where(ApiKey.id == caller.key_id).first()
    return row["expires_at"] if row else None
