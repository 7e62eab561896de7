"""Counting what the gateway drops or refuses, and logging it as summaries, never one line per frame.

A peer that sends garbage at 50 frames a second must not turn into 50 log lines a second (a log flood is a
denial of service of its own, and hides everything else). :class:`DropCounter` logs the first drop at once, with
its reason, then at most one summary line per interval with the count of each reason, and a last one on
:meth:`flush` (when the call ends). Reasons are short fixed texts chosen by the gateway; the number of distinct
reasons kept is bounded, the rest are counted as "other". A drop may carry a ``detail`` (what the peer sent, escaped
and truncated by the caller, e.g. an unknown event's name): it appears in the log lines only, a few examples per
reason per summary, never in the reason itself (a metric label).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Callable

MAX_REASONS = 16
MAX_EXAMPLES = 3  # details kept per reason between two summaries
MAX_DETAIL_CHARS = 60


class DropCounter:
    """Drops of one kind (``what``: "frame from twilio", "media stream") for one scope (a call, or the process)."""

    def __init__(self, logger: logging.Logger, what: str, interval_s: float, *, context: str = "",
                 clock: Callable[[], float] = time.monotonic,
                 counted: Callable[[str, int], None] | None = None) -> None:
        self._log = logger
        self._counted = counted  # also counts each drop elsewhere (a Prometheus counter), by reason
        self.what = what
        self.context = context  # e.g. "call_sid=CA..." (already safe to log)
        self.interval_s = interval_s
        self._clock = clock
        self._pending: Counter[str] = Counter()
        self._examples: dict[str, list[str]] = {}  # reason -> a few details since the last line
        self.totals: Counter[str] = Counter()
        self._last_log: float | None = None

    @property
    def total(self) -> int:
        return sum(self.totals.values())

    def drop(self, reason: str, count: int = 1, detail: str = "") -> None:
        if reason not in self.totals and len(self.totals) >= MAX_REASONS:
            reason = "other"
        self.totals[reason] += count
        if self._counted is not None:
            self._counted(reason, count)
        detail = detail[:MAX_DETAIL_CHARS]
        now = self._clock()
        if self._last_log is None:
            self._last_log = now
            self._log.warning("dropped %s%s: %s (further drops are summarised every %g s)",
                              self.what, self._context(), f"{reason} {detail}" if detail else reason,
                              self.interval_s)
            return
        self._pending[reason] += count
        if detail:
            examples = self._examples.setdefault(reason, [])
            if len(examples) < MAX_EXAMPLES and detail not in examples:
                examples.append(detail)
        if now - self._last_log >= self.interval_s:
            self.flush()

    def flush(self) -> None:
        """Log what was dropped since the last line, if anything."""
        if not self._pending:
            return
        count = sum(self._pending.values())
        reasons = ", ".join(f"{reason} x{n}{self._examples_of(reason)}" for reason, n in self._pending.most_common())
        self._log.warning("dropped %d %s%s since the last report: %s", count, self.what, self._context(), reasons)
        self._pending.clear()
        self._examples.clear()
        self._last_log = self._clock()

    def _examples_of(self, reason: str) -> str:
        examples = self._examples.get(reason)
        return f" (e.g. {' '.join(examples)})" if examples else ""

    def _context(self) -> str:
        return f" {self.context}" if self.context else ""
