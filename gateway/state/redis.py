"""Shared state in Redis (``REDIS_URL``): every instance behind a load balancer sees the same claims."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import orjson

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.state.base import StateUnavailable

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

    async def add_to_total(self, key: str, amount: float, ttl_s: float) -> float:
        name = f"{self.prefix}total:{key}"
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.incrbyfloat(name, amount)
                pipe.expire(name, max(1, math.ceil(ttl_s)), nx=True)
                total, _ = await pipe.execute()
        except (RedisError, OSError) as error:
            raise StateUnavailable(f"{type(error).__name__}: {error}") from error
        return float(total)

    async def get_total(self, key: str) -> float:
        try:
            value = await self._client.get(f"{self.prefix}total:{key}")
        except (RedisError, OSError) as error:
            raise StateUnavailable(f"{type(error).__name__}: {error}") from error
        return float(value) if value is not None else 0.0

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
        await self._run(self._client.set(f"{self.prefix}call:{call_sid}", instance, px=max(1, math.ceil(ttl_s * 1000))))

    async def call_holder(self, call_sid: str) -> str | None:
        value = await self._run(self._client.get(f"{self.prefix}call:{call_sid}"))
        return value.decode() if isinstance(value, bytes) else value

    _UNREGISTER = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"

    async def unregister_call(self, call_sid: str, instance: str) -> None:
        await self._run(self._client.eval(self._UNREGISTER, 1, f"{self.prefix}call:{call_sid}", instance))

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

    async def aclose(self) -> None:
        if self._blocking is not self._client:
            # A blocking read cancelled mid-command leaves its connection busy: drop the pool's connections at once.
            await self._blocking.connection_pool.disconnect(inuse_connections=True)
            await self._blocking.aclose()
        await self._client.aclose()
