"""Audio for the telephone path: G.711 mu-law codec and streaming 3:1 resamplers.

Twilio speaks mu-law at 8 kHz; the model speaks PCM16 at 24 kHz (or mu-law itself, in
pass-through mode). Each call owns one :class:`InboundConverter` (Twilio -> model) and one
:class:`OutboundConverter` (model -> Twilio), chosen once by the session's audio format.

The resamplers are a linear-phase FIR low-pass designed once (scipy ``firwin``, Kaiser window)
and run with its state carried between chunks (the last ``TAPS - 1`` input samples), so:

* the output is the same, to rounding, as filtering the whole stream at once, whatever the chunk sizes;
* every input chunk gives its output at once (no bursts, no look-ahead) and the only delay is the
  filter's group delay, ``(TAPS - 1) / 2`` samples at 24 kHz = 2.5 ms;
* images and aliases beyond the 8 kHz line's band (4 kHz) are at least 60 dB down.

``audioop.ratecv`` (no anti-alias filter), per-chunk ``resample_poly`` (edge errors) and soxr HQ
(bursty output) fail one of these.

mu-law is done with two lookup tables built once from ``audioop`` (the reference G.711 codec;
``audioop-lts`` on Python 3.13+), so the hot path is a numpy indexing operation.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Protocol

import numpy as np
from scipy.signal import firwin

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

TWILIO_RATE = 8000
MODEL_RATE = 24000
RATIO = MODEL_RATE // TWILIO_RATE  # 3
MULAW_SILENCE = 0xFF
MULAW_BYTES_PER_MS = TWILIO_RATE // 1000  # 8
PCM16_BYTES_PER_MS = MODEL_RATE * 2 // 1000  # 48

# 121 taps at 24 kHz: group delay 60 samples = 2.5 ms. Cut-off 3.7 kHz with a ~0.9 kHz transition:
# the telephone band (300-3400 Hz) passes, everything from ~4.15 kHz up is >= 60 dB down.
FILTER_TAPS = 121
FILTER_CUTOFF_HZ = 3700.0
FILTER_KAISER_BETA = 7.0
FILTER_DELAY_MS = (FILTER_TAPS - 1) / 2 / MODEL_RATE * 1000


@lru_cache(maxsize=1)
def lowpass_taps() -> np.ndarray:
    """The anti-alias / anti-image FIR shared by both directions (unit DC gain)."""
    return firwin(FILTER_TAPS, FILTER_CUTOFF_HZ, window=("kaiser", FILTER_KAISER_BETA), fs=MODEL_RATE)


def _build_tables() -> tuple[np.ndarray, np.ndarray]:
    decode = np.frombuffer(audioop.ulaw2lin(bytes(range(256)), 2), dtype="<i2").copy()
    all_pcm = np.arange(-32768, 32768, dtype="<i2").tobytes()
    encode_signed = np.frombuffer(audioop.lin2ulaw(all_pcm, 2), dtype=np.uint8)
    # Index by the uint16 view of an int16 sample: 0..32767 then -32768..-1.
    encode = np.concatenate([encode_signed[32768:], encode_signed[:32768]]).copy()
    return decode, encode


_DECODE_TABLE, _ENCODE_TABLE = _build_tables()


def mulaw_decode(data: bytes) -> np.ndarray:
    """mu-law bytes -> int16 samples (same rate)."""
    return _DECODE_TABLE[np.frombuffer(data, dtype=np.uint8)]


def mulaw_encode(samples: np.ndarray) -> bytes:
    """int16 samples -> mu-law bytes (same rate)."""
    return _ENCODE_TABLE[samples.astype(np.int16, copy=False).view(np.uint16)].tobytes()


def pcm16_from_bytes(data: bytes) -> np.ndarray:
    """Little-endian PCM16 bytes -> int16 array (a trailing odd byte is dropped)."""
    usable = len(data) - (len(data) % 2)
    return np.frombuffer(data[:usable], dtype="<i2")


def to_int16(values: np.ndarray) -> np.ndarray:
    """Round and saturate float samples to int16 (in place on ``values``, which must be float64)."""
    np.clip(values, -32768.0, 32767.0, out=values)
    return np.rint(values, out=values).astype(np.int16)


_HISTORY = FILTER_TAPS - 1  # input samples (at 24 kHz) the filter needs from before a chunk


class Upsampler:
    """8 kHz -> 24 kHz, streaming: zero-stuff, then the FIR over (carried history + chunk)."""

    __slots__ = ("_taps", "_history")

    def __init__(self) -> None:
        self._taps = lowpass_taps() * RATIO  # zero-stuffing divides the level by RATIO
        self._history = np.zeros(_HISTORY)

    def process(self, samples: np.ndarray) -> np.ndarray:
        """int16 at 8 kHz in, int16 at 24 kHz out (exactly 3x as many samples)."""
        extended = np.zeros(_HISTORY + len(samples) * RATIO)
        extended[:_HISTORY] = self._history
        extended[_HISTORY::RATIO] = samples
        self._history = extended[-_HISTORY:]
        return to_int16(np.convolve(extended, self._taps, "valid"))

    def reset(self) -> None:
        self._history = np.zeros(_HISTORY)


class Downsampler:
    """24 kHz -> 8 kHz, streaming: the FIR over (carried history + chunk), every 3rd sample kept."""

    __slots__ = ("_taps", "_history", "_phase")

    def __init__(self) -> None:
        self._taps = lowpass_taps()
        self._history = np.zeros(_HISTORY)
        self._phase = 0  # index, within the next chunk, of the first sample to keep

    def process(self, samples: np.ndarray) -> np.ndarray:
        """int16 at 24 kHz in, int16 at 8 kHz out (one output chunk per input chunk)."""
        if len(samples) == 0:
            return np.zeros(0, dtype=np.int16)
        extended = np.concatenate((self._history, samples))
        self._history = extended[-_HISTORY:]
        kept = np.convolve(extended, self._taps, "valid")[self._phase :: RATIO]
        self._phase = (self._phase - len(samples)) % RATIO
        return to_int16(kept)

    def reset(self) -> None:
        self._history = np.zeros(_HISTORY)
        self._phase = 0


class InboundConverter(Protocol):
    """Twilio's mu-law 8 kHz -> the model's input format."""

    def convert(self, mulaw: bytes) -> bytes: ...


class OutboundConverter(Protocol):
    """The model's output format -> Twilio's mu-law 8 kHz."""

    def convert(self, model_audio: bytes) -> bytes: ...

    def reset(self) -> None: ...


class MulawToPcm24k:
    """Inbound for the ``pcm16`` format: decode, upsample 3x, little-endian PCM16 bytes."""

    __slots__ = ("_upsampler",)

    def __init__(self) -> None:
        self._upsampler = Upsampler()

    def convert(self, mulaw: bytes) -> bytes:
        return self._upsampler.process(mulaw_decode(mulaw)).astype("<i2", copy=False).tobytes()


class Pcm24kToMulaw:
    """Outbound for the ``pcm16`` format: downsample 3x, encode mu-law."""

    __slots__ = ("_downsampler", "_pending")

    def __init__(self) -> None:
        self._downsampler = Downsampler()
        self._pending = b""  # an odd trailing byte, kept for the next chunk

    def convert(self, model_audio: bytes) -> bytes:
        if self._pending:
            model_audio = self._pending + model_audio
        usable = len(model_audio) - (len(model_audio) % 2)
        self._pending = model_audio[usable:]
        return mulaw_encode(self._downsampler.process(np.frombuffer(model_audio[:usable], dtype="<i2")))

    def reset(self) -> None:
        self._downsampler.reset()
        self._pending = b""


class PassThrough:
    """The ``pcmu`` format: the model speaks mu-law 8 kHz itself; nothing to do either way."""

    __slots__ = ()

    def convert(self, audio: bytes) -> bytes:
        return audio

    def reset(self) -> None:
        pass


AUDIO_FORMATS = ("pcm16", "pcmu")


def converters_for(audio_format: str) -> tuple[InboundConverter, OutboundConverter]:
    """The (inbound, outbound) converter pair for a session audio format."""
    if audio_format == "pcm16":
        return MulawToPcm24k(), Pcm24kToMulaw()
    if audio_format == "pcmu":
        return PassThrough(), PassThrough()
    raise ValueError(f"unknown audio format {audio_format!r}; expected one of {AUDIO_FORMATS}")


def model_bytes_per_ms(audio_format: str) -> int:
    """Bytes of model-side audio per millisecond for a session audio format."""
    return PCM16_BYTES_PER_MS if audio_format == "pcm16" else MULAW_BYTES_PER_MS


def mulaw_silence(ms: int) -> bytes:
    """``ms`` milliseconds of mu-law silence (8 bytes per ms)."""
    return bytes([MULAW_SILENCE]) * (ms * MULAW_BYTES_PER_MS)


def comfort_noise(ms: int, rms: float = 60.0, seed: int = 7) -> bytes:
    """``ms`` milliseconds of soft white noise as mu-law (about -55 dBFS): the line is alive, nobody is talking."""
    samples = np.random.default_rng(seed).normal(0.0, rms, ms * MULAW_BYTES_PER_MS)
    return mulaw_encode(to_int16(samples))
