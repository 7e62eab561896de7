"""Recorded calls: read the gateway's call recordings and play a recording back against any gateway.

The format (the gateway writes one file per call when ``RECORD_CALLS_DIR`` is set), JSON Lines::

    {"type": "header", "version": 1, "call_sid": "CA...", "stream_sid": "MZ...", "started_at": "2025-01-01T12:00:00+00:00"}
    {"t_ms": 0.4, "dir": "in", "text": "{\\"event\\":\\"connected\\",...}"}
    {"t_ms": 20.9, "dir": "in", "text": "{\\"event\\":\\"media\\",...}"}
    {"t_ms": 31.2, "dir": "out", "text": "{\\"event\\":\\"media\\",...}"}

``t_ms``: milliseconds since the gateway accepted the socket; ``in``: a text frame from Twilio as the gateway
parsed it (rebuilt from what it accepted: no dropped frame, no ignored field, numbers masked unless
LOG_FULL_NUMBERS), ``out``: one to Twilio, exactly as it crossed the wire. A recording that reached the gateway's size cap ends
with ``{"type": "truncated", "t_ms": ..., "reason": "size cap", "max_bytes": N}``: it loads all the same,
with :attr:`Recording.truncated` set (the phone hangs up after the last recorded frame).

:class:`RecordedPhone` replays the ``in`` frames of kinds connected/start/media/dtmf/stop at their
recorded times (t = 0: the phone's socket is open), byte for byte. Recorded mark echoes are dropped:
they answered the old gateway's marks; the phone's playback queue echoes the marks of the gateway under
test, as Twilio would, and measures everything a scripted call measures. With ``fresh_sids`` (load
mode: many copies of one call at once) the streamSid and callSid are replaced by new ones, nothing else.
Our mark echoes continue the recorded sequence numbers (one may repeat a later recorded number).

The caller's turns of a recorded call are found in the caller's own audio: stretches of 20 ms frames
louder than the line's noise floor, joined across gaps shorter than :data:`SEGMENT_GAP_MS`.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from gateway.audio.convert import MULAW_SILENCE, mulaw_decode

from .phone import FRAME_BYTES, FRAME_MS, SPB, CallerTurn, Phone, _Turn
from .report import CallReport

RECORDING_VERSION = 1
REPLAYED_EVENTS = frozenset({"connected", "start", "media", "dtmf", "stop"})
SPEECH_RMS_MIN = 400.0  # int16 RMS: a caller frame quieter than this is never speech
SEGMENT_GAP_MS = 500.0  # caller speech stretches closer than this are one turn
SEGMENT_MIN_MS = 100.0  # shorter stretches are clicks, not turns


class RecordingError(ValueError):
    """A recording that cannot be replayed; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class RecordedFrame:
    """One ``in`` frame to replay: when, the exact text, and its parsed form."""

    t_ms: float
    text: str
    event: str
    message: dict[str, Any]


@dataclass(slots=True)
class Recording:
    path: Path
    call_sid: str
    stream_sid: str
    started_at: str
    frames: list[RecordedFrame] = field(default_factory=list)  # in time order
    out_frames: int = 0  # frames the recorded gateway sent (not replayed)
    dropped_marks: int = 0  # recorded mark echoes (not replayed)
    truncated: bool = False  # the gateway stopped recording at its size cap (a "truncated" line)

    @property
    def start(self) -> dict[str, Any]:
        for frame in self.frames:
            if frame.event == "start":
                return frame.message.get("start") or {}
        return {}

    @property
    def duration_ms(self) -> float:
        return self.frames[-1].t_ms if self.frames else 0.0


