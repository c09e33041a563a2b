"""Idempotency keys: a retried request with the same key gets the first request's response.

The rules follow the IETF draft "The Idempotency-Key HTTP Header Field" and Stripe's API:

- A key belongs to the user who sent it, so two users can use the same key independently.
- The first request with a key stores its response. A retry with the same method, path and
  canonical body gets that response again, byte for byte, marked by `Idempotent-Replayed: true`.
- The same key with a different request is a 422, and a retry while the first request still
  runs is a 409, each naming the header.
- Only a successful response is stored. A request that failed left nothing behind (a failed
  start is rolled back), so the key is freed and a retry, corrected or not, runs again. Stripe
  likewise stores nothing for a request that failed validation.
- A key and its response are kept for `idempotency.key_ttl` seconds, then pruned.

Two requests with one key never both run: the first INSERT of the key's row wins (the primary
key is unique on SQLite and PostgreSQL alike), and the other finds the row. While a request
runs, it renews a short lock on its row. When its process dies, the lock runs out and a retry
takes the key over with a conditional UPDATE, which again only one request can win. The retry
then calls `recover` to find what the dead request left: a response to store and send, or
nothing, and then the request runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

import msgspec

from corebase.errors import IdempotencyKeyInProgress, IdempotencyKeyReused, InvalidField
from corebase.idempotency.tables import DONE, IN_PROGRESS, IdempotencyKey
from corebase.settings import IdempotencySettings

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAY_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# Seconds a running request's lock lasts; the request renews it every third of that.
LOCK_SECONDS = 30.0
# Seconds between two passes that delete expired keys, at most.
PRUNE_INTERVAL = 300.0


class Outcome(NamedTuple):
    """A response to send: the first one, or a stored one replayed, and the container it names."""

    status: int
    body: bytes
    replayed: bool
    container_id: str | None = None


# The result of a request, stored under its key: status, body and container id.
Result = tuple[int, bytes, str | None]


class _Attempt(NamedTuple):
    key_id: str
    token: str
    # Whether the key was taken over from a request whose lock ran out.
    taken_over: bool = False


def check_key(value: str) -> str:
    """Return the key; raise InvalidField (400, naming the header) unless it is 1 to 255 printable ASCII characters."""
    if not value:
        raise InvalidField(HEADER, f"the {HEADER} header is empty; send a unique value such as a UUID", status=400)
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidField(
            HEADER,
            f"the {HEADER} header is {len(value)} characters long, above the maximum of {MAX_KEY_LENGTH}; "
            "send a shorter unique value such as a UUID",
            status=400,
        )
    if not all(" " <= character <= "~" for character in value):
        raise InvalidField(
            HEADER,
            f"the {HEADER} header contains a character that is not printable ASCII; "
            "use letters, digits and punctuation, such as a UUID",
            status=400,
        )
    return value


def fingerprint(method: str, path: str, body: msgspec.Struct) -> str:
    """Hash a request: its method, path and decoded body with keys sorted, so layout and key order do not count."""
    canonical = msgspec.json.encode([method.upper(), path, body], order="sorted")
    return hashlib.sha256(canonical).hexdigest()


def key_id(owner: str, key: str) -> str:
    """Return the primary key of `owner`'s row for `key`."""
    return hashlib.sha256(msgspec.json.encode([owner, key])).hexdigest()


