"""The daily cost budget (``DAILY_BUDGET_USD``), one total per UTC day shared by every instance.

The running total lives in :mod:`gateway.state` (in-process by default, Redis with ``REDIS_URL``), added to as
each response's usage arrives. At 80 % a warning is logged (once a day per process) and the
``gateway_daily_budget_used_ratio`` gauge says how close it is; at 100 % new calls are refused politely. When the
shared state cannot answer, new calls are refused (a limit fails closed) and calls in progress go on.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Callable

from gateway.observe import metrics
from gateway.state.base import SharedState, StateUnavailable

log = logging.getLogger("gateway.budget")

WARN_AT = 0.8
_TOTAL_TTL_S = 2 * 86400  # a day's total outlives its day (late responses), then goes


class DailyBudget:
    def __init__(self, shared: SharedState, limit_usd: float, *, clock: Callable[[], float] = time.time) -> None:
        self.shared = shared
        self.limit_usd = limit_usd
        self._clock = clock
        self._warned_day = ""

    def _day(self) -> str:
        return datetime.fromtimestamp(self._clock(), timezone.utc).strftime("%Y-%m-%d")

    async def add(self, usd: float) -> None:
        """Count ``usd`` of model cost towards today (whether or not a limit is set: the total is reported)."""
        if usd <= 0:
            return
        day = self._day()
        try:
            total = await self.shared.add_to_total(f"cost:{day}", usd, _TOTAL_TTL_S)
        except StateUnavailable as error:
            log.error("the daily cost total could not be updated (%s): %.4f USD not counted", error, usd)
            return
        self._report(day, total)

    def _report(self, day: str, total: float) -> None:
        if not self.limit_usd:
            return
        ratio = total / self.limit_usd
        metrics.DAILY_BUDGET_USED.set(ratio)
        if ratio >= WARN_AT and self._warned_day != day:
            self._warned_day = day
            log.warning("daily budget %.0f %% used: %.2f of %.2f USD (DAILY_BUDGET_USD); new calls are refused at "
                        "100 %%", ratio * 100, total, self.limit_usd)

    async def exhausted(self) -> bool:
        """True when today's total reached the limit, or cannot be read (no limit: never)."""
        if not self.limit_usd:
            return False
        day = self._day()
        try:
            total = await self.shared.get_total(f"cost:{day}")
        except StateUnavailable as error:
            log.error("the daily cost total could not be read (%s): refusing new calls", error)
            return True
        self._report(day, total)
        return total >= self.limit_usd
