"""The model sessions of a call: connecting one (and configuring it), losing one, replacing one ahead of its
limit (make-before-break rollover), and the caller-audio clock a session's events are measured against; when to
(re)connect and when to give up (decided by :class:`gateway.call.reconnect.Reconnects`), and the comfort noise the
caller hears while there is no session.

A mixin of :class:`gateway.call.core.Call`: it works on the call's own state (see ``Call.__init__``).
"""

from __future__ import annotations

from typing import Any

from gateway.audio.convert import MULAW_BYTES_PER_MS, join_audio
from gateway.call.limits import (
    COMFORT_NOISE, COMFORT_NOISE_AFTER_MS, COMFORT_NOISE_LEAD_MS, COMFORT_NOISE_MS, MAX_QUEUED_TOOLS,
    RESUME_INSTRUCTIONS, ROLLOVER_RETRY_MS,
)
from gateway.call.part import CallPart
from gateway.call.outputs import (
    ConnectModel, ModelGaveUp, ModelRolledOver, ModelSessionLost, Output, Peer, PrepareRollover, RolloverFailed,
    Send, SwitchModel, WakeAt,
)
from gateway.call.state import GreetingPhase, LinePhase, LinkPhase, ResponsePhase
from gateway.realtime import events as rt
from gateway.twilio import media as tw


