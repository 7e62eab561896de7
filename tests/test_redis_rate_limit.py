"""The shared (Redis) rate limiter, against a real Redis: redis://127.0.0.1:6379/15 or GATEWAY_TEST_REDIS_URL.

Every test uses its own key prefix and deletes only its own keys. Skipped (with the reason) when Redis is down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from typing import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.api.auth import RateLimiterUnavailable, RedisRateLimiter, key_id
from gateway.config import ConfigError, Settings
from gateway.server.runner import free_port
from tests.test_outbound_api import API_KEY, OTHER_KEY, error_code, outbound, place

REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
DEFAULT_PREFIX = "gateway:ratelimit:"


async def _redis_reachable() -> str | None:
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        await client.ping()
        return None
    except Exception as error:  # noqa: BLE001 - any failure means "skip"
        return f"Redis not reachable at {REDIS_URL}: {type(error).__name__}: {error}"
    finally:
        await client.aclose()


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    reason = await _redis_reachable()
    if reason:
        pytest.skip(reason)
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def prefix(redis_client: aioredis.Redis) -> AsyncIterator[str]:
    """A prefix no other test (or run) uses; its keys are deleted afterwards."""
    unique = f"gateway-test:{uuid.uuid4().hex}:ratelimit:"
    yield unique
    keys = [key async for key in redis_client.scan_iter(match=f"{unique}*")]
    if keys:
        await redis_client.delete(*keys)


async def test_allows_up_to_capacity_then_waits(prefix, redis_client):
    now = [1000.0]
    limiter = RedisRateLimiter(REDIS_URL, 6, prefix=prefix, clock=lambda: now[0])  # a token every 10 s
    try:
        assert [await limiter.acquire("k") for _ in range(6)] == [0.0] * 6
        assert await limiter.acquire("k") == pytest.approx(10.0)
        now[0] += 5.0
        assert await limiter.acquire("k") == pytest.approx(5.0)
        now[0] += 5.0
        assert await limiter.acquire("k") == 0.0
        assert await limiter.acquire("other") == 0.0  # each key has its own bucket
        ttl_ms = await redis_client.pttl(f"{prefix}k")
        assert 0 < ttl_ms <= 61_000  # idle buckets disappear once they would be full again
    finally:
        await limiter.aclose()


async def test_refills_over_real_time_with_the_redis_clock(prefix):
    limiter = RedisRateLimiter(REDIS_URL, 60, prefix=prefix)  # one token per second, Redis TIME as the clock
    try:
        assert all([await limiter.acquire("k") == 0.0 for _ in range(60)])
        wait = await limiter.acquire("k")
        assert 0 < wait <= 1.0
        await asyncio.sleep(1.1)
        assert await limiter.acquire("k") == 0.0
        assert await limiter.acquire("k") > 0
    finally:
        await limiter.aclose()


async def test_two_instances_share_one_bucket(prefix):
    first = RedisRateLimiter(REDIS_URL, 4, prefix=prefix)
    second = RedisRateLimiter(REDIS_URL, 4, prefix=prefix)  # another process, same Redis
    try:
        results = await asyncio.gather(*(limiter.acquire("shared") for limiter in (first, second) * 3))
        assert sorted(wait == 0.0 for wait in results) == [False, False, True, True, True, True]
        assert await first.acquire("shared") > 0 and await second.acquire("shared") > 0
    finally:
        await first.aclose()
        await second.aclose()


async def test_unreachable_redis_raises_rate_limiter_unavailable():
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{free_port()}/0", 10, timeout_s=1)
    try:
        with pytest.raises(RateLimiterUnavailable):
            await limiter.acquire("k")
    finally:
        await limiter.aclose()


async def test_http_api_shares_the_limit_across_two_gateways(redis_client):
    # The gateways use the default prefix; delete exactly the two keys' buckets before and after.
    buckets = [f"{DEFAULT_PREFIX}{key_id(key)}" for key in (API_KEY, OTHER_KEY)]
    await redis_client.delete(*buckets)
    try:
        async with outbound(outbound_rate_limit_per_minute=2, redis_url=REDIS_URL) as (_, fake_a, client_a), \
                outbound(outbound_rate_limit_per_minute=2, redis_url=REDIS_URL) as (_, fake_b, client_b):
            assert (await place(client_a)).status_code == 201
            assert (await place(client_b)).status_code == 201
            for client in (client_a, client_b):  # the bucket is empty on both instances
                limited = await place(client)
                assert (limited.status_code, error_code(limited)) == (429, "rate_limited")
                assert 1 <= int(limited.headers["retry-after"]) <= 30
            assert (await place(client_b, key=OTHER_KEY)).status_code == 201  # each key has its own bucket
            assert len(fake_a.calls) == 1 and len(fake_b.calls) == 2
            assert await redis_client.exists(*buckets) == 2
    finally:
        await redis_client.delete(*buckets)


async def test_http_api_fails_closed_with_503_when_redis_is_unreachable(caplog):
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    with caplog.at_level(logging.ERROR, logger="gateway.api"):
        async with outbound(redis_url=unreachable) as (_, fake, client):
            response = await place(client)
            assert (response.status_code, error_code(response)) == (503, "rate_limiter_unavailable")
            assert not fake.calls and fake.requests == []  # nothing reached Twilio
    assert any("rate limiter unavailable" in record.getMessage() for record in caplog.records)


def test_redis_url_setting():
    assert Settings.from_env({}).redis_url == ""
    assert Settings.from_env({"REDIS_URL": " rediss://:pw@cache:6380/2 "}).redis_url == "rediss://:pw@cache:6380/2"
    for bad in ("http://cache:6379", "cache:6379", "redis://"):
        with pytest.raises(ConfigError, match="REDIS_URL"):
            Settings.from_env({"REDIS_URL": bad})
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"REDIS_URL": "http://user:hunter2@cache"})
    assert "hunter2" not in str(raised.value)
    assert "hunter2" not in repr(Settings.from_env({"REDIS_URL": "redis://:hunter2@cache:6379/0"}))

