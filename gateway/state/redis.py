"""Shared state in Redis (``REDIS_URL``): every instance behind a load balancer sees the same claims."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import orjson

from gateway.extras import MissingExtra

try:  # the redis extra: imported only when REDIS_URL is set (gateway.state.open_state)
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError as error:
    raise MissingExtra("redis", "REDIS_URL") from error

from gateway.state.base import LIVE_FEED_MAX, LIVE_READ_MAX, MAX_LIVE_LISTED, LiveBatch, StateUnavailable

DEFAULT_PREFIX = "gateway:"
MAX_BLOCKING_CONNECTIONS = 64  # control requests waiting on a reply at once, per instance


class RedisState:
    """``SET <prefix>claim:<key> 1 NX PX <ttl>``: atomic in Redis, so exactly one instance wins a claim."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, timeout_s: float = 2.0, client: Any = None) -> None:
        self.prefix = prefix
        self._client = client if client is not None else aioredis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        # Blocking pops wait longer than a command may: their own pool, with no read timeout of its own.
        self._blocking = aioredis.Redis.from_url(url, socket_connect_timeout=timeout_s,
                                                 max_connections=MAX_BLOCKING_CONNECTIONS) if url else self._client

    async def claim_once(self, key: str, ttl_s: float) -> bool:
        try:
            created = await self._client.set(f"{self.prefix}claim:{key}", b"1", nx=True, px=max(1, math.ceil(ttl_s * 1000)))
        except (RedisError, OSError) as error:
            raise StateUnavailable(f"{type(error).__name__}: {error}") from error
        return bool(created)

    # A running total is a hash of shares, one per contributing process (its own running sum, which only grows):
    # a write repeated after a timeout or an outage sets the same share again and counts nothing twice. A total
    # kept by a version before shares (a string, the day of an upgrade) is added in.
    _SET_SHARE = """
    if tonumber(ARGV[2]) > tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') then
      redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
    end
    if redis.call('TTL', KEYS[1]) == -1 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
    return {redis.call('HVALS', KEYS[1]), redis.call('GET', KEYS[2])}
    """

    def _total_keys(self, key: str) -> tuple[str, str]:
        return f"{self.prefix}shares:{key}", f"{self.prefix}total:{key}"

    async def set_share(self, key: str, contributor: str, amount: float, ttl_s: float) -> float:
        shares, legacy = await self._run(self._client.eval(self._SET_SHARE, 2, *self._total_keys(key), contributor,
                                                           repr(float(amount)), max(1, math.ceil(ttl_s))))
        return _sum(shares, legacy)

    async def get_total(self, key: str) -> float:
        shares_key, legacy_key = self._total_keys(key)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.hvals(shares_key)
            pipe.get(legacy_key)
            shares, legacy = await self._run(pipe.execute())
        return _sum(shares, legacy)

    # Leases: a sorted set per scope, holder -> expiry (ms); expired members are removed before counting, so a
    # crashed instance's slots free themselves. One Lua script: check and take atomically.
    _ACQUIRE = """
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
    if redis.call('ZSCORE', KEYS[1], ARGV[3]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
      redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
      redis.call('PEXPIRE', KEYS[1], ARGV[5])
      return 1
    end
    return 0
    """

    async def _run(self, coroutine: Any) -> Any:
        try:
            return await coroutine
        except (RedisError, OSError) as error:
            raise StateUnavailable(f"{type(error).__name__}: {error}") from error

    async def acquire_lease(self, scope: str, holder: str, limit: int, ttl_s: float) -> bool:
        now_ms = int(time.time() * 1000)
        ttl_ms = max(1, math.ceil(ttl_s * 1000))
        taken = await self._run(self._client.eval(self._ACQUIRE, 1, f"{self.prefix}lease:{scope}", now_ms, limit,
                                                  holder, now_ms + ttl_ms, ttl_ms))
        return bool(taken)

    async def renew_lease(self, scope: str, holder: str, ttl_s: float) -> None:
        expires = int(time.time() * 1000 + ttl_s * 1000)
        await self._run(self._client.zadd(f"{self.prefix}lease:{scope}", {holder: expires}, xx=True))

    async def release_lease(self, scope: str, holder: str) -> None:
        await self._run(self._client.zrem(f"{self.prefix}lease:{scope}", holder))

    async def register_call(self, call_sid: str, instance: str, ttl_s: float) -> None:
        ttl_ms = max(1, math.ceil(ttl_s * 1000))
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(f"{self.prefix}call:{call_sid}", instance, px=ttl_ms)
            # An index of the registry (call_sid -> expiry), for the console's list of every instance's live calls.
            pipe.zadd(f"{self.prefix}calls", {call_sid: int(time.time() * 1000) + ttl_ms})
            pipe.pexpire(f"{self.prefix}calls", ttl_ms)
            await self._run(pipe.execute())

    async def call_holder(self, call_sid: str) -> str | None:
        value = await self._run(self._client.get(f"{self.prefix}call:{call_sid}"))
        return value.decode() if isinstance(value, bytes) else value

    _UNREGISTER = ("if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('ZREM', KEYS[2], ARGV[2]) "
                   "return redis.call('DEL', KEYS[1]) end return 0")

    async def unregister_call(self, call_sid: str, instance: str) -> None:
        await self._run(self._client.eval(self._UNREGISTER, 2, f"{self.prefix}call:{call_sid}", f"{self.prefix}calls",
                                          instance, call_sid))

    async def live_calls(self) -> dict[str, str]:
        index = f"{self.prefix}calls"
        now_ms = int(time.time() * 1000)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(index, "-inf", now_ms)
            pipe.zrangebyscore(index, now_ms, "+inf", start=0, num=MAX_LIVE_LISTED)
            _, sids = await self._run(pipe.execute())
        if not sids:
            return {}
        sids = [sid.decode() for sid in sids]
        holders = await self._run(self._client.mget([f"{self.prefix}call:{sid}" for sid in sids]))
        return {sid: holder.decode() for sid, holder in zip(sids, holders) if holder is not None}

    # The live view: pictures (a key per call, and a list of its last lines) and the feed (a stream, trimmed).
    async def publish_live(self, batch: LiveBatch) -> None:
        ttl_ms = max(1, math.ceil(batch.ttl_s * 1000))
        feed = f"{self.prefix}live:feed"
        async with self._client.pipeline(transaction=False) as pipe:
            for call_sid, summary in batch.calls.items():
                pipe.set(f"{self.prefix}live:call:{call_sid}", orjson.dumps(summary), px=ttl_ms)
                pipe.pexpire(f"{self.prefix}live:lines:{call_sid}", ttl_ms)
            for call_sid, lines in batch.lines.items():
                name = f"{self.prefix}live:lines:{call_sid}"
                pipe.rpush(name, *[orjson.dumps(line) for line in lines])
                pipe.ltrim(name, -batch.max_lines, -1)
                pipe.pexpire(name, ttl_ms)
            for call_sid in batch.ended:
                pipe.delete(f"{self.prefix}live:call:{call_sid}", f"{self.prefix}live:lines:{call_sid}")
            for event in batch.events:
                pipe.xadd(feed, {"e": orjson.dumps(event)}, maxlen=LIVE_FEED_MAX, approximate=True)
            if batch.events:
                pipe.expire(feed, 3600)  # an idle deployment's feed goes
            await self._run(pipe.execute())

    async def live_pictures(self, call_sids: list[str]) -> dict[str, dict[str, Any]]:
        if not call_sids:
            return {}
        async with self._client.pipeline(transaction=False) as pipe:
            for call_sid in call_sids:
                pipe.get(f"{self.prefix}live:call:{call_sid}")
                pipe.lrange(f"{self.prefix}live:lines:{call_sid}", 0, -1)
            found = await self._run(pipe.execute())
        pictures = {}
        for call_sid, summary, lines in zip(call_sids, found[::2], found[1::2]):
            call = _object(summary) if summary is not None else None
            if call is not None:
                pictures[call_sid] = {"call": call, "lines": [line for raw in lines if (line := _object(raw))]}
        return pictures

    async def read_live(self, after: str, timeout_s: float) -> tuple[str, list[dict[str, Any]]]:
        feed = f"{self.prefix}live:feed"
        if not after:
            last = await self._run(self._client.xrevrange(feed, count=1))
            return (last[0][0].decode() if last else "0-0"), []
        try:  # as _pop: a Redis that vanished without a reset must not hold the reader forever
            found = await asyncio.wait_for(self._run(self._blocking.xread(
                {feed: after}, count=LIVE_READ_MAX, block=max(1, int(timeout_s * 1000)))), timeout_s + 2.0)
        except TimeoutError as error:
            raise StateUnavailable("Redis did not answer a blocking read in time") from error
        entries = found[0][1] if found else []
        events = [event for _, fields in entries if (event := _object(fields.get(b"e", b"")))]
        return (entries[-1][0].decode() if entries else after), events

    # Control messages and replies: Redis lists (RPUSH, BLPOP), kept 30 s: a message for an instance that died
    # expires unread, and a reply pushed before its reader waits is not lost (unlike pub/sub).
    async def _push(self, name: str, message: dict[str, Any]) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.rpush(name, orjson.dumps(message))
            pipe.expire(name, 30)
            await self._run(pipe.execute())

    async def _pop(self, name: str, timeout_s: float) -> dict[str, Any] | None:
        try:  # a Redis that vanished without a reset must not hold a request (or the control loop) forever
            found = await asyncio.wait_for(self._run(self._blocking.blpop([name], timeout=max(0.01, timeout_s))),
                                           timeout_s + 2.0)
        except TimeoutError as error:
            raise StateUnavailable("Redis did not answer a blocking read in time") from error
        if found is None:
            return None
        try:
            message = orjson.loads(found[1])
        except orjson.JSONDecodeError:
            return None
        return message if isinstance(message, dict) else None

    async def send_control(self, instance: str, message: dict[str, Any]) -> None:
        await self._push(f"{self.prefix}control:{instance}", message)

    async def next_control(self, instance: str, timeout_s: float) -> dict[str, Any] | None:
        return await self._pop(f"{self.prefix}control:{instance}", timeout_s)

    async def reply(self, request_id: str, message: dict[str, Any]) -> None:
        await self._push(f"{self.prefix}reply:{request_id}", message)

    async def wait_reply(self, request_id: str, timeout_s: float) -> dict[str, Any] | None:
        return await self._pop(f"{self.prefix}reply:{request_id}", timeout_s)

    # Console sessions: one key each (its TTL is the session's), indexed by expiry in a sorted set per API key and
    # one for all, so one script can drop a key's oldest past its share, and the oldest of all past the limit.
    _PUT_SESSION = """
    local now, expires = tonumber(ARGV[3]), tonumber(ARGV[3]) + tonumber(ARGV[2])
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    for i, limit in ipairs({tonumber(ARGV[5]), tonumber(ARGV[6])}) do
      local index = KEYS[i + 1]
      redis.call('ZADD', index, expires, ARGV[4])
      redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
      local extra = redis.call('ZCARD', index) - limit
      if extra > 0 then
        for _, old in ipairs(redis.call('ZRANGE', index, 0, extra - 1)) do
          redis.call('DEL', ARGV[7] .. old)
          redis.call('ZREM', index, old)
        end
      end
      redis.call('PEXPIRE', index, ARGV[2])
    end
    return 1
    """

    async def put_session(self, handle: str, key_id: str, body: dict[str, Any], ttl_s: float, *,
                          per_key: int, limit: int) -> None:
        ttl_ms = max(1, math.ceil(ttl_s * 1000))
        await self._run(self._client.eval(
            self._PUT_SESSION, 3, f"{self.prefix}session:{handle}", f"{self.prefix}sessions:key:{key_id}",
            f"{self.prefix}sessions:all", orjson.dumps(body), ttl_ms, int(time.time() * 1000), handle, per_key,
            limit, f"{self.prefix}session:"))

    async def get_session(self, handle: str) -> dict[str, Any] | None:
        value = await self._run(self._client.get(f"{self.prefix}session:{handle}"))
        return _object(value) if value is not None else None

    async def drop_session(self, handle: str, key_id: str) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(f"{self.prefix}session:{handle}")
            pipe.zrem(f"{self.prefix}sessions:key:{key_id}", handle)
            pipe.zrem(f"{self.prefix}sessions:all", handle)
            await self._run(pipe.execute())

    async def aclose(self) -> None:
        if self._blocking is not self._client:
            # A blocking read cancelled mid-command leaves its connection busy: drop the pool's connections at once.
            await self._blocking.connection_pool.disconnect(inuse_connections=True)
            await self._blocking.aclose()
        await self._client.aclose()


def _sum(shares: list[bytes], legacy: bytes | None) -> float:
    return sum(float(share) for share in shares) + (float(legacy) if legacy else 0.0)


def _object(raw: bytes) -> dict[str, Any] | None:
    """A JSON object another instance wrote, or None."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
