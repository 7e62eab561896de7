"""Bearer API keys (constant-time check against every configured key), the per-key rate limit, and the
throttle on failed authentications, per address and presented key, that never blocks a valid key
(:class:`AuthFailureLimiter`)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import time
from collections import OrderedDict
from typing import Any, Callable, Iterable, Protocol



def key_id(key: str) -> str:
    """A short, stable, non-secret name for a key (logs and call records never hold the key itself)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


class ApiKeys:
    """``Authorization: Bearer <key>`` against API_KEYS.

    Both sides are hashed to a fixed length first, and every configured key is compared (no early exit), so the
    time taken says nothing about which key, or how much of one, matched.
    """

    def __init__(self, keys: Iterable[str], operator_keys: Iterable[str] = ()) -> None:
        operators = list(dict.fromkeys(operator_keys))
        every = list(dict.fromkeys([*keys, *operators]))
        self._digests = [(hashlib.sha256(key.encode("utf-8")).digest(), key_id(key)) for key in every]
        # Operator keys see every call record, inbound ones included; with a single key configured in all, that key
        # (whoever runs a one-key gateway runs the whole gateway).
        self._operators = frozenset(key_id(key) for key in (operators or (every if len(every) == 1 else ())))

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def is_operator(self, identifier: str) -> bool:
        """True when the key of this id (from :meth:`authenticate`) is an operator key."""
        return identifier in self._operators

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

    @staticmethod
    def failure_reason(authorization: str | None) -> str:
        """Why ``authorization`` was refused, in words safe to log: never the key, never the header itself."""
        if authorization is None:
            return "no Authorization header"
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return "not a Bearer Authorization header"
        if not token.strip():
            return "empty bearer token"
        return "unknown API key"


log = logging.getLogger("gateway.api.auth")


def client_key(host: str | None) -> str:
    """The throttled unit for a client address: the address itself, or its /64 network for IPv6.

    One IPv6 host usually holds a whole /64 and could rotate through it to dodge a per-address limit.
    """
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]  # not an IP (a unix socket path, a test client): bounded, and throttled as it is
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)  # ::ffff:192.0.2.1 is the IPv4 client 192.0.2.1
        return str(ipaddress.IPv6Network((int(address), 64), strict=False))
    return str(address)


def _loggable(text: str, limit: int = 64) -> str:
    """Client-controlled text for a log line: ASCII-escaped (no newline, no terminal escape) and bounded."""
    return ascii(text[:limit])[1:-1] + ("..." if len(text) > limit else "")


# Unknown keys from one address, all together, may fail this many times the per-key limit in a window: room for a
# few neighbours behind one NAT to mistype, while guessing many keys from one address is still slowed down.
ADDRESS_FAILURE_FACTOR = 5


def presented_key(authorization: str | None) -> str:
    """The credential a request presented: the bearer token, or the whole header when it is not a bearer one."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else (authorization or "")


def _fingerprint(presented: str | None) -> str:
    """A short digest of a presented key: failures are counted per key without keeping (or logging) the key."""
    if not presented:
        return ""
    return hashlib.sha256(presented.encode("utf-8", "surrogateescape")).hexdigest()[:16]


class _Window:
    """Failures in a fixed window that starts at the window's first failure."""

    __slots__ = ("window_start", "count")

    def __init__(self, now: float) -> None:
        self.window_start = now
        self.count = 0

    def fail(self, now: float, window_s: float) -> None:
        if now - self.window_start >= window_s:
            self.window_start, self.count = now, 0
        self.count += 1

    def wait(self, now: float, limit: int, window_s: float) -> float:
        return max(0.0, self.window_start + window_s - now) if self.count >= limit else 0.0


class _Failures(_Window):
    """One client address's current window, and what happened since its last log line."""

    __slots__ = ("logged_at", "unlogged", "refused")

    def __init__(self, now: float) -> None:
        super().__init__(now)
        self.logged_at: float | None = None
        self.unlogged = 0  # failures since the last log line
        self.refused = 0  # requests refused with 429 since the last log line


