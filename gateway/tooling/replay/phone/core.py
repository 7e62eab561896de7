"""The phone itself: Twilio's side of one Media Stream as a pure protocol object (no socket, no clock, no task).

:class:`Phone` is fed the gateway's messages and the time (``now_ms``, monotonic milliseconds since the phone
sent ``start``) and returns the messages Twilio would send, numbered in order. It words Twilio's messages
(``connected``, ``start``, ``media`` every 20 ms, ``dtmf``, mark echoes, ``stop``) and puts together the parts:
the caller's script (:mod:`.script`), Twilio's playback queue (:mod:`.playback`), the protocol checks
(:mod:`.checks`) and the measurements (:mod:`.measure`). The socket shell is :mod:`.shell`.
"""

from __future__ import annotations

import base64
import random
import secrets
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from gateway.audio.convert import MULAW_SILENCE, mulaw_decode, mulaw_encode, to_int16
from gateway.twilio.playback import ClearRecord, MarkRecord, PlaybackQueue, PlaybackRun

from ..report import CallReport
from . import measure
from .checks import ProtocolChecker
from .script import CallerScript, CallerTurn, _Turn, speech_rms
from .units import FRAME_BYTES, FRAME_MS, HEARD_RMS, SPB

UNDERRUN_GAP_MS = 500.0  # a drain refilled within this, with no caller turn between, is a hole in one answer


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


