"""Bearer API keys (constant-time check against every configured key) and the per-key rate limit."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from typing import Any, Callable, Iterable, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError


def key_id(key: str) -> str:
    """A short, stable, non-secret name for a key (logs and call records never hold the key itself)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


class ApiKeys:
    """``Authorization: Bearer <key>`` against API_KEYS.

    Both sides are hashed to a fixed length first, and every configured key is compared (no early exit), so the
    time taken says nothing about which key, or how much of one, matched.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [(hashlib.sha256(key.encode("utf-8")).digest(), key_id(key)) for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def authenticate(self, authorization: str | None) -> str | None:
        """The key id of a valid bearer header, or None."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        matched: str | None = None
        for digest, identifier in self._digests:
            if hmac.compare_digest(presented, digest):
                matched = identifier
        return matched


class RateLimiterUnavailable(Exception):
    """The shared limiter cannot be asked (Redis down): the caller must refuse the request, never let it through."""


class RateLimiter(Protocol):
    """Per-key limit on ``POST /calls``: in-process, or shared through Redis when several instances serve the API."""

    async def acquire(self, key: str) -> float:
        """0 if the request may go ahead (a token is taken), else the seconds to wait before retrying.

        Raises :class:`RateLimiterUnavailable` when the limiter cannot decide (fail closed).
        """
        ...

    async def aclose(self) -> None:
        ...


class TokenBucketRateLimiter:
    """In-process token bucket per key: ``per_minute`` tokens, refilled continuously; burst = ``per_minute``.

    Buckets are only made for authenticated keys, whose number is fixed by configuration: memory is bounded.
    """

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)

    async def acquire(self, key: str) -> float:
        now = self._clock()
        tokens, last = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    async def aclose(self) -> None:
        pass


# KEYS[1] bucket; ARGV capacity, rate (tokens/s), ttl (ms), now (s; "" = the Redis server's clock, which every
# instance shares). The whole read-refill-take-write runs atomically in Redis. Numbers go back as a string: Lua
# numbers returned to Redis are truncated to integers.
_TOKEN_BUCKET_LUA = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local now = tonumber(ARGV[4])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local last = tonumber(state[2])
if tokens == nil or last == nil then
  tokens = capacity
  last = now
end
local elapsed = now - last
if elapsed < 0 then elapsed = 0 end
tokens = math.min(capacity, tokens + elapsed * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return string.format('%.17g', wait)
"""


class RedisRateLimiter:
    """The same token bucket as :class:`TokenBucketRateLimiter`, kept in Redis so every gateway instance behind a
    load balancer shares one bucket per key (hash ``<prefix><key_id>`` with fields tokens/ts).

    One Lua script (EVALSHA, loaded on demand) does the whole update atomically; the time is Redis's own ``TIME``
    unless a ``clock`` is injected (tests). A bucket expires once it would be full again anyway, so idle keys cost
    nothing. Redis errors raise :class:`RateLimiterUnavailable`: the caller fails closed.
    """

    def __init__(self, url: str, per_minute: int, *, prefix: str = "gateway:ratelimit:",
                 clock: Callable[[], float] | None = None, timeout_s: float = 2.0, client: Any = None) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.prefix = prefix
        self._clock = clock
        # Time to refill from empty, plus a second: after that an absent key means exactly "full".
        self._ttl_ms = int(math.ceil(self.capacity / self.rate * 1000)) + 1000
        self._client = client if client is not None else aioredis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        self._script = self._client.register_script(_TOKEN_BUCKET_LUA)

    async def acquire(self, key: str) -> float:
        now = "" if self._clock is None else repr(float(self._clock()))
        try:
            wait = await self._script(keys=[self.prefix + key],
                                      args=[repr(self.capacity), repr(self.rate), self._ttl_ms, now])
        except (RedisError, OSError) as error:
            raise RateLimiterUnavailable(f"{type(error).__name__}: {error}") from error
        return float(wait)

    async def aclose(self) -> None:
        await self._client.aclose()


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