def load_recording(path: str | PathLike[str]) -> Recording:
    """Parse a recording; a malformed line raises :class:`RecordingError` naming the line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise RecordingError(f"{path}: cannot read: {exc.strerror or exc}") from None
    records: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise RecordingError(f"{path}:{number}: not JSON: {exc}") from None
        if not isinstance(record, dict):
            raise RecordingError(f"{path}:{number}: not a JSON object")
        records.append((number, record))
    if not records or records[0][1].get("type") != "header":
        raise RecordingError(f"{path}:1: the first line must be the header ({{\"type\": \"header\", ...}})")
    header = records[0][1]
    if header.get("version") != RECORDING_VERSION:
        raise RecordingError(f"{path}:1: version {header.get('version')!r} is not supported (expected 1)")
    recording = Recording(path, str(header.get("call_sid", "")), str(header.get("stream_sid", "")),
                          str(header.get("started_at", "")))
    for number, record in records[1:]:
        if record.get("type") == "truncated":
            recording.truncated = True
            continue
        t_ms, direction, text = record.get("t_ms"), record.get("dir"), record.get("text")
        if not isinstance(t_ms, int | float) or isinstance(t_ms, bool) or t_ms < 0:
            raise RecordingError(f"{path}:{number}: 't_ms' must be a number >= 0")
        if direction not in ("in", "out"):
            raise RecordingError(f"{path}:{number}: 'dir' must be \"in\" or \"out\", got {direction!r}")
        if not isinstance(text, str):
            raise RecordingError(f"{path}:{number}: 'text' must be a string (the frame as sent)")
        if direction == "out":
            recording.out_frames += 1
            continue
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        event = message.get("event") if isinstance(message, dict) else None
        if event == "mark":
            recording.dropped_marks += 1
        elif event in REPLAYED_EVENTS:
            recording.frames.append(RecordedFrame(float(t_ms), text, event, message))
    recording.frames.sort(key=lambda f: f.t_ms)  # stable: frames recorded at one time keep their order
    if not any(f.event == "start" for f in recording.frames):
        raise RecordingError(f"{path}: no 'start' frame from Twilio: nothing to replay")
    return recording


class RecordedPhone(Phone):
    """A :class:`Phone` whose caller side is a recording instead of a script (see the module docstring).

    When the recording has no ``stop`` (the old gateway ended the call), the phone hangs up
    ``hangup_after_ms`` after the last recorded frame.
    """

    def __init__(self, recording: Recording, *, fresh_sids: bool = False, hangup_after_ms: float = 1000.0,
                 timeout_ms: float = 60_000.0, **kwargs: Any) -> None:
        start = recording.start
        call_sid = str(start.get("callSid") or recording.call_sid)
        stream_sid = str(start.get("streamSid") or recording.stream_sid)
        self._sid_map: dict[str, str] = {}
        if fresh_sids:
            new_call, new_stream = "CA" + secrets.token_hex(16), "MZ" + secrets.token_hex(16)
            self._sid_map = {call_sid: new_call, stream_sid: new_stream}
            call_sid, stream_sid = new_call, new_stream
        super().__init__([], hangup_after_ms=hangup_after_ms, timeout_ms=timeout_ms, call_sid=call_sid,
                         stream_sid=stream_sid, account_sid=str(start.get("accountSid") or "") or None,
                         custom_parameters=start.get("customParameters") or {}, **kwargs)
        self.recording = recording
        self._next_frame = 0
        self._next_ts: int | None = None

    def open(self, now_ms: float = 0.0) -> list[Any]:
        self.started = True
        return self._play(now_ms)

    def next_wakeup_ms(self) -> float:
        frames = self.recording.frames
        if self._next_frame < len(frames):
            wake = frames[self._next_frame].t_ms
        else:
            wake = min(self.timeout_ms, self.recording.duration_ms + self.hangup_after_ms)
        due = self._mark_due_ms()
        return min(wake, self.timeout_ms) if due is None else min(wake, due, self.timeout_ms)

    def tick(self, now_ms: float) -> list[Any]:
        if self.done:
            return []
        out: list[Any] = self._advance(now_ms)
        out += self._play(now_ms)
        if not self.done and (now_ms >= self.timeout_ms or (self._next_frame == len(self.recording.frames)
                                                              and now_ms >= self.recording.duration_ms + self.hangup_after_ms)):
            out.append(self._stop(now_ms, "timeout" if now_ms >= self.timeout_ms else "hangup"))
        return out

    def _play(self, now_ms: float) -> list[Any]:
        """The recorded frames due by ``now_ms``, as text."""
        out: list[Any] = []
        frames = self.recording.frames
        while not self.done and self._next_frame < len(frames) and frames[self._next_frame].t_ms <= now_ms:
            frame = frames[self._next_frame]
            self._next_frame += 1
            self._max_lag_ms = max(self._max_lag_ms, now_ms - frame.t_ms)
            seq = frame.message.get("sequenceNumber")
            if isinstance(seq, str) and seq.isdigit():
                self._seq = max(self._seq, int(seq))
            if frame.event == "media":
                self._take_media(frame.message.get("media") or {})
            elif frame.event == "dtmf":
                self._dtmf_sent.append((now_ms, str((frame.message.get("dtmf") or {}).get("digit", ""))))
            out.append(self._text(frame))
            if frame.event == "stop":
                self._advance(now_ms)
                self._finish(now_ms, "hangup")
        return out

    def _text(self, frame: RecordedFrame) -> str:
        if not self._sid_map:
            return frame.text
        message = json.loads(frame.text)
        for holder in (message, message.get("start"), message.get("stop")):
            if isinstance(holder, dict):
                for key in ("streamSid", "callSid"):
                    if holder.get(key) in self._sid_map:
                        holder[key] = self._sid_map[holder[key]]
        return json.dumps(message, separators=(",", ":"))

    def _take_media(self, media: dict[str, Any]) -> None:
        """Put a recorded frame's audio on the caller's timeline at its timestamp (gaps: lost frames)."""
        try:
            audio = base64.b64decode(media.get("payload") or "", validate=True)
            ts = int(media.get("timestamp", ""))  # missing: ValueError, like a malformed one
        except (ValueError, TypeError):
            return  # replayed as recorded all the same; only the report's caller track misses it
        pos = ts * SPB
        if pos > len(self._caller):
            self._caller += bytes([MULAW_SILENCE]) * (pos - len(self._caller))
        self._caller[pos : pos + len(audio)] = audio
        if self._next_ts is not None and ts > self._next_ts:
            self._frames_dropped += (ts - self._next_ts) // FRAME_MS
        self._next_ts = max(self._next_ts or 0, ts + len(audio) // SPB)
        self._frames_sent += 1

    def report(self) -> CallReport:
        self._spoken = self._caller_turns()
        return super().report()

    def _caller_turns(self) -> list[_Turn]:
        """The caller's speech, found in its own audio (see the module docstring)."""
        frames = len(self._caller) // FRAME_BYTES
        if frames == 0:
            return []
        audio = bytes(self._caller[: frames * FRAME_BYTES])
        blocks = mulaw_decode(audio).astype(np.float64).reshape(frames, FRAME_BYTES)
        rms = np.sqrt(np.mean(blocks**2, axis=1))
        threshold = max(SPEECH_RMS_MIN, 3.0 * float(np.percentile(rms, 10)))
        loud = np.flatnonzero(rms > threshold)
        stretches: list[list[int]] = []
        for k in loud:
            if stretches and (k - stretches[-1][1]) * FRAME_MS < SEGMENT_GAP_MS + FRAME_MS:
                stretches[-1][1] = int(k)
            else:
                stretches.append([int(k), int(k)])
        turns: list[_Turn] = []
        for first, last in stretches:
            start, end = first * FRAME_MS, (last + 1) * FRAME_MS
            if end - start < SEGMENT_MIN_MS:
                continue
            playing = any(r.start_ms <= start < (r.end_ms if r.end_ms is not None else float("inf")) for r in self._runs)
            segment = audio[first * FRAME_BYTES : (last + 1) * FRAME_BYTES]
            turn = CallerTurn(segment, after_agent_heard_ms=0.0, name=f"speech{len(turns)}") if playing else \
                CallerTurn(segment, after_silence_ms=0.0, name=f"speech{len(turns)}")
            turns.append(_Turn(len(turns), turn, float(start), float(end)))
        return turns
