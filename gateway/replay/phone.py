"""The replay phone: Twilio's side of a bidirectional Media Stream, played against any gateway URL.

Two layers, like the gateway itself:

* :class:`Phone` is the protocol, pure: no socket, no clock, no task. It is fed the gateway's messages
  and the time (``now_ms``, monotonic milliseconds since the phone sent ``start``), and returns the
  messages Twilio would send. It owns the caller's script, the playback queue (media, marks, clear, as
  Twilio plays them: in real time from when audio arrives), the validation of everything the gateway
  sends, and the timeline the report is measured from.
* :func:`run_call` is the shell: one ``websockets`` client connection (no permessage-deflate: Twilio
  does not negotiate it), a reader task, a writer task, and a loop that wakes on an absolute schedule
  (every 20 ms frame boundary, and the exact moment a queued mark is due) to call :meth:`Phone.tick`.

What Twilio sends, and when: ``connected``, ``start``, then one ``media`` message per 20 ms (160 bytes of
mu-law; sequenceNumber, chunk and timestamp are strings; timestamp = ms since the stream started),
``dtmf`` and, at hang-up, ``stop``. The frame covering [t, t + 20 ms) is sent at t + 20 ms, when its
audio is complete. A lost packet is a frame never sent: the next timestamp jumps, sequence numbers
and chunks do not. Line noise (``noise_snr_db``) is mixed into every frame the caller sends, silence included.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import random
import secrets
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.audio import MULAW_BYTES_PER_MS, MULAW_SILENCE, mulaw_decode, mulaw_encode, to_int16

from .dial import TwilioAccount, answer_inbound
from .report import (
    BAD_FIELD,
    BEFORE_START,
    BINARY_FRAME,
    EXTRA_FIELD,
    INVALID_BASE64,
    INVALID_JSON,
    MISSING_FIELD,
    UNKNOWN_EVENT,
    WRONG_STREAM_SID,
    CallReport,
    ClearRecord,
    MarkRecord,
    PlaybackRun,
    TurnReport,
    Violation,
)

FRAME_MS = 20
FRAME_BYTES = FRAME_MS * MULAW_BYTES_PER_MS  # 160
SPB = MULAW_BYTES_PER_MS  # samples (= mu-law bytes) per millisecond
DTMF_SPACING_MS = 200  # one key press (tone and gap) per 200 ms; the event is sent at the end of each
HEARD_RMS = 200.0  # a millisecond of played audio louder than this (int16 RMS, about -44 dBFS) is heard
UNDERRUN_GAP_MS = 500.0  # a drain refilled within this, with no caller turn between, is a hole in one answer
NOMINAL_SPEECH_RMS = 3000.0  # the speech level noise is set against when the script has no speech (about -21 dBFS)
TWILIO_USER_AGENT = "Twilio.TmeWs/1.0"

_SILENCE_FRAME = bytes([MULAW_SILENCE]) * FRAME_BYTES

# The gateway's messages as Twilio accepts them: event -> (top-level fields, fields of the nested object).
_SERVER_EVENTS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "media": (frozenset({"event", "streamSid", "media"}), frozenset({"payload"})),
    "mark": (frozenset({"event", "streamSid", "mark"}), frozenset({"name"})),
    "clear": (frozenset({"event", "streamSid"}), frozenset()),
}


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


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


@dataclass(slots=True)
class _Validated:
    event: str
    body: dict[str, Any] = field(default_factory=dict)
    audio: bytes = b""


class Phone:
    """Twilio's side of one Media Stream, without I/O (see the module docstring).

    Drive it with :meth:`open` once at t = 0, :meth:`receive` for every message from the gateway,
    :meth:`tick` whenever :meth:`next_wakeup_ms` is reached, and :meth:`gateway_closed` if the
    gateway ends the call. Each returns the messages (dicts) to send, in order. Then :meth:`report`.
    """

    def __init__(
        self,
        turns: list[CallerTurn],
        *,
        custom_parameters: Mapping[str, str] | None = None,
        hangup_after_ms: float = 1000.0,
        hangup_wait_for_agent: bool = True,
        timeout_ms: float = 60_000.0,
        packet_loss: float = 0.0,
        drop_frames: Collection[int] = (),
        seed: int | None = None,
        noise_snr_db: float | None = None,
        account_sid: str | None = None,
        call_sid: str | None = None,
        stream_sid: str | None = None,
        heard_rms: float = HEARD_RMS,
        underrun_gap_ms: float = UNDERRUN_GAP_MS,
        playback_delay_ms: float = 0.0,
    ) -> None:
        self.turns = list(turns)
        self.custom_parameters = dict(custom_parameters or {})
        self.hangup_after_ms = hangup_after_ms
        self.hangup_wait_for_agent = hangup_wait_for_agent
        self.timeout_ms = timeout_ms
        self.account_sid = account_sid or _sid("AC")
        self.call_sid = call_sid or _sid("CA")
        self.stream_sid = stream_sid or _sid("MZ")
        self._loss = packet_loss
        self._drop = frozenset(drop_frames)
        self._rng = random.Random(seed)
        # Line noise: white, at noise_snr_db below the script's speech level, from its own seeded generator.
        self.noise_rms = 0.0
        if noise_snr_db is not None:
            self.noise_rms = speech_rms([t.audio for t in self.turns]) / 10 ** (noise_snr_db / 20)
        self._noise_rng = np.random.default_rng(seed)
        self._heard_threshold = heard_rms * heard_rms * SPB  # on the sum of squares of one ms
        self._underrun_gap_ms = underrun_gap_ms
        # Twilio's jitter buffer: audio that reaches an idle queue starts playing this long after it arrived (a
        # real edge does not play on arrival, which the gateway's round-trip estimate does not know about).
        self.playback_delay_ms = playback_delay_ms
        self._hold_until_ms = 0.0

        self.started = False
        self.done = False
        self.ended_by = ""
        self.end_ms = 0.0
        self._seq = 0  # the last sequenceNumber sent
        self._chunk = 0
        # Caller side
        self._frame = 0  # index of the next frame to send; it covers [20 k, 20 k + 20) ms
        self._caller = bytearray()
        self._next_turn = 0
        self._active: _Turn | None = None
        self._spoken: list[_Turn] = []
        self._frames_sent = 0
        self._frames_dropped = 0
        self._max_lag_ms = 0.0
        self._dtmf_sent: list[tuple[float, str]] = []
        # Agent side: the playback queue
        self._queue: deque[bytes | MarkRecord] = deque()
        self._head_pos = 0  # bytes of queue[0] already played
        self._queued = 0  # audio bytes in the queue
        self._cursor = 0  # playback has been computed up to this sample (8 per ms)
        self._heard = bytearray()  # what played, sample by sample (silence where nothing did)
        self._heard_ms = bytearray()  # one flag per complete millisecond: 1 if agent audio was heard
        self._run: PlaybackRun | None = None
        self._runs: list[PlaybackRun] = []
        self._marks: list[MarkRecord] = []
        self._clears: list[ClearRecord] = []
        self._violations: list[Violation] = []
        self._media_received = 0
        self._received_bytes = 0
        self._cleared_bytes = 0
        self._max_queued = 0

    # ------------------------------------------------------------------ messages out

    def _next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)

    def open(self, now_ms: float = 0.0) -> list[dict[str, Any]]:
        """``connected`` and ``start``: what Twilio sends once the WebSocket is up. ``now_ms`` is t = 0."""
        self.started = True
        out: list[dict[str, Any]] = [
            {"event": "connected", "protocol": "Call", "version": "1.0.0"},
            {
                "event": "start",
                "sequenceNumber": self._next_seq(),
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": dict(self.custom_parameters),
                },
                "streamSid": self.stream_sid,
            },
        ]
        self._decide(0.0, out)
        return out

    def dtmf(self, digit: str, now_ms: float) -> dict[str, Any]:
        """A ``dtmf`` message for one key press (the scripted turns send theirs by themselves)."""
        self._dtmf_sent.append((now_ms, digit))
        return {
            "event": "dtmf",
            "streamSid": self.stream_sid,
            "sequenceNumber": self._next_seq(),
            "dtmf": {"track": "inbound_track", "digit": digit},
        }

    def _mark_echo(self, mark: MarkRecord, due_ms: float, now_ms: float, outcome: str) -> dict[str, Any]:
        mark.due_ms, mark.echoed_ms, mark.outcome = due_ms, now_ms, outcome
        return {
            "event": "mark",
            "sequenceNumber": self._next_seq(),
            "streamSid": self.stream_sid,
            "mark": {"name": mark.name},
        }

    def _stop(self, now_ms: float, reason: str) -> dict[str, Any]:
        self._finish(now_ms, reason)
        return {
            "event": "stop",
            "sequenceNumber": self._next_seq(),
            "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
            "streamSid": self.stream_sid,
        }

    # ------------------------------------------------------------------ clock

    def next_wakeup_ms(self) -> float:
        """When :meth:`tick` must run next: the next frame boundary, or sooner the moment a queued mark is due."""
        wake = float((self._frame + 1) * FRAME_MS)
        due = self._mark_due_ms()
        return wake if due is None else min(wake, due)

    def _mark_due_ms(self) -> float | None:
        """When playback reaches the first queued mark, or None."""
        ahead = -self._head_pos
        start = max(self._cursor, int(self._hold_until_ms * SPB)) if self._queued else self._cursor
        for item in self._queue:
            if isinstance(item, MarkRecord):
                return (start + max(ahead, 0)) / SPB
            ahead += len(item)
        return None

    def tick(self, now_ms: float) -> list[dict[str, Any]]:
        """Play the queue up to now (echoing marks that are due), send every frame whose end has come."""
        if self.done:
            return []
        out = self._advance(now_ms)
        while not self.done and (self._frame + 1) * FRAME_MS <= now_ms:
            boundary = float((self._frame + 1) * FRAME_MS)
            self._max_lag_ms = max(self._max_lag_ms, now_ms - boundary)
            self._send_frame(boundary, out)
            self._decide(boundary, out)
        return out

    def hangup(self, now_ms: float, reason: str = "hangup") -> list[dict[str, Any]]:
        """End the call now: ``stop``."""
        if self.done:
            return []
        out = self._advance(now_ms)
        out.append(self._stop(now_ms, reason))
        return out

    def gateway_closed(self, now_ms: float) -> None:
        """The gateway closed the WebSocket: the call is over (no ``stop``: Twilio would not send one)."""
        if not self.done:
            self._advance(now_ms)
            self._finish(now_ms, "gateway_closed")

    # ------------------------------------------------------------------ caller side

    def _send_frame(self, boundary: float, out: list[dict[str, Any]]) -> None:
        k = self._frame
        self._frame += 1
        turn = self._active
        if turn is not None:
            audio = turn.turn.audio
            chunk = audio[turn.pos : turn.pos + FRAME_BYTES]
            turn.pos += FRAME_BYTES
            if len(chunk) < FRAME_BYTES:
                chunk = chunk + _SILENCE_FRAME[len(chunk) :]
        else:
            chunk = _SILENCE_FRAME
        if self.noise_rms:
            noisy = mulaw_decode(chunk) + self._noise_rng.normal(0.0, self.noise_rms, FRAME_BYTES)
            chunk = mulaw_encode(to_int16(noisy.astype(np.float64)))
        self._caller += chunk
        if k in self._drop or (self._loss > 0 and self._rng.random() < self._loss):
            self._frames_dropped += 1
        else:
            self._frames_sent += 1
            self._chunk += 1
            out.append(
                {
                    "event": "media",
                    "sequenceNumber": self._next_seq(),
                    "media": {
                        "track": "inbound",
                        "chunk": str(self._chunk),
                        "timestamp": str(k * FRAME_MS),
                        "payload": base64.b64encode(chunk).decode("ascii"),
                    },
                    "streamSid": self.stream_sid,
                }
            )
        if turn is not None:
            digits = turn.turn.dtmf
            while (
                turn.digits_sent < len(digits)
                and turn.start_ms + (turn.digits_sent + 1) * DTMF_SPACING_MS <= boundary
            ):
                out.append(self.dtmf(digits[turn.digits_sent], boundary))
                turn.digits_sent += 1
            if turn.end_ms <= boundary and turn.digits_sent == len(digits):
                self._active = None

    def _decide(self, t: float, out: list[dict[str, Any]]) -> None:
        """At the frame boundary ``t``: start the next turn, hang up, or keep going."""
        if self.done:
            return
        if t >= self.timeout_ms:
            out.append(self._stop(t, "timeout"))
            return
        if self._active is not None:
            return
        # Silence counts from the end of the caller's last turn; an answer is a playback started since the
        # start of the last turn that was not a pause.
        ref = self._spoken[-1].end_ms if self._spoken else 0.0
        prompt = next((s for s in reversed(self._spoken) if s.turn.kind != "pause"), None)
        asked = prompt.start_ms if prompt is not None else 0.0
        answer_due = prompt is None or prompt.turn.expects_answer
        if self._next_turn < len(self.turns):
            index = self._next_turn
            turn = self.turns[index]
            if turn.after_agent_heard_ms is not None:
                onset = self._first_heard_ms(ref)
                ready = onset is not None and t >= onset + turn.after_agent_heard_ms
            elif turn.after_silence_ms is None:  # a pause with no rule: at once
                ready = True
            else:
                wait = turn.wait_for_agent if turn.wait_for_agent is not None else prompt is not None and answer_due
                ready = self._silent_for(t, ref, asked, turn.after_silence_ms, wait)
            if ready:
                self._next_turn += 1
                if turn.hangup:
                    out.append(self._stop(t, "hangup"))
                    return
                self._active = _Turn(index, turn, t, t + turn.duration_ms)
                self._spoken.append(self._active)
        elif self._silent_for(t, ref, asked, self.hangup_after_ms, self.hangup_wait_for_agent and answer_due):
            out.append(self._stop(t, "hangup"))

    def _silent_for(self, t: float, ref: float, asked: float, silence_ms: float, wait_for_agent: bool) -> bool:
        if self._run is not None:
            return False
        if wait_for_agent and not any(run.start_ms >= asked for run in self._runs):
            return False
        quiet_since = max(ref, self._runs[-1].end_ms or 0.0) if self._runs else ref
        return t - quiet_since >= silence_ms

    def _first_heard_ms(self, since_ms: float, until_ms: float | None = None) -> int | None:
        start = int(since_ms)
        end = len(self._heard_ms) if until_ms is None else max(start, min(len(self._heard_ms), int(until_ms)))
        i = self._heard_ms.find(1, start, end)
        return None if i < 0 else i

    # ------------------------------------------------------------------ agent side: messages in

    def receive(self, message: str | bytes, now_ms: float) -> list[dict[str, Any]]:
        """One message from the gateway: validate it, apply it (play, mark, clear), return the echoes."""
        if self.done:
            return []
        parsed = self._validate(message, now_ms)
        if parsed is None:
            return []
        out = self._advance(now_ms)
        if parsed.event == "media":
            self._media_received += 1
            if parsed.audio:
                if self._queued == 0 and self.playback_delay_ms:
                    self._hold_until_ms = now_ms + self.playback_delay_ms
                if self._run is None:
                    self._run = PlaybackRun(start_ms=self._cursor / SPB)
                    self._runs.append(self._run)
                self._queue.append(parsed.audio)
                self._queued += len(parsed.audio)
                self._received_bytes += len(parsed.audio)
                self._max_queued = max(self._max_queued, self._queued)
        elif parsed.event == "mark":
            mark = MarkRecord(name=parsed.body["mark"]["name"], received_ms=now_ms)
            self._marks.append(mark)
            if self._queued == 0:
                out.append(self._mark_echo(mark, now_ms, now_ms, "immediate"))
            else:
                self._queue.append(mark)
        else:  # clear
            marks = [item for item in self._queue if isinstance(item, MarkRecord)]
            played = self._run.played_ms if self._run is not None else 0.0
            self._clears.append(ClearRecord(now_ms, played, self._queued / SPB, len(marks)))
            self._cleared_bytes += self._queued
            self._queue.clear()
            self._head_pos = 0
            self._queued = 0
            self._end_run("cleared")
            out.extend(self._mark_echo(m, now_ms, now_ms, "cleared") for m in marks)
        return out

    def _violation(self, now_ms: float, kind: str, reason: str) -> None:
        self._violations.append(Violation(now_ms, kind, reason))

    def _exact_fields(self, now_ms: float, event: str, obj: dict[str, Any], wanted: frozenset[str], prefix: str) -> bool:
        """Twilio refuses a message with a field missing or one it does not know (31951): count either."""
        missing = wanted - obj.keys()
        if missing:
            self._violation(now_ms, MISSING_FIELD, f"{event}: missing {sorted(prefix + m for m in missing)}")
            return False
        extra = obj.keys() - wanted
        if extra:
            self._violation(now_ms, EXTRA_FIELD, f"{event}: extra {sorted(prefix + e for e in extra)}")
            return False
        return True

    def _validate(self, message: str | bytes, now_ms: float) -> _Validated | None:
        """Parse one message at the edge; a message Twilio would refuse is counted and ignored."""
        if isinstance(message, bytes | bytearray | memoryview):
            self._violation(now_ms, BINARY_FRAME, f"binary frame of {len(message)} bytes")
            return None
        if not self.started:
            self._violation(now_ms, BEFORE_START, "message before the stream started")
            return None
        try:
            msg = json.loads(message)
        except ValueError as exc:
            self._violation(now_ms, INVALID_JSON, f"not JSON: {exc}")
            return None
        if not isinstance(msg, dict):
            self._violation(now_ms, INVALID_JSON, f"a JSON {type(msg).__name__}, not an object")
            return None
        event = msg.get("event")
        if event is None:
            self._violation(now_ms, MISSING_FIELD, "no 'event'")
            return None
        if event not in _SERVER_EVENTS:
            self._violation(now_ms, UNKNOWN_EVENT, f"unknown event {event!r}")
            return None
        fields, inner_fields = _SERVER_EVENTS[event]
        if not self._exact_fields(now_ms, event, msg, fields, ""):
            return None
        if msg["streamSid"] != self.stream_sid:
            self._violation(now_ms, WRONG_STREAM_SID, f"{event}: streamSid {msg['streamSid']!r} is not this stream's")
            return None
        if not inner_fields:
            return _Validated(event, msg)
        inner = msg[event]
        if not isinstance(inner, dict):
            self._violation(now_ms, BAD_FIELD, f"{event}: '{event}' is not an object")
            return None
        if not self._exact_fields(now_ms, event, inner, inner_fields, f"{event}."):
            return None
        if event == "mark":
            if not isinstance(inner["name"], str):
                self._violation(now_ms, BAD_FIELD, "mark: 'mark.name' is not a string")
                return None
            return _Validated(event, msg)
        payload = inner["payload"]
        if not isinstance(payload, str):
            self._violation(now_ms, BAD_FIELD, "media: 'media.payload' is not a string")
            return None
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            self._violation(now_ms, INVALID_BASE64, f"media: payload is not base64: {exc}")
            return None
        return _Validated(event, msg, audio)

    # ------------------------------------------------------------------ agent side: playback

    def _advance(self, now_ms: float) -> list[dict[str, Any]]:
        """Play the queue in real time up to ``now_ms``; echo the marks playback reaches; note what was heard."""
        out: list[dict[str, Any]] = []
        target = int(now_ms * SPB)
        queue = self._queue
        hold = int(self._hold_until_ms * SPB)
        if self._queued and self._cursor < hold:  # queued audio waits in the jitter buffer: silence until then
            fill = min(hold, target) - self._cursor
            if fill > 0:
                self._heard += _SILENCE_FRAME[:1] * fill
                self._cursor += fill
        while True:
            while queue and isinstance(queue[0], MarkRecord):
                mark = queue.popleft()
                assert isinstance(mark, MarkRecord)
                out.append(self._mark_echo(mark, self._cursor / SPB, now_ms, "played"))
            if not queue:
                self._end_run("drained")
                break
            if self._cursor >= target:
                break
            head = queue[0]
            assert isinstance(head, bytes)
            n = min(len(head) - self._head_pos, target - self._cursor)
            self._heard += head[self._head_pos : self._head_pos + n]
            self._cursor += n
            self._head_pos += n
            self._queued -= n
            if self._run is not None:
                self._run.played_ms += n / SPB
            if self._head_pos == len(head):
                queue.popleft()
                self._head_pos = 0
        if self._cursor < target:
            self._heard += _SILENCE_FRAME[:1] * (target - self._cursor)
            self._cursor = target
        self._update_heard()
        return out

    def _end_run(self, how: str) -> None:
        if self._run is not None:
            self._run.end_ms = self._cursor / SPB
            self._run.ended_by = how
            self._run = None

    def _update_heard(self) -> None:
        done = len(self._heard_ms)
        complete = self._cursor // SPB
        if complete <= done:
            return
        samples = mulaw_decode(bytes(self._heard[done * SPB : complete * SPB])).astype(np.float64)
        energy = np.square(samples).reshape(-1, SPB).sum(axis=1)
        self._heard_ms += (energy > self._heard_threshold).astype(np.uint8).tobytes()

    # ------------------------------------------------------------------ the end

    def _finish(self, now_ms: float, reason: str) -> None:
        self.done = True
        self.ended_by = reason
        self.end_ms = now_ms
        if self._active is not None:
            self._active.end_ms = min(self._active.end_ms, now_ms)
            self._active.completed = False
            self._active = None

    def report(self) -> CallReport:
        """The measurements, from the caller's side only (see :class:`CallReport`)."""
        runs = self._runs
        spoken = [s for s in self._spoken if s.turn.kind != "pause"]
        turns: list[TurnReport] = []
        for i, t in enumerate(spoken):
            next_start = spoken[i + 1].start_ms if i + 1 < len(spoken) else None
            lead, trail = speech_bounds_ms(t.turn.audio) if t.turn.audio else (0.0, 0.0)
            speech_start = t.start_ms + lead
            speech_end = max(speech_start, min(t.end_ms, t.start_ms + t.turn.duration_ms - trail))
            tr = TurnReport(
                index=t.index,
                name=t.turn.name or f"turn{t.index}",
                barge_in=t.turn.barge_in,
                kind=t.turn.kind,
                expects_answer=t.turn.expects_answer,
                start_ms=speech_start,
                end_ms=speech_end,
                completed=t.completed,
            )
            # The answer: the first agent audio heard from a playback that started after the speech start.
            for run in runs:
                if run.start_ms < t.start_ms:
                    continue
                if next_start is not None and run.start_ms >= next_start:
                    break
                end = run.end_ms if run.end_ms is not None else len(self._heard_ms)
                if next_start is not None:
                    end = min(end, next_start)
                onset = self._first_heard_ms(run.start_ms, end + 1)
                if onset is not None:
                    tr.response_ms = onset - speech_end
                    break
            tr.talk_over_ms = float(self._heard_ms.count(1, int(speech_start), int(speech_end)))
            if t.turn.barge_in:
                for k, run in enumerate(runs):
                    if run.start_ms <= speech_start and (run.end_ms is None or run.end_ms > speech_start):
                        tr.agent_playing_at_start = True
                        # A drain refilled soon, while the caller still talks, is the same answer going on:
                        # the agent stops being heard only where its last such stretch ends.
                        last = run
                        for later in runs[k + 1:]:
                            if (last.end_ms is None or later.start_ms >= speech_end
                                    or later.start_ms - last.end_ms >= self._underrun_gap_ms):
                                break
                            last = later
                        tr.stopped_by = "never" if last.end_ms is None else last.ended_by
                        tr.stop_ms = None if last.end_ms is None else last.end_ms - speech_start
                        break
            turns.append(tr)

        underruns, underrun_ms = 0, 0.0
        # A key press between two answers also explains a gap (a recorded call's presses are not turns).
        starts = [t.start_ms for t in spoken] + [t for t, _ in self._dtmf_sent]
        for before, after in zip(runs, runs[1:]):
            if before.ended_by != "drained" or before.end_ms is None:
                continue
            gap = after.start_ms - before.end_ms
            if gap < self._underrun_gap_ms and not any(before.end_ms <= s <= after.start_ms for s in starts):
                underruns += 1
                underrun_ms += gap

        length = max(len(self._caller), len(self._heard))
        pad = bytes([MULAW_SILENCE])
        return CallReport(
            stream_sid=self.stream_sid,
            call_sid=self.call_sid,
            account_sid=self.account_sid,
            ended_by=self.ended_by or "running",
            duration_ms=self.end_ms if self.done else self._cursor / SPB,
            turns=turns,
            clears=list(self._clears),
            marks=list(self._marks),
            violations=list(self._violations),
            runs=list(runs),
            dtmf_sent=list(self._dtmf_sent),
            underruns=underruns,
            underrun_ms=underrun_ms,
            frames_sent=self._frames_sent,
            frames_dropped=self._frames_dropped,
            max_frame_lag_ms=self._max_lag_ms,
            media_received=self._media_received,
            agent_audio_received_ms=self._received_bytes / SPB,
            agent_audio_played_ms=sum(r.played_ms for r in runs),
            agent_heard_ms=float(self._heard_ms.count(1)),
            agent_audio_cleared_ms=self._cleared_bytes / SPB,
            max_queue_ms=self._max_queued / SPB,
            caller_audio=bytes(self._caller).ljust(length, pad),
            heard_audio=bytes(self._heard).ljust(length, pad),
        )


