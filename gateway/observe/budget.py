"""The daily cost budget (``DAILY_BUDGET_USD``), one total per UTC day shared by every instance.

The running total lives in :mod:`gateway.state` (in-process by default, Redis with ``REDIS_URL``, or SQLite), as
one share per process: each process writes its own running sum of the day's cost, so a write repeated after a
timeout or an outage never counts anything twice. At 80 % a warning is logged (once a day per process) and the
``gateway_daily_budget_used_ratio`` gauge says how close it is; at 100 % new calls are refused politely.

When the shared state cannot answer:

* the total cannot be read, which is not a reached budget: :meth:`DailyBudget.check` says ``UNAVAILABLE``, and
  the caller refuses the call with its own reason (a limit fails closed) and says so truthfully;
* the cost of the calls in progress is kept in-process (a running sum per day: bounded) and written when the state
  answers again, by the writer (retrying every :data:`RETRY_S` seconds) or the next read, whichever comes first;
* :meth:`DailyBudget.health` (``/readyz``, ``/healthz``) reports it, reading the state at most once a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Callable

from gateway.observe import metrics
from gateway.state.base import SharedState, StateDeadline, StateUnavailable

log = logging.getLogger("gateway.budget")

WARN_AT = 0.8
_TOTAL_TTL_S = 2 * 86400  # a day's total outlives its day (late responses), then goes
_KEEP_DAYS_S = 2 * 86400  # unwritten cost older than the total's own life is dropped (the total is gone too)
RETRY_S = 1.0  # unwritten cost is retried this often while the state is away
HEALTH_TTL_S = 1.0  # /readyz and /healthz read the state at most this often

OK, REACHED, UNAVAILABLE = "ok", "reached", "unavailable"


class BudgetUnavailable(StateUnavailable):
    """Today's total cannot be read: new calls are refused (fail closed), for that reason and not the budget."""


