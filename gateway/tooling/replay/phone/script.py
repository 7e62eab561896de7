"""The caller's script: what the caller says, keys or does, and when each turn starts.

A :class:`CallerTurn` is one thing the caller does and its start rule; :class:`CallerScript` plays a list of
them, deciding at each 20 ms frame boundary whether the next turn starts, given what the caller has heard
so far (the playback queue's runs and heard timeline, :mod:`.playback`). The speech analysis the report uses
(where a clip's voice starts and ends, its level) is here too: it is about the caller's own audio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gateway.audio.convert import mulaw_decode

from .units import FRAME_BYTES, HEARD_RMS, SILENCE_FRAME, SPB

if TYPE_CHECKING:
    from gateway.twilio.playback import PlaybackQueue

DTMF_SPACING_MS = 200  # one key press (tone and gap) per 200 ms; the event is sent at the end of each
NOMINAL_SPEECH_RMS = 3000.0  # the speech level noise is set against when the script has no speech (about -21 dBFS)


@dataclass(slots=True)
class CallerTurn:
    """One thing the caller does, and when: says ``audio`` (mu-law 8 kHz), keys ``dtmf`` digits, keeps
    silent for ``pause_ms``, or hangs up (``hangup``).

    The start rule, measured from the end of the previous turn (the call start for the first):

    * ``after_silence_ms=N``: once the line has been silent (the playback queue empty) for N ms. With
      ``wait_for_agent`` the caller first waits for the agent to answer (a playback that started after the
      start of the previous turn that was not a pause): the default after a turn that ``expects_answer``
      (speech, unless ``expect_answer=False``; DTMF only with ``expect_answer=True``). Set it on the
      first turn to wait for a greeting.
    * ``after_agent_heard_ms=N``: N ms after agent audio starts being heard: a barge-in.

    With neither rule given, ``after_silence_ms=800``; a pause with neither starts at once. The turn
    starts on the first 20 ms frame boundary where its rule holds.
    """

    audio: bytes = b""
    after_silence_ms: float | None = None
    after_agent_heard_ms: float | None = None
    wait_for_agent: bool | None = None
    dtmf: str = ""
    name: str = ""
    pause_ms: float = 0.0
    hangup: bool = False
    expect_answer: bool | None = None

    def __post_init__(self) -> None:
        if self.after_silence_ms is not None and self.after_agent_heard_ms is not None:
            raise ValueError("a turn starts after silence or after agent audio is heard, not both")
        actions = sum((bool(self.audio) or bool(self.dtmf), self.pause_ms > 0, self.hangup))
        if actions != 1:
            raise ValueError("a turn needs audio or dtmf digits, or a pause, or a hang-up (one of them)")
        if self.after_silence_ms is None and self.after_agent_heard_ms is None and not self.pause_ms:
            self.after_silence_ms = 800
        bad = set(self.dtmf) - set("0123456789*#")
        if bad:
            raise ValueError(f"not DTMF digits: {sorted(bad)}")

    @property
    def kind(self) -> str:
        """``"speech"``, ``"dtmf"`` (digits only), ``"pause"`` or ``"hangup"``."""
        if self.hangup:
            return "hangup"
        if self.pause_ms:
            return "pause"
        return "speech" if self.audio else "dtmf"

    @property
    def expects_answer(self) -> bool:
        """Whether the agent is expected to answer this turn (it counts for latency; the next turn waits)."""
        if self.expect_answer is not None:
            return self.expect_answer
        return self.kind == "speech"

    @property
    def barge_in(self) -> bool:
        return self.after_agent_heard_ms is not None

    @property
    def duration_ms(self) -> float:
        return max(len(self.audio) / SPB, len(self.dtmf) * DTMF_SPACING_MS, self.pause_ms)


def speech_bounds_ms(audio: bytes, rms: float = HEARD_RMS) -> tuple[float, float]:
    """(leading, trailing) silence of a clip in ms, found in the audio itself (10 ms blocks above ``rms``).

    A caller's speech starts and ends where the voice does, not where the WAV file does."""
    samples = mulaw_decode(audio).astype(np.float64)
    block = 10 * SPB
    blocks = len(samples) // block
    if blocks == 0:
        return 0.0, 0.0
    levels = np.sqrt(np.mean(samples[: blocks * block].reshape(blocks, block) ** 2, axis=1))
    loud = np.flatnonzero(levels >= rms)
    if len(loud) == 0:
        return 0.0, 0.0
    return float(loud[0] * 10), float(len(audio) / SPB - (loud[-1] + 1) * 10)