# ---------------------------------------------------------------------- the socket shell


async def run_call(
    url: str,
    turns: list[CallerTurn],
    *,
    custom_parameters: Mapping[str, str] | None = None,
    hangup_after_ms: float = 1000.0,
    hangup_wait_for_agent: bool = True,
    timeout_s: float = 60.0,
    extra_headers: Mapping[str, str] | None = None,
    packet_loss: float = 0.0,
    drop_frames: Collection[int] = (),
    seed: int | None = None,
    noise_snr_db: float | None = None,
    open_timeout_s: float = 10.0,
    latency_ms: float = 0.0,
    call_sid: str | None = None,
    account_sid: str | None = None,
    twilio: TwilioAccount | None = None,
    playback_delay_ms: float = 0.0,
) -> CallReport:
    """Call a gateway's Media Stream URL (``ws://host:port/media-stream``) as Twilio would; play ``turns``.

    With ``twilio`` (the auth token a gateway checks signatures with), the call starts as Twilio's does: the signed
    ``/incoming-call`` webhook first, then the stream at the URL its TwiML gives, signed (:mod:`.dial`).

    The call ends when the phone hangs up (a ``hangup`` turn; else ``hangup_after_ms`` of silence after
    the last turn, and after the agent's answer to it when ``hangup_wait_for_agent``), at ``timeout_s``,
    or when the gateway closes the socket. A refused handshake raises the ``websockets`` exception
    (e.g. ``InvalidStatus``). ``latency_ms`` holds every message that long in transit, both ways.
    """
    phone = Phone(
        turns,
        custom_parameters=custom_parameters,
        hangup_after_ms=hangup_after_ms,
        hangup_wait_for_agent=hangup_wait_for_agent,
        timeout_ms=timeout_s * 1000.0,
        packet_loss=packet_loss,
        drop_frames=drop_frames,
        seed=seed,
        noise_snr_db=noise_snr_db,
        call_sid=call_sid,
        account_sid=account_sid,
        playback_delay_ms=playback_delay_ms,
    )
    return await call_with(phone, url, extra_headers=extra_headers, open_timeout_s=open_timeout_s, latency_ms=latency_ms,
                           twilio=twilio)


