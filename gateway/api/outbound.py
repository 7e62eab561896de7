"""What the API's handlers share (:class:`OutboundApi`: keys, rate limiters, the store, the Twilio client), how a
handler finds it, and which calls a key may see: the base of ``routes`` and ``control``, which import it, never
each other's handlers the other way round."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Coroutine

from starlette.requests import Request

from gateway.api.auth import (
    ApiKeys, AuthFailureLimiter, RateLimiter, RedisRateLimiter, TokenBucketRateLimiter, presented_key,
    retry_after_header,
)
from gateway.api.errors import ApiError
from gateway.config import Settings
from gateway.store import CallRecord, CallStore
from gateway.twilio.rest import TwilioRest
from gateway.twilio.security import StreamCredentials
from gateway.twilio.sids import is_call_sid


class OutboundApi:
    """What the API handlers share: keys, the rate limiter, the store, the Twilio client, background actions."""

    def __init__(self, settings: Settings, store: CallStore, twilio: TwilioRest,
                 rate_limiter: RateLimiter | None = None, *, credentials: StreamCredentials | None = None,
                 at_capacity: Callable[[], bool] = lambda: False, draining: Callable[[], bool] = lambda: False,
                 budget_exhausted: Callable[[], Awaitable[bool]] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.twilio = twilio
        self.credentials = credentials  # issues the stream credential of an answered outbound call
        self.at_capacity = at_capacity  # True when this instance holds MAX_CALLS calls
        self.draining = draining  # True once SIGTERM arrived: no new calls here
        # True once today's cost reached DAILY_BUDGET_USD; raises StateUnavailable when it cannot be read.
        self.budget_exhausted = budget_exhausted
        self.keys = ApiKeys(settings.api_keys, settings.operator_api_keys)
        # Failed authentications per client address: key guessing is throttled before any key is checked.
        self.auth_failures = AuthFailureLimiter(settings.api_auth_failures_per_minute)
        self._owns_rate_limiter = rate_limiter is None
        self.rate_limiter: RateLimiter = rate_limiter or _default_rate_limiter(settings)
        self._tasks: set[asyncio.Task[None]] = set()

    def authenticate(self, request: Request) -> str:
        """The caller's key id; ApiError 503 when no key is configured (never open by default); for a key that is
        not valid, 429 when that key, or unknown keys together, failed too often from the client's address this
        minute (API_AUTH_FAILURES_PER_MINUTE), 401 otherwise. A valid key is never throttled."""
        if not self.keys.enabled:
            raise ApiError(503, "outbound_disabled", "the HTTP API is disabled: set API_KEYS to enable it")
        authorization = request.headers.get("authorization")
        identifier = self.keys.authenticate(authorization)
        if identifier is not None:
            return identifier  # a valid key always authenticates, whatever failed from the same address
        # The peer, or the client a trusted proxy (TRUSTED_PROXY_IPS) names in X-Forwarded-For.
        client = request.client.host if request.client else None
        presented = presented_key(authorization)
        wait = self.auth_failures.retry_after(client, presented)
        if wait > 0:
            raise ApiError(429, "too_many_auth_failures",
                           "too many failed authentications from this address; retry later",
                           headers={"Retry-After": retry_after_header(wait)})
        self.auth_failures.record_failure(client, ApiKeys.failure_reason(authorization), presented)
        raise ApiError(401, "unauthorized", "missing or invalid bearer API key",
                       headers={"WWW-Authenticate": 'Bearer realm="gateway"'})

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a REST action after the webhook has been answered (Twilio waits at most 15 s for us)."""
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for task in tasks:
            task.cancel()
        if self._owns_rate_limiter:
            await self.rate_limiter.aclose()


def _default_rate_limiter(settings: Settings) -> RateLimiter:
    """Shared through Redis when REDIS_URL is set (several instances, one limit per key), else in-process."""
    per_minute = settings.outbound_rate_limit_per_minute
    if settings.redis_url:
        return RedisRateLimiter(settings.redis_url, per_minute)
    return TokenBucketRateLimiter(per_minute)


def outbound_api(request: Request) -> OutboundApi:
    """The API's shared state, from the app that took ``request``."""
    return request.app.state.gateway.outbound


async def known_call(request: Request, api: OutboundApi, key_id: str, *, operator: bool = False) -> CallRecord:
    """The call, if the caller's key placed it (or, with ``operator``, any call): one team's key neither reads nor
    hangs up another's calls."""
    call_sid = request.path_params["sid"]
    record = await api.store.get_call(call_sid) if is_call_sid(call_sid) else None
    if record is None or (record.api_key_id != key_id and not operator):
        raise ApiError(404, "call_not_found", f"no call {call_sid[:40]!r} is known to this gateway")
    return record