def speech_rms(audios: list[bytes]) -> float:
    """The RMS of the speech in ``audios`` (mu-law): over the 20 ms frames louder than :data:`HEARD_RMS`."""
    whole = b"".join(a[: len(a) // FRAME_BYTES * FRAME_BYTES] for a in audios)
    if not whole:
        return NOMINAL_SPEECH_RMS
    blocks = mulaw_decode(whole).astype(np.float64).reshape(-1, FRAME_BYTES)
    power = np.mean(blocks**2, axis=1)
    loud = power[power > HEARD_RMS * HEARD_RMS]
    return float(np.sqrt(loud.mean())) if len(loud) else NOMINAL_SPEECH_RMS


@dataclass(slots=True)
class _Turn:
    """A turn being spoken, or spoken."""

    index: int
    turn: CallerTurn
    start_ms: float
    end_ms: float
    pos: int = 0  # next byte of audio to send
    digits_sent: int = 0
    completed: bool = True


class CallerScript:
    """The script as it plays: the next turn, the one being spoken (``active``), those spoken (``spoken``)."""

    def __init__(self, turns: list[CallerTurn]) -> None:
        self.turns = list(turns)
        self.next_turn = 0
        self.active: _Turn | None = None
        self.spoken: list[_Turn] = []

    def frame(self) -> bytes:
        """The caller's next 20 ms of audio: the active turn's, padded with silence, or silence."""
        turn = self.active
        if turn is None:
            return SILENCE_FRAME
        chunk = turn.turn.audio[turn.pos : turn.pos + FRAME_BYTES]
        turn.pos += FRAME_BYTES
        return chunk + SILENCE_FRAME[len(chunk) :] if len(chunk) < FRAME_BYTES else chunk

    def digits_due(self, boundary: float) -> str:
        """The active turn's key presses whose time has come by ``boundary``; ends the turn once it is over."""
        turn = self.active
        if turn is None:
            return ""
        digits, due = turn.turn.dtmf, ""
        while turn.digits_sent < len(digits) and turn.start_ms + (turn.digits_sent + 1) * DTMF_SPACING_MS <= boundary:
            due += digits[turn.digits_sent]
            turn.digits_sent += 1
        if turn.end_ms <= boundary and turn.digits_sent == len(digits):
            self.active = None
        return due

    def decide(self, t: float, line: PlaybackQueue, hangup_after_ms: float, hangup_wait_for_agent: bool) -> str | None:
        """At the frame boundary ``t``, with no turn being spoken: ``"turn"`` (the next turn started: see
        ``active``), ``"hangup"`` (a hang-up turn, or the silence after the last turn), or None (keep going)."""
        if self.active is not None:
            return None
        # Silence counts from the end of the caller's last turn; an answer is a playback started since the
        # start of the last turn that was not a pause.
        ref = self.spoken[-1].end_ms if self.spoken else 0.0
        prompt = next((s for s in reversed(self.spoken) if s.turn.kind != "pause"), None)
        asked = prompt.start_ms if prompt is not None else 0.0
        answer_due = prompt is None or prompt.turn.expects_answer
        if self.next_turn >= len(self.turns):
            return "hangup" if _silent_for(line, t, ref, asked, hangup_after_ms, hangup_wait_for_agent and answer_due) \
                else None
        index = self.next_turn
        turn = self.turns[index]
        if turn.after_agent_heard_ms is not None:
            onset = line.first_heard_ms(ref)
            ready = onset is not None and t >= onset + turn.after_agent_heard_ms
        elif turn.after_silence_ms is None:  # a pause with no rule: at once
            ready = True
        else:
            wait = turn.wait_for_agent if turn.wait_for_agent is not None else prompt is not None and answer_due
            ready = _silent_for(line, t, ref, asked, turn.after_silence_ms, wait)
        if not ready:
            return None
        self.next_turn += 1
        if turn.hangup:
            return "hangup"
        self.active = _Turn(index, turn, t, t + turn.duration_ms)
        self.spoken.append(self.active)
        return "turn"

    def interrupt(self, now_ms: float) -> None:
        """The call ended: the turn being spoken, if any, was cut at ``now_ms``."""
        if self.active is not None:
            self.active.end_ms = min(self.active.end_ms, now_ms)
            self.active.completed = False
            self.active = None


def _silent_for(line: PlaybackQueue, t: float, ref: float, asked: float, silence_ms: float, wait_for_agent: bool) -> bool:
    if line.playing:
        return False
    runs = line.runs
    if wait_for_agent and not any(run.start_ms >= asked for run in runs):
        return False
    quiet_since = max(ref, runs[-1].end_ms or 0.0) if runs else ref
    return t - quiet_since >= silence_ms


__all__ = ["DTMF_SPACING_MS", "NOMINAL_SPEECH_RMS", "CallerScript", "CallerTurn", "speech_bounds_ms", "speech_rms"]