class ModelSessions(CallPart):
    def model_connected(self, now_ms: float) -> list[Output]:
        """The model socket is open: configure the session, then flush caller audio held meanwhile.

        In a replacement session the conversation so far is re-created as text items first (a new session
        starts empty; audio cannot be carried over), so the agent goes on where it was."""
        if self.ended:
            return []  # opened as the call gave up: the shell closes it
        link = self._link
        link.phase = LinkPhase.READY
        link.session += 1
        link.started_ms = now_ms
        link.reconnects.opened(now_ms)
        # Comfort noise still queued at Twilio plays on (no dead air while the session is configured and answers);
        # the agent's first audio clears what is left of it (_agent_audio), so its words are not queued behind it.
        out: list[Output] = [Send(Peer.MODEL, message) for message in self._session_setup(carry=self._link.session > 1)]
        self._restart_input_clock()
        for frame_ms, arrived in self._pending_arrivals:
            self._input_ms += frame_ms
            self._arrivals.append(self._input_ms, arrived)
        self._pending_arrivals.clear()
        if self._pending_audio:
            # One message: held audio must reach the model before (and not interleaved with) live frames.
            out.append(Send(Peer.MODEL, rt.input_audio_append(join_audio(self._pending_audio))))
        self._pending_audio.clear()
        self._pending_audio_bytes = 0
        out.extend(Send(Peer.MODEL, item) for item in self._held_items)
        self._held_items.clear()
        return out + self._request_response_if_ready()

    def _restart_input_clock(self) -> None:
        self._input_ms = 0
        self._arrivals.clear()

    def _caller_stopped_at(self, audio_end_ms: int, now_ms: float) -> float:
        """When the frame holding the session's input audio position ``audio_end_ms`` arrived (``now_ms`` when
        it is no longer known)."""
        return min(self._arrivals.arrival_of(audio_end_ms, now_ms), now_ms)

    def _session_setup(self, *, carry: bool) -> list[dict[str, Any]]:
        """What configures a model session: the session.update, then (for a replacement) the conversation so far,
        as text, in conversation order, agent answers cut to what the caller heard, tool calls and results."""
        messages = [self.config.session_update]
        if carry:
            messages.extend(rt.text_item(role, text) for role, text in self._conversation.items())
        return messages

    # ---- make-before-break rollover -----------------------------------------------------------

    def _quiet(self) -> bool:
        """Nobody is talking and nothing is in flight: a session can be swapped for another unheard."""
        responses = self._responses
        return (self._link.phase is not LinkPhase.DOWN and not self.ended and responses.active is None
                and responses.phase is not ResponsePhase.REQUESTED and not responses.wanted and not self._caller_speaking
                and not self._playback.awaiting_echoes and not self._running_tools and not self._orphaned_tools
                and self._line.control is None
                and (self._greeting.phase is GreetingPhase.DONE or not self.config.agent_speaks_first))

    def _rollover_due(self, now_ms: float) -> list[Output]:
        config = self.config
        started = self._link.started_ms
        if not config.session_limit_ms or started is None or self._link.phase is LinkPhase.PREPARING \
                or now_ms < self._link.rollover_not_before_ms:
            return []
        margin = min(config.rollover_margin_ms, config.session_limit_ms // 2)
        if now_ms - started < config.session_limit_ms - margin or not self._quiet():
            return []
        self._link.phase = LinkPhase.PREPARING
        return [PrepareRollover(f"session {(now_ms - started) / 1000:.0f} s old, limit {config.session_limit_ms / 1000:g} s")]

    def rollover_setup(self, now_ms: float) -> list[Output]:
        """What configures the session being prepared: sent to it (:attr:`Peer.NEXT_MODEL`), not to the current
        one. Nothing once the call ended, or when no rollover is pending (a loss dropped it): the shell's prepare
        then fails on its own timeout and reports it."""
        if self.ending is not None or self._link.phase is not LinkPhase.PREPARING:
            return []
        return [Send(Peer.NEXT_MODEL, message) for message in self._session_setup(carry=True)]

    def rollover_ready(self, now_ms: float) -> list[Output]:
        """The prepared session answered ``session.updated``: switch to it now if the call is still quiet; if not
        (the caller began to speak), the shell drops it and the rollover is tried again at a later quiet point
        (the conversation it was given would be stale)."""
        if self._link.phase is not LinkPhase.PREPARING:
            return []
        self._link.phase = LinkPhase.READY
        if not self._quiet():
            self._link.rollover_not_before_ms = now_ms + ROLLOVER_RETRY_MS
            return []
        age_ms = int(now_ms - self._link.started_ms) if self._link.started_ms is not None else 0
        self._link.session += 1
        self._link.started_ms = now_ms
        self._restart_input_clock()
        self._responses.interrupted.clear()
        reason = "session limit ahead"
        return [SwitchModel(reason), ModelRolledOver(reason, age_ms)]

    def rollover_failed(self, reason: str, now_ms: float, retry_after_ms: float | None = None) -> list[Output]:
        """The next session could not be prepared (refused, with its ``Retry-After`` parsed by the shell as a delay;
        timed out; the current session went meanwhile): the current one goes on; the rollover is tried again at a
        quiet point, not before ROLLOVER_RETRY_MS nor the ``Retry-After``."""
        if self.ending is not None:
            return []
        if self._link.phase is LinkPhase.PREPARING:
            self._link.phase = LinkPhase.READY
        self._link.rollover_not_before_ms = now_ms + max(ROLLOVER_RETRY_MS, retry_after_ms or 0.0)
        return [RolloverFailed(reason, self._link.rollover_not_before_ms)]

    def model_lost(self, reason: str, now_ms: float) -> list[Output]:
        """The model session is gone but the call goes on: the shell is opening a new one.

        Caller audio is held (bounded) until then; what the old session was doing is dropped: its response,
        its pending tool calls (their ids mean nothing to the new session) and any request for a response."""
        if self.ending is not None:
            return []
        self._link.reconnects.lost(reason, now_ms)
        if self._link.reconnects.give_up_reason:  # MODEL_RECONNECT is off, or too many losses: no replacement
            self._link.phase = LinkPhase.DOWN
            return self._model_schedule(now_ms)
        responses, greeting = self._responses, self._greeting
        lost = responses.active
        if lost is not None and lost in responses.with_audio and lost not in responses.interrupted \
                and lost != greeting.response_id and self._line.control is None:
            # An answer cut by the loss: the new session goes on with it (asked once it is configured).
            self._responses.wanted, self._responses.instructions = True, RESUME_INSTRUCTIONS
        # A session being prepared for a rollover is dropped by the shell with the lost one.
        self._link.phase = LinkPhase.DOWN
        if self._batch:  # a batch not sent yet: held, and sent first to the next session
            self._pending_audio.append(join_audio(self._batch))
            self._pending_arrivals.append((self._batch_ms, now_ms))
            self._pending_audio_bytes += len(self._pending_audio[-1])
            self._batch, self._batch_ms = [], 0
        responses.active, responses.phase = None, ResponsePhase.IDLE
        # Tools still running belong to the lost session: their results come back as text to the new one.
        for call_id in self._running_tools:
            if len(self._orphaned_tools) < MAX_QUEUED_TOOLS:
                self._orphaned_tools[call_id] = self._link.session
        self._running_tools.clear()
        self._queued_tools.clear()
        self._responses.interrupted.clear()
        self._caller_speaking = False  # the new session reports speech afresh
        if greeting.response_id is not None or (greeting.session and greeting.phase is not GreetingPhase.DONE):
            # Not all sent: the next session is asked again, once it is configured (not before).
            greeting.response_id = None
            if greeting.phase is not GreetingPhase.DONE:
                greeting.phase = GreetingPhase.UNASKED
            responses.wanted, responses.instructions = False, ""
        # A goodbye (or transfer announcement) heard in full before the loss: act on it now.
        out = [ModelSessionLost(reason), *self._control_if_heard()]
        return out if self.ending is not None else out + self._model_schedule(now_ms)

    def model_connect_failed(self, reason: str, now_ms: float, retry_after_ms: float | None = None) -> list[Output]:
        """An attempt asked for by :class:`ConnectModel` did not open a session: refused (``retry_after_ms``: the
        refusal's ``Retry-After``, parsed by the shell, as a delay), timed out, or a network error. The core
        decides the next attempt, or the give-up."""
        if self.ended:
            return []
        self._link.reconnects.failed(reason, now_ms, retry_after_ms)
        out = self._model_schedule(now_ms)
        return out if self.ended else [ModelSessionLost(reason), *out]  # a reconnect follows, unless it gave up

    def model_closed(self, reason: str, now_ms: float) -> list[Output]:
        """The model is gone for good (the give-up): the call ends, with its spoken message."""
        self._link.phase = LinkPhase.DOWN
        return self._end(f"model socket closed: {reason}")

    def _model_schedule(self, now_ms: float) -> list[Output]:
        """What the model-session schedule asks for now: an attempt, the give-up, a wake-up (comfort noise too)."""
        if self.ended or self._started_ms is None:
            return []
        action, value = self._link.reconnects.check(now_ms)
        if action == "give_up":
            reconnects = self._link.reconnects
            last = f"; last: {reconnects.last_reason}" if reconnects.last_reason else ""
            reason = f"{reconnects.give_up_reason}{last}"
            return [ModelGaveUp(reason), *self.model_closed(reason, now_ms)]
        out: list[Output] = [ConnectModel(value)] if action == "connect" else []
        # Waiting: until the next attempt or the give-up. Connecting: the give-up still ends the call on time, even
        # if the shell's attempt began late (its timeout counts from when it began).
        wake = value if action == "wait" else self._link.reconnects.give_up_at_ms or float("inf")
        noise, noise_wake = self._comfort_noise(now_ms)
        return out + noise + self._wake_at(min(wake, noise_wake), now_ms)

    def _wake_at(self, at_ms: float, now_ms: float) -> list[Output]:
        """One pending wake-up at a time (the earliest wanted): the shell is asked again only for an earlier one."""
        pending = self._link.wake_pending_ms
        if at_ms == float("inf") or (pending is not None and now_ms < pending <= at_ms):
            return []
        self._link.wake_pending_ms = at_ms
        return [WakeAt(at_ms)]

    def _comfort_noise(self, now_ms: float) -> tuple[list[Output], float]:
        """Noise while there is no model session, from COMFORT_NOISE_AFTER_MS into the outage (after the wait
        prompt, when one is set), kept at least COMFORT_NOISE_LEAD_MS ahead of its playback so that it never runs
        dry between two clock checks; and when it is next needed. Nothing while agent audio of a lost session still
        plays (the line is not silent)."""
        down = self._link.reconnects.down_since
        if down is None or self._link.phase is not LinkPhase.DOWN:
            return [], float("inf")
        if now_ms < down + COMFORT_NOISE_AFTER_MS:
            return [], down + COMFORT_NOISE_AFTER_MS
        if self._playback.awaiting_echoes:
            return [], float("inf")  # the clock's next tick looks again
        # The noise plays back to back from when the first piece was sent: it ends at _noise_until_ms.
        until = max(self._line.noise_until_ms, now_ms)
        out: list[Output] = []
        prompt = self.config.wait_prompt
        if prompt and self._line.prompted_outage != down:  # MODEL_WAIT_PROMPT: once an outage, ahead of its noise
            self._line.prompted_outage = down
            piece = COMFORT_NOISE_MS * MULAW_BYTES_PER_MS
            out.extend(Send(Peer.TWILIO, tw.media_message(self.stream_sid, prompt[at : at + piece]))
                       for at in range(0, len(prompt), piece))
            until += len(prompt) / MULAW_BYTES_PER_MS
        while until - now_ms <= COMFORT_NOISE_LEAD_MS:
            out.append(Send(Peer.TWILIO, tw.media_message(self.stream_sid, COMFORT_NOISE)))
            until += COMFORT_NOISE_MS
        self._line.noise_until_ms = until
        if out:
            self._line.phase = LinePhase.COMFORT_NOISE
        return out, until - COMFORT_NOISE_LEAD_MS

