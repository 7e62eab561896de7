"""Shared state in Redis (``REDIS_URL``): every instance behind a load balancer sees the same claims."""

from __future__ import annotations

import math
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.state.base import StateUnavailable

DEFAULT_PREFIX = "gateway:"


class RedisState:
    """``SET <prefix>claim:<key> 1 NX PX <ttl>``: atomic in Redis, so exactly one instance wins a claim."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, timeout_s: float = 2.0, client: Any = None) -> None:
        self.prefix = prefix
        self._client = client if client is not None else aioredis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)

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

    async def aclose(self) -> None:
        await self._client.aclose()
