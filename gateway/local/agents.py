"""Agents of the local Realtime server: what the "model" says back.

An agent maps the conversation so far (a :class:`CallerTurn`) to a :class:`Reply`: audio (8 kHz
int16; the session converts it to the output format) with a transcript, or a function call. It is
pure and quick; the session streams the audio out faster than real time.

* ``echo``: says the caller's latest committed utterance back; with nothing from the caller yet it
  says the greeting (``gateway/samples/greeting.wav``, or a generated speech-like signal).

A scripted agent (fixed replies, function calls on cue) is another class with the same ``reply``.
"""

from __future__ import annotations

import struct
import wave
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy.signal import lfilter, resample_poly

from gateway.audio import mulaw_decode

RATE = 8000
GREETING_PATH = Path(__file__).resolve().parent.parent / "samples" / "greeting.wav"
GREETING_TRANSCRIPT = "Hello! You are talking to the echo agent. Say something and I will say it back."


@dataclass(slots=True)
class CallerTurn:
    """The conversation as an agent sees it when a response starts."""

    audio: np.ndarray | None = None  # 8 kHz int16 audio of the latest user message, if it was audio
    text: str | None = None  # text of the latest user message, if it was text
    instructions: str = ""
    tools: list[dict[str, Any]] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)  # wire form of every conversation item


@dataclass(slots=True, frozen=True)
class FunctionCall:
    name: str
    arguments: str  # JSON text, as the Realtime API sends it


@dataclass(slots=True)
class Reply:
    """What one response says: audio + transcript, or a function call (then audio is empty)."""

    audio: np.ndarray
    transcript: str = ""
    function_call: FunctionCall | None = None


class Agent(Protocol):
    def reply(self, turn: CallerTurn) -> Reply: ...


class EchoAgent:
    """Says the caller's latest utterance back; greets when the caller has said nothing yet."""

    def reply(self, turn: CallerTurn) -> Reply:
        if turn.audio is not None and len(turn.audio):
            ms = len(turn.audio) * 1000 // RATE
            return Reply(turn.audio.copy(), f"(echo of {ms} ms of caller audio)")
        if turn.text:
            ms = min(10_000, 400 + 60 * len(turn.text))
            return Reply(speech_like(ms), turn.text)
        return Reply(load_greeting(), GREETING_TRANSCRIPT)


AGENTS: dict[str, type] = {"echo": EchoAgent}


def make_agent(name: str) -> Agent:
    try:
        return AGENTS[name]()
    except KeyError:
        raise ValueError(f"unknown local agent {name!r}; expected one of {sorted(AGENTS)}") from None


def load_greeting(path: Path = GREETING_PATH) -> np.ndarray:
    """The greeting as 8 kHz int16: the sample WAV if present and readable, else 1.5 s of speech-like sound."""
    try:
        stat = path.stat()
    except OSError:
        return speech_like(1500)
    try:
        return _read_cached(str(path), stat.st_mtime_ns).copy()
    except (OSError, ValueError, wave.Error, EOFError, struct.error):
        return speech_like(1500)


@lru_cache(maxsize=8)
def _read_cached(path: str, _mtime_ns: int) -> np.ndarray:
    return read_wav_8k(path)


def read_wav_8k(path: str | Path) -> np.ndarray:
    """A mono 8 kHz int16 copy of a WAV file: PCM 8/16-bit (via ``wave``) or G.711 mu-law (format 7)."""
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            raw = wav.readframes(wav.getnframes())
        if width == 2:
            samples = np.frombuffer(raw, dtype="<i2").astype(np.int16)
        elif width == 1:
            samples = ((np.frombuffer(raw, dtype=np.uint8).astype(np.int16) - 128) << 8).astype(np.int16)
        else:
            raise ValueError(f"unsupported WAV sample width {width}")
    except wave.Error:
        channels, rate, samples = _read_mulaw_wav(Path(path).read_bytes())
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int16)
    if rate != RATE:
        resampled = resample_poly(samples.astype(np.float64), RATE, rate)
        samples = np.clip(np.rint(resampled), -32768, 32767).astype(np.int16)
    return samples


def _read_mulaw_wav(data: bytes) -> tuple[int, int, np.ndarray]:
    """Parse a RIFF/WAVE file of mu-law audio, which the stdlib ``wave`` module refuses."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    pos, fmt, payload = 12, None, None
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = data[pos + 8 : pos + 8 + size]
        if chunk_id == b"fmt ":
            fmt = struct.unpack_from("<HHI", body)
        elif chunk_id == b"data":
            payload = body
        pos += 8 + size + (size & 1)
    if fmt is None or payload is None:
        raise ValueError("WAV without fmt or data chunk")
    tag, channels, rate = fmt
    if tag != 7:
        raise ValueError(f"unsupported WAV format tag {tag}")
    return channels, rate, mulaw_decode(payload).astype(np.int16)


def speech_like(ms: int, f0: float = 140.0, level: float = 8000.0) -> np.ndarray:
    """A voiced, speech-like signal at 8 kHz: a glottal pulse train through three formant resonators,
    with syllable-rate (4 Hz) amplitude modulation. webrtcvad classifies it as speech."""
    n = RATE * ms // 1000
    t = np.arange(n) / RATE
    phase = np.cumsum(f0 * (1 + 0.06 * np.sin(2 * np.pi * 2.5 * t)) / RATE)
    signal = np.diff(np.floor(phase), prepend=0.0)
    for centre, bandwidth in ((700.0, 130.0), (1220.0, 70.0), (2600.0, 160.0)):
        r = np.exp(-np.pi * bandwidth / RATE)
        theta = 2 * np.pi * centre / RATE
        signal = lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], signal)
    signal *= 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)
    peak = float(np.max(np.abs(signal))) if n else 0.0
    if peak > 0:
        signal *= level / peak
    return np.rint(signal).astype(np.int16)
