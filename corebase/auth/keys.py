"""Creating, seeding and checking API keys.

Keys are 32 random bytes, so a single SHA-256 hash is enough to store them safely: unlike
passwords they cannot be guessed from a dictionary, and a fast hash keeps every request cheap.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path

from corebase.auth.caller import Caller, Role
from corebase.auth.tables import ApiKey, User
from corebase.errors import Unauthorized
from corebase.settings import Settings

logger = logging.getLogger(__name__)

KEY_PREFIX = "cbk_"
# Default seconds a verified key stays in the in-process cache before the database is read again,
# which bounds how long a revoked key keeps working in another process (auth.key_cache_seconds).
CACHE_SECONDS = 30.0
# Seconds between two writes of a key's last_used_at.
LAST_USED_RESOLUTION = 60.0


def generate_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


async def ensure_user(name: str, role: Role) -> None:
    """Create the user `name` with `role` unless it exists; an existing user keeps its role."""
    if not await User.exists().where(User.name == name):
        now = utcnow()
        try:
            await User.insert(User(name=name, role=role, created_at=now, updated_at=now))
        except Exception as exc:  # a concurrent request created it first
            logger.debug("user %s was created concurrently: %s", name, exc)


async def create_key(
    name: str,
    user: str,
    role: Role,
    secret: str | None = None,
    scopes: list[str] | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key, creating its user when missing; return the row and the secret, never stored in clear.

    The key takes the user's current role; `role` only applies to a user created here.
    """
    await ensure_user(user, role)
    current = await User.select(User.role).where(User.name == user).first()
    secret = secret or generate_secret()
    row = ApiKey(
        id="key_" + secrets.token_hex(8),
        name=name,
        user=user,
        role=current["role"] if current else role,
        scopes=list(scopes or []),
        prefix=secret[:12],
        key_hash=hash_secret(secret),
        created_at=utcnow(),
        expires_at=expires_at,
    )
    await row.save()
    return row, secret


def key_scopes(row: ApiKey | dict) -> list[str]:
    """Return a key's stored scopes as a list; the JSON column reads back as text on some databases."""
    value = row["scopes"] if isinstance(row, dict) else row.scopes
    if isinstance(value, str):
        value = json.loads(value or "[]")
    return list(value or [])


async def seed_admin_key(settings: Settings) -> Path | None:
    """Make sure an admin key exists at start-up.

    With `auth.admin_api_key` set, that secret becomes an admin key (once). Otherwise, when no admin
    key exists, one is generated and written to a 0600 file in the data directory, whose path is
    returned and logged. Returns None when nothing was generated.
    """
    configured = settings.auth.admin_api_key
    if configured:
        if not await ApiKey.exists().where(ApiKey.key_hash == hash_secret(configured)):
            await create_key("admin (from settings)", "admin", "admin", secret=configured)
            logger.info("seeded the admin API key from auth.admin_api_key")
        return None

    active_admin = await ApiKey.exists().where((ApiKey.role == "admin") & (ApiKey.revoked_at.is_null()))
    if active_admin:
        return None

    _, secret = await create_key("admin (generated)", "admin", "admin")
    path = settings.data_path / settings.auth.admin_key_file
    _write_private_file(path, secret + "\n")
    logger.warning("generated an admin API key and wrote it to %s (readable by this user only)", path)
    return path


def _write_private_file(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(content)


class KeyVerifier:
    """Checks bearer secrets against stored hashes, with a short in-process cache.

    A revoked or expired key, a disabled user and a changed role take effect at once in the process
    that made the change, because it calls `forget()`, and within `cache_seconds` in other processes.
    An expiry is checked on every request, cached or not.
    """

    def __init__(self, cache_seconds: float = CACHE_SECONDS) -> None:
        self.cache_seconds = cache_seconds
        # key hash -> (monotonic time verified, caller, expiry), so an expiry is honoured on cache hits too
        self._cache: dict[str, tuple[float, Caller, datetime | None]] = {}
        self._last_used_written: dict[str, float] = {}

    async def verify(self, secret: str) -> Caller:
        digest = hash_secret(secret)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached and now - cached[0] < self.cache_seconds and (cached[2] is None or cached[2] > utcnow()):
            return cached[1]

        row = await ApiKey.objects().where(ApiKey.key_hash == digest).first()
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            raise Unauthorized("the API key is not valid; pass a key as 'Authorization: Bearer <key>'")
        if row.revoked_at is not None:
            raise Unauthorized(f"API key {row.id} was revoked; create a new key")
        if row.expires_at is not None and row.expires_at <= utcnow():
            raise Unauthorized(f"API key {row.id} expired at {row.expires_at.isoformat()}; create a new key")

        # The user's current role applies, so a role change reaches every key of the user.
        owner = await User.select(User.role, User.disabled_at).where(User.name == row.user).first()
        if owner is None:
            raise Unauthorized(f"user {row.user!r} of API key {row.id} no longer exists; ask an admin for a key")
        if owner["disabled_at"] is not None:
            raise Unauthorized(f"user {row.user!r} of API key {row.id} is disabled; ask an admin to enable the user")

        caller = Caller(key_id=row.id, user=row.user, role=owner["role"], scopes=tuple(key_scopes(row)))
        self._cache[digest] = (now, caller, row.expires_at)
        await self._touch(row.id, now)
        return caller

    async def _touch(self, key_id: str, now: float) -> None:
        if now - self._last_used_written.get(key_id, float("-inf")) < LAST_USED_RESOLUTION:
            return
        self._last_used_written[key_id] = now
        await ApiKey.update({ApiKey.last_used_at: utcnow()}).where(ApiKey.id == key_id)

    def forget(self) -> None:
        """Drop every cached verification, so the next request reads the database again."""
        self._cache.clear()
