"""Idempotency-Key support for POST /api/runtime/start: stored responses, replays and their expiry."""

from corebase.idempotency.service import HEADER, REPLAY_HEADER, IdempotencyService, Outcome, check_key, fingerprint, key_id

__all__ = ["HEADER", "REPLAY_HEADER", "IdempotencyService", "Outcome", "check_key", "fingerprint", "key_id"]