async def call_with(
    phone: Phone,
    url: str,
    *,
    extra_headers: Mapping[str, str] | None = None,
    open_timeout_s: float = 10.0,
    latency_ms: float = 0.0,
    twilio: TwilioAccount | None = None,
) -> CallReport:
    """Connect to ``url`` as Twilio does, run ``phone`` (a :class:`Phone` or a subclass) to the end, report.
    With ``twilio``, ring the gateway's webhook first and open the stream it invites to (:mod:`.dial`)."""
    from websockets.asyncio.client import connect

    if twilio is not None:
        if twilio.account_sid:
            phone.account_sid = twilio.account_sid
        invite = await answer_inbound(url, twilio, call_sid=phone.call_sid, account_sid=phone.account_sid)
        url = invite.connect_url
        extra_headers = {**dict(extra_headers or {}), **invite.headers}
        phone.custom_parameters = {**invite.parameters, **phone.custom_parameters}

    async with connect(
        url,
        compression=None,  # Twilio does not negotiate permessage-deflate
        additional_headers=dict(extra_headers or {}),
        user_agent_header=TWILIO_USER_AGENT,
        open_timeout=open_timeout_s,
        ping_interval=None,
        max_size=None,
    ) as ws:
        await drive(phone, ws, latency_ms=latency_ms)
    return phone.report()