class DailyBudget:
    def __init__(self, shared: SharedState, limit_usd: float, *, clock: Callable[[], float] = time.time,
                 retry_s: float = RETRY_S) -> None:
        self.shared = shared
        self.limit_usd = limit_usd
        self._clock = clock
        self._retry_s = retry_s
        self._warned_day = ""
        self._contributor = uuid.uuid4().hex  # this process's share of each day's total
        self._spent: dict[str, float] = {}  # day -> this process's cost that day (its share, as it should be)
        self._written: dict[str, float] = {}  # day -> the share the shared state has confirmed
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self.available = True  # the shared state answered the last read or write of the total
        metrics.SHARED_STATE_UP.set(1)
        self._health: dict[str, Any] | None = None
        self._health_at = -HEALTH_TTL_S
        self._health_lock = asyncio.Lock()

    def _day(self) -> str:
        return datetime.fromtimestamp(self._clock(), UTC).strftime("%Y-%m-%d")

    def unwritten_usd(self) -> float:
        """Cost counted here and not yet in the shared total (kept until the state answers)."""
        return sum(spent - self._written.get(day, 0.0) for day, spent in self._spent.items())

    # ---- writing --------------------------------------------------------------------------------------------

    async def add(self, usd: float) -> None:
        """Count ``usd`` of model cost towards today (whether or not a limit is set: the total is reported).
        Counted here at once and written by the budget's own writer: a call that ends (its tasks cancelled) loses
        nothing, and a shared state that does not answer gets it when it answers again."""
        if usd <= 0:
            return
        day = self._day()
        self._spent[day] = self._spent.get(day, 0.0) + usd
        self._forget_old_days()
        metrics.DAILY_COST_UNWRITTEN.set(self.unwritten_usd())
        if not self._closed and (self._writer is None or self._writer.done()):
            self._writer = asyncio.create_task(self._write_until_written(), name="daily-budget-writer")

    async def _write_until_written(self) -> None:
        # One writer per process: cost that arrives meanwhile goes with its next write (a share carries it all).
        # While the state is away it retries every RETRY_S: every new call is refused then, so the calls in
        # progress may be the last to add anything, and nobody else would write.
        while self.unwritten_usd() > 0:
            if not await self._write_unwritten():
                await asyncio.sleep(self._retry_s)
                self._forget_old_days()

    async def _write_unwritten(self, deadline: StateDeadline | None = None) -> bool:
        """Write every day's share the state has not confirmed; False when the state did not answer."""
        for day in sorted(day for day, spent in self._spent.items() if spent > self._written.get(day, 0.0)):
            share = self._spent[day]
            call = self.shared.set_share(f"cost:{day}", self._contributor, share, _TOTAL_TTL_S)
            try:
                total = await (deadline.run(call) if deadline is not None else call)
            except StateUnavailable as error:
                self._unavailable(error)
                metrics.DAILY_COST_UNWRITTEN.set(self.unwritten_usd())
                return False
            late = share - self._written.get(day, 0.0)
            if not self.available:
                log.warning("the shared state answers again: %.4f USD of %s's cost, kept here meanwhile, is now in "
                            "the daily total", late, day)
            # Concurrent writes may confirm out of order; the stored share only grows, and so does this.
            self._written[day] = max(self._written.get(day, 0.0), share)
            self._available()
            if day == self._day():
                self._report(day, total)
        metrics.DAILY_COST_UNWRITTEN.set(self.unwritten_usd())
        return True

    def _forget_old_days(self) -> None:
        oldest = datetime.fromtimestamp(self._clock() - _KEEP_DAYS_S, UTC).strftime("%Y-%m-%d")
        for day in [day for day in self._spent if day < oldest]:
            lost = self._spent.pop(day) - self._written.pop(day, 0.0)
            if lost > 0:
                log.error("%.4f USD of %s's cost was never written to the daily total (the shared state did not "
                          "answer for two days): dropped", lost, day)

    # ---- reading --------------------------------------------------------------------------------------------

    async def check(self, deadline: StateDeadline | None = None) -> str:
        """``OK``, ``REACHED`` (today's total reached the limit) or ``UNAVAILABLE`` (it cannot be read in time),
        within ``deadline`` (a new one of 300 ms by default). No limit: ``OK``, without asking the state."""
        if not self.limit_usd:
            return OK
        return await self._read(deadline or StateDeadline())

    async def exhausted(self) -> bool:
        """True when today's total reached the limit; raises :class:`BudgetUnavailable` when it cannot be read."""
        status = await self.check()
        if status == UNAVAILABLE:
            raise BudgetUnavailable("today's cost total cannot be read")
        return status == REACHED

    async def _read(self, deadline: StateDeadline) -> str:
        day = self._day()
        # Unwritten cost first (the state is back, or this fails as the read would): the total is then whole.
        if self._spent.get(day, 0.0) > self._written.get(day, 0.0) and not await self._write_unwritten(deadline):
            return UNAVAILABLE
        try:
            total = await deadline.run(self.shared.get_total(f"cost:{day}"))
        except StateUnavailable as error:
            self._unavailable(error)
            return UNAVAILABLE
        self._available()
        self._report(day, total)
        return REACHED if self.limit_usd and total >= self.limit_usd else OK

    async def health(self) -> dict[str, Any]:
        """What ``/readyz`` and ``/healthz`` say about the shared state: read now (within 300 ms), or at most
        :data:`HEALTH_TTL_S` ago; concurrent probes share one read."""
        async with self._health_lock:
            if self._health is None or time.monotonic() - self._health_at >= HEALTH_TTL_S:
                status = await self._read(StateDeadline())
                self._health = {"available": status != UNAVAILABLE}
                if self.limit_usd:
                    self._health["daily_budget"] = status
                self._health_at = time.monotonic()
        return {**self._health, "unwritten_cost_usd": round(self.unwritten_usd(), 6)}

    # ---- what the operator sees -----------------------------------------------------------------------------

    def _unavailable(self, error: Exception) -> None:
        if self.available:  # once per outage, not once per call refused
            log.error("the shared state does not answer (%s): the daily cost total can be neither read nor written; "
                      "%sthe cost of calls in progress is kept here until it answers", error,
                      "new calls are refused (DAILY_BUDGET_USD: a limit fails closed); " if self.limit_usd else "")
        self.available = False
        metrics.SHARED_STATE_UP.set(0)

    def _available(self) -> None:
        if not self.available:
            log.warning("the shared state answers again: the daily cost total is readable")
        self.available = True
        metrics.SHARED_STATE_UP.set(1)

    def _report(self, day: str, total: float) -> None:
        if not self.limit_usd:
            return
        ratio = total / self.limit_usd
        metrics.DAILY_BUDGET_USED.set(ratio)
        if ratio >= WARN_AT and self._warned_day != day:
            self._warned_day = day
            log.warning("daily budget %.0f %% used: %.2f of %.2f USD (DAILY_BUDGET_USD); new calls are refused at "
                        "100 %%", ratio * 100, total, self.limit_usd)

    async def aclose(self) -> None:
        """Stop retrying; a last attempt (bounded) to write what is unwritten, else say how much is lost."""
        self._closed = True
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        if self.unwritten_usd() > 0 and not await self._write_unwritten(StateDeadline(1.0)):
            log.error("%.4f USD of cost was never written to the daily total (the shared state did not answer "
                      "before shutdown)", self.unwritten_usd())