def _in_progress(key: str) -> IdempotencyKeyInProgress:
    """Return the 409 for a key whose request holds its lock, which a server that stopped holds for LOCK_SECONDS."""
    return IdempotencyKeyInProgress(
        key,
        f"a request with Idempotency-Key {key!r} is still running, or its server stopped less than "
        f"{LOCK_SECONDS:g} s ago; retry in a moment to get its response",
    )


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class IdempotencyService:
    """Stores Idempotency-Keys and their responses; `start()` runs the pruning loop in the background."""

    def __init__(self, settings: IdempotencySettings) -> None:
        self.ttl = settings.key_ttl
        self._pruner: asyncio.Task | None = None

    async def run(
        self,
        owner: str,
        key: str,
        request_fingerprint: str,
        action: Callable[[], Awaitable[Result]],
        recover: Callable[[], Awaitable[Result | None]] | None = None,
    ) -> Outcome:
        """Return the stored response for `owner`'s `key`, or run `action` once and store what it returns.

        `action` returns (status, body, container id). Raises IdempotencyKeyReused (422) when the key
        was used for another request, and IdempotencyKeyInProgress (409) while that request still runs.
        When `action` raises, the key is freed and the error re-raised. After taking the key over
        from a request that died, `recover` returns that request's result, which is stored and
        sent as a replay, or None when it left nothing and `action` should run. It may raise
        IdempotencyKeyInProgress while what the dead request left is still being cleaned up.
        """
        attempt_or_replay = await self._begin(owner, key, request_fingerprint)
        if isinstance(attempt_or_replay, Outcome):
            logger.info("replayed the response for %s %r of user %s", HEADER, key, owner)
            return attempt_or_replay
        attempt = attempt_or_replay

        try:
            recovered = await recover() if attempt.taken_over and recover is not None else None
        except BaseException:
            # The key stays with what the dead request left. Its lock ends now, so the next retry
            # takes the key over at once and calls `recover` again.
            await asyncio.shield(self._hand_back(attempt))
            raise
        if recovered is not None:
            status, body, container_id = recovered
            await asyncio.shield(self._complete(attempt, status, body, container_id))
            logger.info("stored the response left by a dead request for %s %r of user %s", HEADER, key, owner)
            return Outcome(status, body, replayed=True, container_id=container_id)

        try:
            async with self._holding(attempt):
                status, body, container_id = await action()
        except BaseException:
            await asyncio.shield(self._release(attempt))
            raise
        await asyncio.shield(self._complete(attempt, status, body, container_id))
        return Outcome(status, body, replayed=False, container_id=container_id)

    async def prune(self, now: datetime | None = None) -> int:
        """Delete expired keys, except one whose request still holds its lock; return the number deleted."""
        now = now or utcnow()
        deleted = await IdempotencyKey.delete().where(_expired(now)).returning(IdempotencyKey.id)
        if deleted:
            logger.info("pruned %d expired idempotency keys", len(deleted))
        return len(deleted)

    def start(self) -> None:
        """Start pruning expired keys in the background; every process may run it, since a DELETE is safe to repeat."""
        if self._pruner is None:
            self._pruner = asyncio.create_task(self._prune_loop(), name="corebase-idempotency-prune")

    async def stop(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
            self._pruner = None

    # --- steps ---------------------------------------------------------------------------------

    async def _begin(self, owner: str, key: str, request_fingerprint: str) -> _Attempt | Outcome:
        """Take the key for a new attempt, or return the stored response; raise when neither is possible."""
        row_id = key_id(owner, key)
        token = secrets.token_hex(16)

        # Each round either takes the key or finds its row. A row can go away in between, when its
        # attempt failed or it expired, and then the request goes round again.
        for _ in range(3):
            now = utcnow()
            await IdempotencyKey.delete().where((IdempotencyKey.id == row_id) & _expired(now))
            inserted = await (
                IdempotencyKey.insert(
                    IdempotencyKey(
                        id=row_id,
                        owner=owner,
                        idempotency_key=key,
                        fingerprint=request_fingerprint,
                        status=IN_PROGRESS,
                        lock_token=token,
                        locked_until=now + timedelta(seconds=LOCK_SECONDS),
                        created_at=now,
                        expires_at=now + timedelta(seconds=self.ttl),
                    )
                )
                .on_conflict(action="DO NOTHING")
                .returning(IdempotencyKey.id)
            )
            if inserted:
                return _Attempt(row_id, token)

            row = await IdempotencyKey.objects().where(IdempotencyKey.id == row_id).first()
            if row is None:
                continue
            if row.fingerprint != request_fingerprint:
                raise IdempotencyKeyReused(key, row.container_id)
            if row.status == DONE:
                return Outcome(row.response_status, row.response_body.encode(), replayed=True, container_id=row.container_id)

            # The first request still runs, unless its lock ran out because its process died.
            taken = await (
                IdempotencyKey.update(
                    {IdempotencyKey.lock_token: token, IdempotencyKey.locked_until: now + timedelta(seconds=LOCK_SECONDS)}
                )
                .where(
                    (IdempotencyKey.id == row_id)
                    & (IdempotencyKey.status == IN_PROGRESS)
                    & (IdempotencyKey.locked_until < now)
                )
                .returning(IdempotencyKey.id)
            )
            if taken:
                if row.lock_token is None:
                    # An earlier retry handed the key back while the dead request's start is cleaned up.
                    logger.info("took over %s %r of user %s again", HEADER, key, owner)
                else:
                    logger.warning("took over %s %r of user %s from a request whose lock ran out", HEADER, key, owner)
                return _Attempt(row_id, token, taken_over=True)
            raise _in_progress(key)
        raise _in_progress(key)

    @contextlib.asynccontextmanager
    async def _holding(self, attempt: _Attempt) -> AsyncIterator[None]:
        """Renew the attempt's lock every third of LOCK_SECONDS while the block runs."""
        renewer = asyncio.create_task(self._renew_lock(attempt), name="corebase-idempotency-lock")
        try:
            yield
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _renew_lock(self, attempt: _Attempt) -> None:
        while True:
            await asyncio.sleep(LOCK_SECONDS / 3)
            try:
                await IdempotencyKey.update({IdempotencyKey.locked_until: utcnow() + timedelta(seconds=LOCK_SECONDS)}).where(
                    (IdempotencyKey.id == attempt.key_id) & (IdempotencyKey.lock_token == attempt.token)
                )
            except Exception as exc:  # a database error; the next round tries again
                logger.warning("could not renew the lock of idempotency key %s: %s", attempt.key_id, exc)

    async def _complete(self, attempt: _Attempt, status: int, body: bytes, container_id: str | None) -> None:
        """Store the response, so retries replay it until the key expires."""
        stored = await (
            IdempotencyKey.update(
                {
                    IdempotencyKey.status: DONE,
                    IdempotencyKey.response_status: status,
                    IdempotencyKey.response_body: body.decode(),
                    IdempotencyKey.container_id: container_id,
                    IdempotencyKey.lock_token: None,
                    IdempotencyKey.locked_until: None,
                    IdempotencyKey.expires_at: utcnow() + timedelta(seconds=self.ttl),
                }
            )
            .where((IdempotencyKey.id == attempt.key_id) & (IdempotencyKey.lock_token == attempt.token))
            .returning(IdempotencyKey.id)
        )
        if not stored:
            # NOTE: only a request that stalled for longer than LOCK_SECONDS loses its key, and the
            # request that took the key over may then have started a second container.
            logger.warning(
                "idempotency key %s was taken over while its request ran; container %s is not stored under it",
                attempt.key_id,
                container_id,
            )

    async def _hand_back(self, attempt: _Attempt) -> None:
        """End the attempt's lock but keep its key, so the next request with the key takes it over."""
        try:
            await IdempotencyKey.update({IdempotencyKey.lock_token: None, IdempotencyKey.locked_until: utcnow()}).where(
                (IdempotencyKey.id == attempt.key_id) & (IdempotencyKey.lock_token == attempt.token)
            )
        except Exception:
            logger.exception("could not unlock idempotency key %s; retries get 409 until its lock runs out", attempt.key_id)

    async def _release(self, attempt: _Attempt) -> None:
        """Delete the attempt's key after a failed request, so a retry runs again."""
        try:
            await IdempotencyKey.delete().where(
                (IdempotencyKey.id == attempt.key_id) & (IdempotencyKey.lock_token == attempt.token)
            )
        except Exception:
            # The key stays until its lock runs out; a retry then takes it over.
            logger.exception("could not free idempotency key %s after its request failed", attempt.key_id)

    async def _prune_loop(self) -> None:
        interval = min(PRUNE_INTERVAL, self.ttl)
        while True:
            try:
                await self.prune()
            except Exception:
                logger.exception("pruning expired idempotency keys failed")
            await asyncio.sleep(interval)


def _expired(now: datetime):
    """Build the condition for keys past their expiry whose request, if any, no longer holds the lock."""
    unlocked = (IdempotencyKey.status == DONE) | (IdempotencyKey.locked_until < now)
    return (IdempotencyKey.expires_at < now) & unlocked
