"""The failed-login throttle never locks out a valid key (issue 17): one neighbour behind the same NAT failing
again and again, or guessing many keys, is throttled; a colleague's good key from the same address still works,
for API bearer keys and the console login alike. Memory stays bounded under a flood of distinct keys.
"""

from __future__ import annotations

import httpx

from gateway.api.auth import ADDRESS_FAILURE_FACTOR, AuthFailureLimiter
from tests.test_api_hardening import API_KEY, JSON, TO, error_code, from_address, outbound

NAT = "203.0.113.50"  # the office's one public address: the neighbour and the colleague share it
PER_KEY = 3


async def test_a_valid_bearer_key_is_never_throttled_whatever_the_neighbours_fail():
    async with outbound(api_auth_failures_per_minute=PER_KEY) as (_, fake, client):
        good = from_address(NAT, JSON)

        async def fail(key: str) -> httpx.Response:
            headers = from_address(NAT, {"authorization": f"Bearer {key}", "content-type": "application/json"})
            return await client.post("/calls", json={"to": TO}, headers=headers)

        # The neighbour's stale key: 401 three times, then 429 for that key; the colleague's key works throughout.
        assert [(await fail("stale-key-000000000000000")).status_code for _ in range(PER_KEY + 2)] == \
            [401] * PER_KEY + [429] * 2
        assert (await client.post("/calls", json={"to": TO}, headers=good)).status_code == 201
        # Another unknown key from the address is still answered 401 (counted per key) ...
        assert (await fail("typo-key-1111111111111111")).status_code == 401
        # ... until unknown keys from the address together reach their limit: then every unknown key waits.
        statuses = [(await fail(f"guess-{n:020d}")).status_code for n in range(PER_KEY * ADDRESS_FAILURE_FACTOR)]
        assert statuses.count(429) > 0 and statuses[-1] == 429
        response = await fail("another-guess-222222222222")
        assert (response.status_code, error_code(response)) == (429, "too_many_auth_failures")
        assert 1 <= int(response.headers["retry-after"]) <= 60
        # No header at all is an unknown key too.
        assert (await client.get("/calls", headers=from_address(NAT, {}))).status_code == 429
        # The valid key: still placed, and reads still answered.
        assert (await client.post("/calls", json={"to": TO}, headers=good)).status_code == 201
        assert (await client.get("/calls", headers=from_address(NAT, JSON))).status_code == 200
        assert len(fake.calls) == 2


async def test_the_console_login_with_a_valid_key_works_while_a_neighbour_is_throttled():
    async with outbound(api_auth_failures_per_minute=PER_KEY) as (gateway, _, _client):
        async with httpx.AsyncClient(base_url=gateway.http_url, timeout=30,
                                     headers={"Origin": gateway.http_url, "x-forwarded-for": NAT}) as browser:
            for n in range(PER_KEY * ADDRESS_FAILURE_FACTOR + 3):
                await browser.post("/console/login", data={"api_key": f"neighbour-guess-{n:012d}"})
            refused = await browser.post("/console/login", data={"api_key": "neighbour-guess-final0000"})
            assert refused.status_code == 429 and "set-cookie" not in refused.headers
            logged_in = await browser.post("/console/login", data={"api_key": API_KEY})
            assert logged_in.status_code == 303 and logged_in.headers["location"] == "/console/live"
            assert "set-cookie" in logged_in.headers


def test_memory_is_bounded_under_a_flood_of_distinct_keys():
    now = [0.0]
    limiter = AuthFailureLimiter(PER_KEY, max_clients=100, clock=lambda: now[0])

    def attempt(address: str, key: str) -> None:
        # What the API does with a key that failed: ask first, record only if not refused.
        if limiter.retry_after(address, key) == 0:
            limiter.record_failure(address, "unknown API key", key)

    for n in range(10_000):  # one address, ten thousand keys: refused once the address's limit is reached
        attempt("198.51.100.1", f"key-{n}")
    assert len(limiter._pairs) == PER_KEY * ADDRESS_FAILURE_FACTOR
    for n in range(10_000):  # ten thousand addresses, a new key each
        attempt(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}", f"key-{n}")
    assert len(limiter) <= 100 and len(limiter._pairs) <= 100
    # Per key and address: one key's failures do not throttle another key's, below the address limit.
    fresh = AuthFailureLimiter(2, clock=lambda: now[0])
    fresh.record_failure("192.0.2.1", "unknown API key", "a")
    fresh.record_failure("192.0.2.1", "unknown API key", "a")
    assert fresh.retry_after("192.0.2.1", "a") > 0 and fresh.retry_after("192.0.2.1", "b") == 0
    now[0] += 60
    assert fresh.retry_after("192.0.2.1", "a") == 0  # the window is over
