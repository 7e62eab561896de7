"""Agents of the local Realtime server: what the "model" says back.

An agent maps the conversation so far (a :class:`CallerTurn`: the instructions, tools and items the
response sees) to a :class:`Reply`: audio (8 kHz int16; the session converts it to the output format)
with a transcript, a function call, or both (audio first, then the call, in one response, as the
service does). It is quick; the session streams the audio out faster than real time. One agent
serves one session (``gateway.local.server.make_agent`` makes a fresh one per connection), so it may keep state.

* ``echo``: says the caller's latest committed utterance back; with nothing from the caller yet it
  says the greeting (the bundled ``greeting`` sample, or a generated speech-like signal). The echo
  leaves out the silence around the utterance, as a model's answer starts with speech.
* ``scripted:PATH`` (or ``scripted:NAME`` for a script bundled in ``gateway/local/scripts``): replies
  and function calls from a TOML file, one per response; see :mod:`gateway.local.script`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
from scipy.signal import lfilter

from gateway.audio.convert import mulaw_decode
from gateway.audio.wavio import WavError, load_sample

RATE = 8000
GREETING_SAMPLE = "greeting"
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
    """What one response says: audio + transcript, then optionally a function call.

    With a function call and neither audio nor transcript the response holds only the call item;
    otherwise an assistant audio message comes first and the call item after it.
    """

    audio: np.ndarray
    transcript: str = ""
    function_call: FunctionCall | None = None


class Agent(Protocol):
    def reply(self, turn: CallerTurn) -> Reply: ...


class EchoAgent:
    """Says the caller's latest utterance back; greets when the caller has said nothing yet."""

    def reply(self, turn: CallerTurn) -> Reply:
        if turn.audio is not None and len(turn.audio):
            spoken = trim_silence(turn.audio)
            ms = len(spoken) * 1000 // RATE
            return Reply(spoken.copy(), f"(echo of {ms} ms of caller audio)")
        if turn.text:
            ms = min(10_000, 400 + 60 * len(turn.text))
            return Reply(speech_like(ms), turn.text)
        return Reply(load_greeting(), GREETING_TRANSCRIPT)


# The agents a name picks (``LOCAL_AGENT``); ``scripted:PATH`` is the other choice (``gateway.local.server.make_agent``).
AGENTS: dict[str, type] = {"echo": EchoAgent}


def load_greeting() -> np.ndarray:
    """The greeting as 8 kHz int16: the bundled sample if readable, else 1.5 s of speech-like sound."""
    try:
        return sample_audio(GREETING_SAMPLE).copy()
    except (OSError, WavError):
        return speech_like(1500)


@lru_cache(maxsize=16)
def sample_audio(name: str) -> np.ndarray:
    """A bundled sample as 8 kHz int16, decoded once (callers copy before changing it)."""
    return mulaw_decode(load_sample(name))


def trim_silence(samples: np.ndarray, threshold: float = 300.0, frame: int = 160) -> np.ndarray:
    """``samples`` without leading and trailing 20 ms frames quieter than ``threshold`` RMS.

    A committed turn carries the VAD's prefix padding and trailing silence; a model answers with speech
    at once, so the echo must too, or every measured latency would include that silence.
    """
    frames = len(samples) // frame
    if frames == 0:
        return samples
    blocks = samples[: frames * frame].astype(np.float64).reshape(frames, frame)
    loud = np.flatnonzero(np.sqrt(np.mean(blocks**2, axis=1)) >= threshold)
    if len(loud) == 0:
        return samples
    return samples[loud[0] * frame : (loud[-1] + 1) * frame]


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