class Phone:
    """Twilio's side of one Media Stream, without I/O (see the module docstring).

    Drive it with :meth:`open` once at t = 0, :meth:`receive` for every message from the gateway,
    :meth:`tick` whenever :meth:`next_wakeup_ms` is reached, and :meth:`gateway_closed` if the
    gateway ends the call. Each returns the messages (dicts) to send, in order. Then :meth:`report`.

    Twilio's real-world playback, as options: ``playback_delay_ms`` (a jitter buffer: audio reaching an idle
    queue plays that long after it arrived) and ``mark_jitter_ms`` (each mark echo leaves a random 0..N ms
    after its audio has played, in order; drawn from ``seed``). See :mod:`.playback`.
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
        mark_jitter_ms: float = 0.0,
    ) -> None:
        self.script = CallerScript(turns)
        self.turns = self.script.turns
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
        self._underrun_gap_ms = underrun_gap_ms
        # The mark jitter has its own generator, so turning it on changes no packet loss or noise.
        jitter_rng = random.Random(f"mark-jitter:{seed}") if seed is not None else random.Random()
        self.playback = PlaybackQueue(heard_rms=heard_rms, playback_delay_ms=playback_delay_ms,
                                      mark_jitter_ms=mark_jitter_ms, rng=jitter_rng)
        self.checks = ProtocolChecker()

        self.started = False
        self.done = False
        self.ended_by = ""
        self.end_ms = 0.0
        self._seq = 0  # the last sequenceNumber sent
        self._chunk = 0
        # Caller side: what went on the line
        self._frame = 0  # index of the next frame to send; it covers [20 k, 20 k + 20) ms
        self._caller = bytearray()
        self._frames_sent = 0
        self._frames_dropped = 0
        self._max_lag_ms = 0.0
        self._dtmf_sent: list[tuple[float, str]] = []
        # Set by the socket shell's slow reader (harness figures for the report).
        self.reader_paused_ms = 0.0
        self.max_unread_bytes = 0

    # ------------------------------------------------------------------ the parts' state, by its old names
    # (subclasses such as RecordedPhone and the bench's phone read these)

    @property
    def playback_delay_ms(self) -> float:
        return self.playback.playback_delay_ms

    @playback_delay_ms.setter
    def playback_delay_ms(self, value: float) -> None:
        self.playback.playback_delay_ms = value

    @property
    def mark_jitter_ms(self) -> float:
        return self.playback.mark_jitter_ms

    @mark_jitter_ms.setter
    def mark_jitter_ms(self, value: float) -> None:
        self.playback.mark_jitter_ms = value

    @property
    def _spoken(self) -> list[_Turn]:
        return self.script.spoken

    @_spoken.setter
    def _spoken(self, turns: list[_Turn]) -> None:
        self.script.spoken = turns

    @property
    def _runs(self) -> list[PlaybackRun]:
        return self.playback.runs

    @property
    def _marks(self) -> list[MarkRecord]:
        return self.playback.marks

    @property
    def _clears(self) -> list[ClearRecord]:
        return self.playback.clears

    @property
    def _media_received(self) -> int:
        return self.playback.media_received

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

    def _echoes(self, marks: list[MarkRecord]) -> list[dict[str, Any]]:
        return [{"event": "mark", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
                 "mark": {"name": mark.name}} for mark in marks]

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
        """When :meth:`tick` must run next: the next frame boundary, or sooner the moment a mark echo is due."""
        wake = float((self._frame + 1) * FRAME_MS)
        due = self._mark_due_ms()
        return wake if due is None else min(wake, due)

    def _mark_due_ms(self) -> float | None:
        """When the next mark echo is due (playback reaches a queued mark, or a jittered echo leaves), or None."""
        return self.playback.next_due_ms()

    def _advance(self, now_ms: float) -> list[dict[str, Any]]:
        """Play the queue up to ``now_ms``; the echoes of the marks that are due."""
        return self._echoes(self.playback.advance(now_ms))

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
        chunk = self.script.frame()
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
        for digit in self.script.digits_due(boundary):
            out.append(self.dtmf(digit, boundary))

    def _decide(self, t: float, out: list[dict[str, Any]]) -> None:
        """At the frame boundary ``t``: start the next turn, hang up, or keep going."""
        if self.done:
            return
        if t >= self.timeout_ms:
            out.append(self._stop(t, "timeout"))
            return
        if self.script.decide(t, self.playback, self.hangup_after_ms, self.hangup_wait_for_agent) == "hangup":
            out.append(self._stop(t, "hangup"))

    def _first_heard_ms(self, since_ms: float, until_ms: float | None = None) -> int | None:
        return self.playback.first_heard_ms(since_ms, until_ms)

    # ------------------------------------------------------------------ agent side: messages in

    def receive(self, message: str | bytes, now_ms: float) -> list[dict[str, Any]]:
        """One message from the gateway: validate it, apply it (play, mark, clear), return the echoes."""
        if self.done:
            return []
        parsed = self.checks.check(message, now_ms, started=self.started, stream_sid=self.stream_sid)
        if parsed is None:
            return []
        out = self._advance(now_ms)
        if parsed.event == "media":
            self.playback.media(parsed.audio, now_ms)
        elif parsed.event == "mark":
            self.playback.mark(parsed.body["mark"]["name"], now_ms)
        else:  # clear
            self.playback.clear(now_ms)
        out += self._echoes(self.playback.echoes_due(now_ms))
        return out

    # ------------------------------------------------------------------ the end

    def _finish(self, now_ms: float, reason: str) -> None:
        self.done = True
        self.ended_by = reason
        self.end_ms = now_ms
        self.script.interrupt(now_ms)

    def report(self) -> CallReport:
        """The measurements, from the caller's side only (see :class:`CallReport`)."""
        line = self.playback
        runs = line.runs
        duration_ms = self.end_ms if self.done else line.cursor / SPB
        turns = measure.turn_reports(self.script.spoken, runs, line.heard_ms, self._underrun_gap_ms)
        # A key press between two answers also explains a gap (a recorded call's presses are not turns).
        keys_ms = [t for t, _ in self._dtmf_sent]
        starts = [s.start_ms for s in self.script.spoken if s.turn.kind != "pause"] + keys_ms
        underruns, underrun_ms = measure.underruns(runs, starts, self._underrun_gap_ms)
        length = max(len(self._caller), len(line.heard))
        pad = bytes([MULAW_SILENCE])
        return CallReport(
            stream_sid=self.stream_sid,
            call_sid=self.call_sid,
            account_sid=self.account_sid,
            ended_by=self.ended_by or "running",
            duration_ms=duration_ms,
            turns=turns,
            clears=list(line.clears),
            marks=list(line.marks),
            violations=list(self.checks.violations),
            runs=list(runs),
            dtmf_sent=list(self._dtmf_sent),
            underruns=underruns,
            underrun_ms=underrun_ms,
            frames_sent=self._frames_sent,
            frames_dropped=self._frames_dropped,
            max_frame_lag_ms=self._max_lag_ms,
            media_received=line.media_received,
            agent_audio_received_ms=line.received_bytes / SPB,
            agent_audio_played_ms=sum(r.played_ms for r in runs),
            agent_heard_ms=float(line.heard_ms.count(1)),
            agent_audio_cleared_ms=line.cleared_bytes / SPB,
            max_queue_ms=line.max_queued / SPB,
            silences=measure.silences(turns, runs, line.heard_ms, keys_ms, duration_ms),
            reader_paused_ms=self.reader_paused_ms,
            max_unread_bytes=self.max_unread_bytes,
            caller_audio=bytes(self._caller).ljust(length, pad),
            heard_audio=bytes(line.heard).ljust(length, pad),
        )


__all__ = ["UNDERRUN_GAP_MS", "Phone"]
