"""In-process shared state: the embedded default (one process, nothing to install)."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable

DEFAULT_MAX_CLAIMS = 100_000


class MemoryState:
    """Claims kept in insertion order with their expiry; bounded: past ``max_claims`` the oldest go first.

    Evicting a claim early could let a credential be used twice, so the bound is far above what one process
    can hold (a credential lives minutes; ``MAX_CALLS`` streams at a time)."""

    def __init__(self, *, max_claims: int = DEFAULT_MAX_CLAIMS, clock: Callable[[], float] = time.monotonic) -> None:
        self._claims: OrderedDict[str, float] = OrderedDict()
        self._max_claims = max_claims
        self._clock = clock
        self._totals: dict[str, tuple[float, float]] = {}  # key -> (total, expires at); a few keys (one a day)

    async def claim_once(self, key: str, ttl_s: float) -> bool:
        now = self._clock()
        self._expire(now)
        if key in self._claims:
            return False
        self._claims[key] = now + ttl_s
        while len(self._claims) > self._max_claims:
            self._claims.popitem(last=False)
        return True

    def _expire(self, now: float) -> None:
        # Claims are added with one TTL per caller, so expiry order is nearly insertion order: stop at the first live one.
        while self._claims:
            key, expires = next(iter(self._claims.items()))
            if expires > now:
                break
            del self._claims[key]

    async def add_to_total(self, key: str, amount: float, ttl_s: float) -> float:
        now = self._clock()
        self._totals = {k: v for k, v in self._totals.items() if v[1] > now}
        total, expires = self._totals.get(key, (0.0, now + ttl_s))
        self._totals[key] = (total + amount, expires)
        return total + amount

    async def get_total(self, key: str) -> float:
        total, expires = self._totals.get(key, (0.0, 0.0))
        return total if expires > self._clock() else 0.0

    async def aclose(self) -> None:
        self._claims.clear()
        self._totals.clear()
