"""Per-key rate limits: a token bucket in process memory, or one shared by every process through Redis.

Each API key has a bucket of `burst` tokens that refills at `requests_per_minute / 60` tokens per
second. A request takes one token. With no token left, the limiter returns how many seconds pass
until the next token arrives, and the request is rejected.

With Redis a Lua script reads, refills and takes from the bucket in one step, on Redis's clock, so
several API processes share one limit per key. When Redis cannot be reached, requests are allowed
and the failure is logged; an outage of Redis never stops the API.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from corebase.settings import Settings

logger = logging.getLogger(__name__)

# Seconds between two log lines about the same Redis failure.
LOG_EVERY = 30.0

# KEYS[1]: the bucket. ARGV[1]: capacity in tokens. ARGV[2]: refill rate in tokens per second.
# Returns {1, 0} when a token was taken, or {0, seconds until the next token} as a string.
TAKE_TOKEN_SCRIPT = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 1)
if wait > 0 then
  return {0, tostring(wait)}
end
return {1, '0'}
"""


class MemoryLimiter:
    """Token buckets of one process, by API key id."""

    def __init__(self, per_minute: int, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(burst)
        # Key id mapped to (tokens left, monotonic time of the last update).
        self._buckets: dict[str, tuple[float, float]] = {}

    async def take(self, key_id: str) -> float:
        """Take a token for `key_id`; return 0 when allowed, else the seconds until a token is free."""
        now = time.monotonic()
        tokens, at = self._buckets.get(key_id, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.rate)
        if tokens >= 1:
            self._buckets[key_id] = (tokens - 1, now)
            return 0.0
        self._buckets[key_id] = (tokens, now)
        return (1 - tokens) / self.rate

    async def close(self) -> None:
        self._buckets.clear()


class RedisLimiter:
    """Token buckets in Redis, by API key id, shared by every process using the same Redis and prefix."""

    def __init__(self, url: str, key_prefix: str, per_minute: int, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.capacity = burst
        self.key_prefix = f"{key_prefix}:ratelimit:"
        self._redis = Redis.from_url(url)
        self._script = self._redis.register_script(TAKE_TOKEN_SCRIPT)
        self._last_logged = float("-inf")
        self.failures = 0

    async def take(self, key_id: str) -> float:
        """Take a token for `key_id`; return 0 when allowed or when Redis fails, else the seconds to wait."""
        try:
            allowed, wait = await self._script(keys=[self.key_prefix + key_id], args=[self.capacity, self.rate])
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self.failures += 1
            now = time.monotonic()
            if now - self._last_logged >= LOG_EVERY:
                self._last_logged = now
                logger.error(
                    "rate limit check in Redis failed, so requests are allowed without a limit (%d failures so far): %s",
                    self.failures,
                    exc,
                )
            return 0.0
        return 0.0 if int(allowed) == 1 else float(wait)

    async def close(self) -> None:
        await self._redis.aclose()


def build_limiter(settings: Settings) -> MemoryLimiter | RedisLimiter | None:
    """Return the limiter that the settings ask for, or None when rate limits are off."""
    limits = settings.rate_limit
    if limits.requests_per_minute == 0:
        return None
    burst = limits.burst or limits.requests_per_minute
    if settings.redis.url:
        return RedisLimiter(settings.redis.url, settings.redis.key_prefix, limits.requests_per_minute, burst)
    return MemoryLimiter(limits.requests_per_minute, burst)
