"""Voice activity detection for the local Realtime server: webrtcvad plus a little hysteresis.

Input is 8 kHz int16 audio in chunks of any size; it is cut into 20 ms frames (160 samples), each
frame is classified by webrtcvad (with an energy floor, so digital near-silence never counts), and
two rules turn frame decisions into turns, like OpenAI's ``server_vad``:

* speech starts when at least ``START_VOICED`` of the last ``START_WINDOW`` frames are voiced;
  its position is the first voiced frame of that window (so detection lags onset by 60-100 ms);
* speech stops after ``silence_duration_ms`` of consecutive unvoiced frames; its position is the
  end of the last of those frames (OpenAI's ``audio_end_ms`` includes the silence too).

Positions are sample indexes on the session's input clock (samples fed since creation).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import webrtcvad

RATE = 8000
FRAME_SAMPLES = 160  # 20 ms
FRAME_BYTES = FRAME_SAMPLES * 2
FRAME_MS = 20
START_WINDOW = 5  # frames (100 ms)
START_VOICED = 4  # voiced frames within the window that declare speech
# Frames quieter than this RMS are unvoiced whatever webrtcvad says (about -54 dBFS).
ENERGY_FLOOR_RMS = 65.0


def aggressiveness_for(threshold: float) -> int:
    """Map OpenAI's ``threshold`` (0..1, higher = needs louder/clearer speech) to webrtcvad's 0..3."""
    return max(0, min(3, int(threshold * 4)))


@dataclass(slots=True, frozen=True)
class VadEvent:
    """``kind`` is "start" or "stop"; ``sample`` is the position on the input clock."""

    kind: str
    sample: int


class VoiceActivityDetector:
    """Streaming speech start/stop detector (see the module docstring for the rules)."""

    __slots__ = ("_vad", "_aggressiveness", "_silence_frames", "_pending", "_pos", "_window", "speaking", "_unvoiced_run")

    def __init__(self, threshold: float = 0.5, silence_duration_ms: int = 500) -> None:
        self._aggressiveness = -1
        self._vad: webrtcvad.Vad
        self._silence_frames = 1
        self.configure(threshold, silence_duration_ms)
        self._pending = bytearray()  # a partial frame carried to the next chunk
        self._pos = 0  # input-clock sample index of the next frame's start
        self._window: deque[bool] = deque(maxlen=START_WINDOW)
        self.speaking = False
        self._unvoiced_run = 0

    def configure(self, threshold: float, silence_duration_ms: int) -> None:
        """Apply new turn-detection settings; the detector's state carries over."""
        aggressiveness = aggressiveness_for(threshold)
        if aggressiveness != self._aggressiveness:
            self._aggressiveness = aggressiveness
            self._vad = webrtcvad.Vad(aggressiveness)
        self._silence_frames = max(1, -(-silence_duration_ms // FRAME_MS))

    def reset(self) -> None:
        """Forget any speech in progress (after a manual commit or clear); the clock keeps running."""
        self.speaking = False
        self._window.clear()
        self._unvoiced_run = 0

    def skip(self, samples: int) -> None:
        """Advance the clock over audio not analysed (VAD disabled), dropping any partial frame."""
        self._pos += len(self._pending) // 2 + samples
        self._pending.clear()
        self.reset()

    def feed(self, samples: np.ndarray) -> list[VadEvent]:
        """Analyse a chunk of 8 kHz int16 audio; returns the start/stop events it completes."""
        pending = self._pending
        pending += samples.astype("<i2", copy=False).tobytes()
        events: list[VadEvent] = []
        offset = 0
        while len(pending) - offset >= FRAME_BYTES:
            frame = bytes(pending[offset : offset + FRAME_BYTES])
            offset += FRAME_BYTES
            voiced = self._is_voiced(frame)
            frame_start = self._pos
            self._pos += FRAME_SAMPLES
            if not self.speaking:
                self._window.append(voiced)
                if sum(self._window) >= START_VOICED:
                    first = next(i for i, v in enumerate(self._window) if v)
                    start = frame_start - (len(self._window) - 1 - first) * FRAME_SAMPLES
                    self.speaking = True
                    self._unvoiced_run = 0
                    self._window.clear()
                    events.append(VadEvent("start", start))
            elif voiced:
                self._unvoiced_run = 0
            else:
                self._unvoiced_run += 1
                if self._unvoiced_run >= self._silence_frames:
                    self.speaking = False
                    self._unvoiced_run = 0
                    events.append(VadEvent("stop", self._pos))
        if offset:
            del pending[:offset]
        return events

    def _is_voiced(self, frame: bytes) -> bool:
        pcm = np.frombuffer(frame, dtype="<i2").astype(np.float32)
        if float(np.sqrt(np.mean(pcm * pcm))) < ENERGY_FLOOR_RMS:
            return False
        return self._vad.is_speech(frame, RATE)
