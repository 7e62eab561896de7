"""Bearer API keys (constant-time check against every configured key) and the per-key rate limit."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from typing import Callable, Iterable, Protocol


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


class RateLimiter(Protocol):
    """The seam for a shared limiter (Redis) when several instances serve the API."""

    def acquire(self, key: str) -> float:
        """0 if the request may go ahead (a token is taken), else the seconds to wait before retrying."""
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

    def acquire(self, key: str) -> float:
        now = self._clock()
        tokens, last = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
