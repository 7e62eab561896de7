"""How a call ends, decided in one place: the clock's checks (idle media, the time limit, the model's give-up, a
rollover due), the call budget, and what the shell reports that ends a call (a lease refused, Twilio's backlog past
its bound, no ``start``, per-call settings that cannot be read, a hang-up carried out, a socket closed).

The shell never ends a call on its own: it reports the fact with ``now_ms`` and carries out the :class:`EndCall`
that comes back. :attr:`Call.ending <gateway.call.core.Call.ending>` is the one record of the end.

A mixin of :class:`gateway.call.core.Call`: it works on the call's own state (see ``Call.__init__``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from gateway.call.limits import BUDGET_INSTRUCTIONS, TIME_LIMIT_INSTRUCTIONS
from gateway.call.part import CallPart
from gateway.call.outputs import (
    BudgetReached, CallTimeLimitReached, EndCall, LeaseRefused, Output, TwilioBacklogOverflowed,
)
from gateway.call.playback import PlaybackTracker

# Why a call got no slot in the shared state, and the reason it ends with (the call's record counts it refused).
LeaseCause = Literal["global_limit", "number_limit", "state_unavailable"]
STATE_UNAVAILABLE_REASON = "shared state unavailable"
LEASE_REFUSALS: dict[str, str] = {
    "global_limit": "at MAX_CALLS_GLOBAL",
    "number_limit": "at MAX_CALLS_PER_NUMBER",
    "state_unavailable": STATE_UNAVAILABLE_REASON,
}
TWILIO_NOT_READING = "Twilio socket not reading"
BUDGET_REASON = "the call budget was reached"


class CallEnding(CallPart):
    # ---- the clock: time limit and idle media ---------------------------------------------------

    def tick(self, now_ms: float) -> list[Output]:
        """Called by the shell about once a second: ends a call whose media stopped, and wraps up one that
        reached its time limit (the agent says goodbye; the call ends once it is heard, or after a grace)."""
        if self.ending is not None or self._started_ms is None:
            return []
        config = self.config
        last = self._last_media_ms if self._last_media_ms is not None else self._started_ms
        if config.media_idle_timeout_ms and now_ms - last >= config.media_idle_timeout_ms:
            return self._end(f"no media from Twilio for {config.media_idle_timeout_ms / 1000:g} s")
        out = self._model_schedule(now_ms)
        if self.ending is not None:
            return out  # gave up on the model
        out += self._rollover_due(now_ms)
        if not config.max_call_duration_ms:
            return out
        elapsed = now_ms - self._started_ms
        if elapsed >= config.max_call_duration_ms + config.wrap_up_grace_ms:
            return self._end(self._wrap_up_reason or "the call reached its time limit")
        if elapsed >= config.max_call_duration_ms and not self._wrap_up_started:
            self._wrap_up_started = True
            return [*out, CallTimeLimitReached(config.max_call_duration_ms),
                    *self._wrap_up("the call reached its time limit", TIME_LIMIT_INSTRUCTIONS)]
        return out

    # ---- the call budget ------------------------------------------------------------------------------------------

    def cost_reported(self, cost_usd: float, now_ms: float) -> list[Output]:
        """The call's cost so far (USD, as the shell's ledger priced the model's usage). At CALL_BUDGET_USD the agent
        wraps up: a goodbye, and the call ends once it is heard (or after the wrap-up grace, through the time limit's
        clock: the grace runs from now). Reported once; a call already wrapping up (its time limit) is not asked
        twice."""
        limit = self.config.call_budget_usd
        if self.ending is not None or not limit or self._budget_reached or cost_usd < limit:
            return []
        self._budget_reached = True
        out: list[Output] = [BudgetReached(cost_usd, limit)]
        if self._wrap_up_started:
            return out
        self._wrap_up_started = True
        if self._started_ms is not None:  # the grace runs from now
            limit_ms = int(now_ms - self._started_ms)
            self.config = replace(self.config, max_call_duration_ms=max(1, limit_ms))
        return out + self._wrap_up(BUDGET_REASON, BUDGET_INSTRUCTIONS)

    # ---- what the shell reports that ends a call -------------------------------------------------------------------

    def lease_refused(self, cause: LeaseCause, now_ms: float) -> list[Output]:
        """No concurrency slot (MAX_CALLS_GLOBAL, MAX_CALLS_PER_NUMBER), or the shared state did not answer in
        time: limits fail closed, the call ends at once (Twilio then says the message after ``</Connect>``)."""
        if self.ending is not None:
            return []
        return [LeaseRefused(cause), *self._end(LEASE_REFUSALS.get(cause, f"refused: {cause}"))]

    def twilio_backlog_overflowed(self, queued_bytes: int, now_ms: float) -> list[Output]:
        """More than the bound is queued for a Twilio socket that is not being read: the call ends."""
        if self.ending is not None:
            return []
        return [TwilioBacklogOverflowed(queued_bytes), *self._end(TWILIO_NOT_READING)]

    def start_timed_out(self, now_ms: float) -> list[Output]:
        """No ``start`` came within the shell's bound: a socket that sent none is not a call (refused, 1008).
        Nothing when a start came (the call goes on)."""
        if self.ending is not None or self.stream_sid:
            return []
        return self._end("no start event", refused=True)

    def call_settings_missing(self, now_ms: float) -> list[Output]:
        """An outbound call whose stored settings are gone: this callee must not get the inbound agent by mistake."""
        return self._end("unknown per-call settings", refused=True)

    def call_settings_unavailable(self, now_ms: float) -> list[Output]:
        """The store of per-call settings failed: the call ends with its message, not in silence."""
        return self._end("per-call settings unavailable")

    def hangup_finished(self, reason: str, now_ms: float) -> list[Output]:
        """A :class:`HangUp` was carried out (or could not be, at Twilio): the stream closes."""
        return self._end(reason)

    def twilio_closed(self, now_ms: float) -> list[Output]:
        """Twilio's socket closed (or a write to it failed)."""
        return self._end("twilio socket closed")

    def _end(self, reason: str, *, refused: bool = False) -> list[Output]:
        if self.ending is not None:
            return []
        self.ending = ending = EndCall(reason, refused)
        self._pending_audio.clear()
        self._pending_arrivals.clear()
        self._items.clear()
        self._queued_tools.clear()
        self._playback = PlaybackTracker()
        return [ending]