async def drive(phone: Phone, ws: Any, *, latency_ms: float = 0.0) -> None:
    """Run ``phone`` over an open ``websockets`` asyncio connection until the call ends.

    The phone's messages are dicts (serialized compactly here) or ready-made text frames (sent as they are).
    ``latency_ms`` simulates the network between Twilio and the gateway: every message, both ways, is
    held that long in transit (in order), as on a real line to a distant gateway.
    """
    from websockets.exceptions import ConnectionClosed

    loop = asyncio.get_running_loop()
    outbox: asyncio.Queue[tuple[float, str] | None] = asyncio.Queue()
    inbox: asyncio.Queue[tuple[float, str | bytes] | None] = asyncio.Queue()
    t0 = loop.time()
    delay_s = max(0.0, latency_ms) / 1000.0

    def now_ms() -> float:
        return (loop.time() - t0) * 1000.0

    def post(messages: list[dict[str, Any]] | list[str]) -> None:
        due = loop.time() + delay_s
        for message in messages:
            text = message if isinstance(message, str) else json.dumps(message, separators=(",", ":"))
            outbox.put_nowait((due, text))

    async def until(due: float) -> None:
        if due > loop.time():
            await asyncio.sleep(due - loop.time())

    async def write() -> None:
        # One writer keeps the messages in the order the phone numbered them.
        while (entry := await outbox.get()) is not None:
            await until(entry[0])
            try:
                await ws.send(entry[1])
            except ConnectionClosed:
                return

    async def read() -> None:
        try:
            async for message in ws:
                if delay_s:
                    inbox.put_nowait((loop.time() + delay_s, message))
                else:
                    post(phone.receive(message, now_ms()))
        except ConnectionClosed:
            pass
        inbox.put_nowait(None)

    async def deliver() -> None:
        # Messages from the gateway reach the phone after the simulated transit time.
        while (entry := await inbox.get()) is not None:
            await until(entry[0])
            post(phone.receive(entry[1], now_ms()))

    post(phone.open(0.0))
    writer = asyncio.create_task(write())
    reader = asyncio.create_task(read())
    deliverer = asyncio.create_task(deliver()) if delay_s else None
    try:
        while not phone.done:
            delay = phone.next_wakeup_ms() / 1000.0 - (loop.time() - t0)
            if delay > 0:
                await asyncio.wait({reader}, timeout=delay)
            if reader.done():
                phone.gateway_closed(now_ms())
                break
            post(phone.tick(now_ms()))
        outbox.put_nowait(None)
        await writer  # the stop, if the phone hung up, goes out before the close
        await ws.close()
        await reader
    finally:
        if deliverer is not None:
            deliverer.cancel()
        for task in (writer, reader):
            task.cancel()
