"""When the call's model session is (re)opened, and when the call gives up on the model: a pure policy.

The shell reports what happened to each attempt (opened, refused or failed with an optional ``Retry-After``, lost
after it was up) with ``now_ms``; :class:`Reconnects` says when the next attempt may start, how long it may take,
and when the call gives up. Nothing here waits: the call core turns its answers into outputs (``ConnectModel``,
``WakeAt``, ``EndCall``) and the shell carries them out.

The rules (README "Model sessions"):

* an outage starts when the call starts (no session yet) or when a session is lost; when no session can be had for
  :data:`MODEL_DOWN_LIMIT_MS` from then, the call gives up, at that instant (never earlier, never later);
* a session that was up for :data:`MODEL_HEALTHY_SESSION_MS` is replaced at once; attempts that fail (or sessions
  that die at once) wait :data:`MODEL_RECONNECT_BACKOFF_MS` in turn, the last one repeated;
* a refusal's ``Retry-After`` is honoured: no attempt starts before it has passed. When that (or the backoff) is
  at or past the give-up instant, no attempt is made and the call gives up at that instant;
* an attempt is given at most :data:`MODEL_OPEN_TIMEOUT_MS`, and never beyond the give-up instant;
* more than :data:`MAX_MODEL_LOSSES_PER_MINUTE` sessions lost within a minute end the call at once.
"""

from __future__ import annotations

from collections import deque

from gateway.call.limits import (
    MAX_MODEL_LOSSES_PER_MINUTE,
    MODEL_DOWN_LIMIT_MS,
    MODEL_HEALTHY_SESSION_MS,
    MODEL_OPEN_TIMEOUT_MS,
    MODEL_RECONNECT_BACKOFF_MS,
)


class Reconnects:
    """The model-session schedule of one call (times are the core's ``now_ms``)."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled  # MODEL_RECONNECT: off, a lost session ends the call
        self.down_since: float | None = None  # no session since then (None: one is up, or the call has not begun)
        self.connecting = False  # an attempt is in flight at the shell
        self.next_attempt_ms: float | None = None  # when the next attempt may start (None: none is wanted)
        self.failures = 0  # attempts failed (or sessions dead at once) in a row
        self.attempts = 0  # attempts asked for, over the call
        self.last_reason = ""  # why the latest attempt or session ended
        self.give_up_reason = ""  # set once the call must end for want of a model
        self._up_since: float | None = None
        self._losses: deque[float] = deque()  # when sessions were lost, over the last minute

    @property
    def give_up_at_ms(self) -> float | None:
        """When the call gives up if no session opens before (None: a session is up)."""
        return None if self.down_since is None else self.down_since + MODEL_DOWN_LIMIT_MS

    def start(self, now_ms: float) -> None:
        """The call began: the first attempt starts now, and the outage is counted from now."""
        self.down_since = now_ms
        self.next_attempt_ms = now_ms

    def opened(self, now_ms: float) -> None:
        self.down_since = self.next_attempt_ms = None
        self.connecting = False
        self._up_since = now_ms

    def failed(self, reason: str, now_ms: float, retry_after_ms: float | None = None) -> None:
        """An attempt failed (refused, timed out, a network error); ``retry_after_ms``: the refusal's Retry-After."""
        self.connecting = False
        self.last_reason = reason
        self.failures += 1
        wait = max(self._backoff_ms(), retry_after_ms or 0.0)
        self.next_attempt_ms = now_ms + wait
        if not self.enabled:
            self.give_up_reason = "MODEL_RECONNECT is off"

    def lost(self, reason: str, now_ms: float) -> None:
        """A session that was up ended (it died, or expired): a new outage begins now."""
        self.last_reason = reason
        self._losses.append(now_ms)
        while self._losses and now_ms - self._losses[0] > 60_000:
            self._losses.popleft()
        healthy = self._up_since is not None and now_ms - self._up_since >= MODEL_HEALTHY_SESSION_MS
        self.failures = 0 if healthy else self.failures + 1
        self._up_since = None
        self.down_since = now_ms
        self.next_attempt_ms = now_ms + self._backoff_ms()
        if not self.enabled:
            self.give_up_reason = "MODEL_RECONNECT is off"
        elif len(self._losses) > MAX_MODEL_LOSSES_PER_MINUTE:
            self.give_up_reason = f"{len(self._losses)} model sessions lost within a minute"

    def check(self, now_ms: float) -> tuple[str, float]:
        """What to do now: ``("give_up", 0)``, ``("connect", timeout_ms)`` (the attempt starts now), or
        ``("wait", until_ms)`` (nothing before then; ``inf``: nothing is scheduled)."""
        if self.give_up_reason:
            return "give_up", 0.0
        deadline = self.give_up_at_ms
        if deadline is None:
            return "wait", float("inf")
        if now_ms >= deadline:
            self.give_up_reason = f"no model session for {MODEL_DOWN_LIMIT_MS / 1000:g} s"
            return "give_up", 0.0
        due = self.next_attempt_ms
        if self.connecting or due is None or due >= deadline:
            return "wait", deadline  # an attempt is in flight (it ends by the deadline), or none fits before it
        if now_ms < due:
            return "wait", due
        self.connecting = True
        self.next_attempt_ms = None
        self.attempts += 1
        return "connect", min(MODEL_OPEN_TIMEOUT_MS, deadline - now_ms)

    def _backoff_ms(self) -> float:
        if not self.failures:
            return 0.0
        return float(MODEL_RECONNECT_BACKOFF_MS[min(self.failures, len(MODEL_RECONNECT_BACKOFF_MS)) - 1])