class AuthFailureLimiter:
    """Failed authentications, in fixed windows starting at a window's first failure, counted per client address
    AND presented key (its fingerprint: ``per_minute``) and per address for every unknown key together
    (``per_address``, :data:`ADDRESS_FAILURE_FACTOR` times ``per_minute`` unless given).

    It never blocks a valid key: the caller checks the key first (a constant-time comparison, as cheap as the
    throttle) and asks :meth:`retry_after` only for a key that failed; a positive answer turns that failure into a
    429 (counted, not recorded again). So a neighbour behind the same NAT who keeps failing locks out their own
    attempts, and at worst other failing attempts from the address, never a colleague's good key.

    Memory is bounded under a flood of distinct keys or addresses: at most ``max_clients`` addresses and as many
    (address, key) pairs, the least recently failing forgotten first; an address over its limit makes no new pairs.
    Each address gets at most one warning line per ``window_s``; the line after a quiet spell counts the failures
    and refusals it summarises. In-process: each gateway instance counts its own.
    """

    def __init__(self, per_minute: int, *, per_address: int | None = None, window_s: float = 60.0,
                 max_clients: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.per_address = per_address or per_minute * ADDRESS_FAILURE_FACTOR
        self.window_s = window_s
        self.max_clients = max_clients
        self._clock = clock
        self._clients: OrderedDict[str, _Failures] = OrderedDict()
        self._pairs: OrderedDict[tuple[str, str], _Window] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients)

    def retry_after(self, client: str | None, presented: str | None = None) -> float:
        """Seconds until ``client`` may fail with the key ``presented`` again (answer 429 until then); 0 when it may
        now. Ask only once the key was found invalid."""
        now = self._clock()
        address = client_key(client)
        entry = self._clients.get(address)
        pair = self._pairs.get((address, _fingerprint(presented)))
        wait = max(entry.wait(now, self.per_address, self.window_s) if entry is not None else 0.0,
                   pair.wait(now, self.per_minute, self.window_s) if pair is not None else 0.0)
        if wait > 0 and entry is not None:
            entry.refused += 1
        return wait

    def record_failure(self, client: str | None, reason: str, presented: str | None = None) -> None:
        """Count a failed authentication from ``client`` with the key ``presented`` and log it (at most one line
        per address per window)."""
        now = self._clock()
        address = client_key(client)
        entry = self._touch(self._clients, address, now, _Failures)
        pair = self._touch(self._pairs, (address, _fingerprint(presented)), now, _Window)
        entry.fail(now, self.window_s)
        pair.fail(now, self.window_s)
        entry.unlogged += 1
        if entry.logged_at is not None and now - entry.logged_at < self.window_s:
            return
        summary = ""
        if entry.unlogged > 1 or entry.refused:
            summary = (f" ({entry.unlogged - 1} more failure(s) and {entry.refused} throttled request(s) since the "
                       "last line for this client)")
        blocked = ""
        if entry.count >= self.per_address:
            blocked = " - further failures from this address throttled until the minute ends"
        elif pair.count >= self.per_minute:
            blocked = " - this key throttled from this address until the minute ends"
        log.warning("API authentication failed: client=%s reason=%s failures_this_minute=%d%s%s",
                    _loggable(address), _loggable(reason), entry.count, blocked, summary)
        entry.logged_at, entry.unlogged, entry.refused = now, 0, 0

    def _touch(self, table: OrderedDict[Any, Any], key: Any, now: float, make: Callable[[float], Any]) -> Any:
        entry = table.get(key)
        if entry is None:
            entry = table[key] = make(now)
            self._forget_old(table, now)
        else:
            table.move_to_end(key)
        return entry

    def _forget_old(self, table: OrderedDict[Any, Any], now: float) -> None:
        """Drop entries whose window and log interval are over, oldest first; then enforce the size bound."""
        while table:
            oldest = next(iter(table.values()))
            quiet_since = max(oldest.window_start, getattr(oldest, "logged_at", None) or oldest.window_start)
            if now - quiet_since < self.window_s:
                break
            table.popitem(last=False)
        while len(table) > self.max_clients:
            table.popitem(last=False)


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
        from gateway.extras import require

        require("redis", "REDIS_URL")  # here: only a deployment with Redis pays for the library (about 8 MB)
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError)
        self._client = client if client is not None else aioredis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        self._script = self._client.register_script(_TOKEN_BUCKET_LUA)

    async def acquire(self, key: str) -> float:
        now = "" if self._clock is None else repr(float(self._clock()))
        try:
            wait = await self._script(keys=[self.prefix + key],
                                      args=[repr(self.capacity), repr(self.rate), self._ttl_ms, now])
        except self._errors as error:
            raise RateLimiterUnavailable(f"{type(error).__name__}: {error}") from error
        return float(wait)

    async def aclose(self) -> None:
        await self._client.aclose()


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
