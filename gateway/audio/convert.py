"""Audio for the telephone path: G.711 mu-law codec and streaming 3:1 polyphase resamplers.

Twilio speaks mu-law at 8 kHz; the model speaks PCM16 at 24 kHz (or mu-law itself, in
pass-through mode). Each call owns one :class:`InboundConverter` (Twilio -> model) and one
:class:`OutboundConverter` (model -> Twilio), chosen once by the session's audio format.

The resamplers share one linear-phase FIR low-pass (a Kaiser-windowed sinc, 121 taps at 24 kHz), designed
once with numpy at import (the same taps as ``scipy.signal.firwin`` gives, without importing scipy: that
import alone costs the process ~77 MB of memory). It runs with its state carried between chunks, so:

* the output is the same, to rounding, as filtering the whole stream at once, whatever the chunk sizes;
* every input chunk gives its output at once (no bursts, no look-ahead) and the only delay is the
  filter's group delay, ``(TAPS - 1) / 2`` samples at 24 kHz = 2.5 ms;
* images and aliases beyond the 8 kHz line's band (4 kHz) are at least 60 dB down.

Both are polyphase: the upsampler computes only the products with real samples (never with the two
stuffed zeros of every three), and the downsampler computes only the outputs it keeps. Each is two small
matrix products per chunk (float32, BLAS): the chunk is cut into blocks (40 samples at 8 kHz, 120 at
24 kHz), and a block's outputs depend only on that block and the one before it (see :class:`Upsampler`).

``audioop.ratecv`` (no anti-alias filter), per-chunk ``resample_poly`` (edge errors) and soxr HQ
(bursty output) fail one of these.

mu-law is done with two lookup tables built once from ``audioop`` (the reference G.711 codec;
``audioop-lts`` on Python 3.13+), so the hot path is a numpy indexing operation.

In pass-through mode (``pcmu``) the audio is never decoded at all: :class:`Base64Audio` carries the base64
text as it arrived (from Twilio's ``media`` event or the model's ``response.output_audio.delta``) and the
same text goes out in the message to the other side; only something that needs the samples decodes it.
"""

from __future__ import annotations

import base64
import binascii
import re
import warnings
from functools import lru_cache
from typing import Callable, Iterable, Protocol, Union, overload

import numpy as np

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


def design_lowpass(taps: int, cutoff_hz: float, rate: int, kaiser_beta: float) -> np.ndarray:
    """A linear-phase low-pass FIR: the ideal (sinc) response cut by a Kaiser window, scaled to unit DC gain.

    The window method as ``scipy.signal.firwin(taps, cutoff_hz, window=("kaiser", beta), fs=rate)`` does it
    (the tests check the two agree to rounding), with numpy alone."""
    n = np.arange(taps) - (taps - 1) / 2
    h = np.sinc(2.0 * cutoff_hz / rate * n) * np.kaiser(taps, kaiser_beta)
    return h / h.sum()


@lru_cache(maxsize=1)
def lowpass_taps() -> np.ndarray:
    """The anti-alias / anti-image FIR shared by both directions (unit DC gain, float64, read-only)."""
    taps = design_lowpass(FILTER_TAPS, FILTER_CUTOFF_HZ, MODEL_RATE, FILTER_KAISER_BETA)
    taps.setflags(write=False)
    return taps


def _build_tables() -> tuple[np.ndarray, np.ndarray]:
    decode = np.frombuffer(audioop.ulaw2lin(bytes(range(256)), 2), dtype="<i2").copy()
    all_pcm = np.arange(-32768, 32768, dtype="<i2").tobytes()
    encode_signed = np.frombuffer(audioop.lin2ulaw(all_pcm, 2), dtype=np.uint8)
    # Index by the uint16 view of an int16 sample: 0..32767 then -32768..-1.
    encode = np.concatenate([encode_signed[32768:], encode_signed[:32768]]).copy()
    return decode, encode


_DECODE_TABLE, _ENCODE_TABLE = _build_tables()
_DECODE_TABLE_F32 = _DECODE_TABLE.astype(np.float32)  # mu-law straight to the resampler's working type


# ---------------------------------------------------------------------- base64 audio, decoded only when needed

# What base64.b64decode(validate=True) accepts, in canonical form: the alphabet, at most two '=' at the end,
# a whole number of 4-character groups.
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


class Base64Audio:
    """Audio bytes held as the base64 text they arrived in; decoded (once) only if something needs the bytes.

    It behaves as the bytes it stands for where the call core uses audio: ``len`` (the decoded length, from the
    text's length), slicing (a slice on 3-byte boundaries is a slice of the text, still undecoded; the whole is
    itself), ``bytes(...)``, ``==`` and ``+`` with bytes. The messages to Twilio and the model
    (:func:`gateway.twilio.media.media_message`, :func:`gateway.realtime.events.input_audio_append`) put
    :attr:`text` in as it is. Build one with :meth:`parse`, which checks the text as strictly as
    ``base64.b64decode(..., validate=True)``."""

    __slots__ = ("text", "_length", "_bytes")

    def __init__(self, text: str, length: int) -> None:
        self.text = text  # valid, padded base64 (use parse())
        self._length = length
        self._bytes: bytes | None = None

    @classmethod
    def parse(cls, text: str) -> "Base64Audio":
        """Check ``text`` is base64 (the alphabet, padding only at the end, whole groups); ValueError if not."""
        if len(text) % 4:
            raise ValueError("not valid base64")
        padding = 2 if text.endswith("==") else 1 if text.endswith("=") else 0
        if len(text) <= 1024:
            valid = _BASE64_TEXT.fullmatch(text) is not None
        else:  # long text: deleting the alphabet is ~3x faster than the regex; what is left must be the padding
            valid = text.isascii() and len(text.encode("ascii").translate(None, _BASE64_ALPHABET)) == padding
        if not valid:
            raise ValueError("not valid base64")
        return cls(text, len(text) // 4 * 3 - padding)

    @classmethod
    def of(cls, data: bytes) -> "Base64Audio":
        """Bytes we have (tests, tools): encoded now."""
        audio = cls(base64.b64encode(data).decode("ascii"), len(data))
        audio._bytes = bytes(data)
        return audio

    def __bytes__(self) -> bytes:
        if self._bytes is None:
            self._bytes = binascii.a2b_base64(self.text)  # checked by parse(); base64.b64decode adds a wrapper
        return self._bytes

    def __len__(self) -> int:
        return self._length

    def __bool__(self) -> bool:
        return self._length > 0

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> Union["Base64Audio", bytes]: ...

    def __getitem__(self, index: Union[slice, int]) -> Union["Base64Audio", bytes, int]:
        if not isinstance(index, slice):
            return bytes(self)[index]
        start, stop, step = index.indices(self._length)
        if step == 1:
            stop = max(start, stop)
            if start == 0 and stop == self._length:
                return self
            if start % 3 == 0 and (stop % 3 == 0 or stop == self._length):
                # Whole 3-byte groups are whole 4-character groups of the text: no decoding.
                return Base64Audio(self.text[start // 3 * 4 : -(-stop // 3) * 4], stop - start)
        return bytes(self)[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Base64Audio):
            return self.text == other.text or bytes(self) == bytes(other)
        if isinstance(other, (bytes, bytearray, memoryview)):
            return len(other) == self._length and bytes(self) == bytes(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(bytes(self))

    def __add__(self, other: object) -> bytes:
        if isinstance(other, (Base64Audio, bytes, bytearray, memoryview)):
            return bytes(self) + bytes(other)
        return NotImplemented

    def __radd__(self, other: object) -> bytes:
        if isinstance(other, (bytes, bytearray, memoryview)):
            return bytes(other) + bytes(self)
        return NotImplemented

    def __repr__(self) -> str:
        return f"Base64Audio({self._length} bytes)"


AudioBytes = Union[bytes, bytearray, memoryview, Base64Audio]


def audio_bytes(audio: AudioBytes) -> bytes | bytearray | memoryview:
    """The bytes of some audio, decoding a :class:`Base64Audio`."""
    return bytes(audio) if isinstance(audio, Base64Audio) else audio


def audio_base64(audio: AudioBytes) -> str:
    """The base64 text of some audio: a :class:`Base64Audio`'s own text, as it arrived; bytes are encoded."""
    if isinstance(audio, Base64Audio):
        return audio.text
    return binascii.b2a_base64(audio, newline=False).decode("ascii")


def join_audio(pieces: Iterable[AudioBytes]) -> bytes:
    """``b"".join`` for audio that may be :class:`Base64Audio`."""
    return b"".join(audio_bytes(piece) for piece in pieces)


# ---------------------------------------------------------------------- codec


def mulaw_decode(data: AudioBytes) -> np.ndarray:
    """mu-law bytes -> int16 samples (same rate)."""
    return _DECODE_TABLE[np.frombuffer(audio_bytes(data), dtype=np.uint8)]


def mulaw_encode(samples: np.ndarray) -> bytes:
    """int16 samples -> mu-law bytes (same rate)."""
    return _ENCODE_TABLE[samples.astype(np.int16, copy=False).view(np.uint16)].tobytes()


def pcm16_from_bytes(data: bytes) -> np.ndarray:
    """Little-endian PCM16 bytes -> int16 array (a trailing odd byte is dropped)."""
    usable = len(data) - (len(data) % 2)
    return np.frombuffer(data[:usable], dtype="<i2")


def to_int16(values: np.ndarray) -> np.ndarray:
    """Round and saturate float samples to int16 (in place on ``values``, a float array of our own)."""
    # np.minimum / np.maximum, not np.clip: the same result without np.clip's per-call overhead (~10 us).
    np.minimum(values, 32767.0, out=values)
    np.maximum(values, -32768.0, out=values)
    return np.rint(values, out=values).astype(np.int16)


# ---------------------------------------------------------------------- polyphase resamplers

_UP_BLOCK = 40  # input samples (8 kHz) per block = the upsampler's history: (TAPS - 1) / RATIO
_DOWN_BLOCK = _UP_BLOCK * RATIO  # input samples (24 kHz) per block = the downsampler's history: TAPS - 1
_DOWN_OUT = _DOWN_BLOCK // RATIO  # outputs per downsampler block


def _upsampler_matrices(taps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(previous block, this block) -> this block's outputs, for the 8 kHz -> 24 kHz polyphase filter.

    Output ``3 i + p`` (phase ``p``) is ``sum_q g[3 q + p] * x[i - q]`` with ``g = RATIO * taps`` (zero-stuffing
    divides the level by RATIO) zero-padded to ``3 * 41`` taps: the products with the stuffed zeros are never
    made. For the ``i = 40 b + m`` of block ``b``, ``x[i - q]`` lies in block ``b`` (``q <= m``) or ``b - 1``."""
    g = np.zeros(RATIO * (_UP_BLOCK + 1))
    g[: len(taps)] = taps * RATIO
    prev = np.zeros((_UP_BLOCK, _UP_BLOCK * RATIO))
    cur = np.zeros((_UP_BLOCK, _UP_BLOCK * RATIO))
    for m in range(_UP_BLOCK):
        for p in range(RATIO):
            for k in range(_UP_BLOCK):
                if k >= m:  # x[40 (b - 1) + k] = x[i - q] with q = 40 + m - k in 0..40
                    prev[k, RATIO * m + p] = g[RATIO * (_UP_BLOCK + m - k) + p]
                if k <= m:  # x[40 b + k], q = m - k
                    cur[k, RATIO * m + p] = g[RATIO * (m - k) + p]
    return prev.astype(np.float32), cur.astype(np.float32)


def _downsampler_matrices(taps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(this block, next block) -> this block's outputs, for the 24 kHz -> 8 kHz polyphase filter.

    Only the kept outputs are computed: output ``m`` of a chunk is ``sum_t taps[120 - t] * e[3 m + t]``
    (``e``: the 120 samples before the chunk's first kept one, then the chunk). For ``m = 40 b + j``, ``e[3 m + t]``
    lies in block ``b`` or ``b + 1`` of ``e``."""
    n = len(taps) - 1  # 120
    this = np.zeros((_DOWN_BLOCK, _DOWN_OUT))
    after = np.zeros((_DOWN_BLOCK, _DOWN_OUT))
    for j in range(_DOWN_OUT):
        for i in range(_DOWN_BLOCK):
            t = i - RATIO * j
            if 0 <= t <= n:
                this[i, j] = taps[n - t]
            t = i + _DOWN_BLOCK - RATIO * j
            if 0 <= t <= n:
                after[i, j] = taps[n - t]
    return this.astype(np.float32), after.astype(np.float32)


@lru_cache(maxsize=1)
def _matrices() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    taps = lowpass_taps()
    assert len(taps) - 1 == _DOWN_BLOCK == _UP_BLOCK * RATIO, "the blocks are sized by the filter's history"
    return (*_upsampler_matrices(taps), *_downsampler_matrices(taps))


@lru_cache(maxsize=1)
def _up_matrix() -> np.ndarray:
    """``[P; C]``: (previous block, this block) stacked, times it, gives this block's 120 outputs."""
    prev, cur, _, _ = _matrices()
    return np.ascontiguousarray(np.vstack((prev, cur)))


@lru_cache(maxsize=1)
def _down_matrix() -> np.ndarray:
    """``[T; A]``: (this block, next block) stacked, times it, gives this block's 40 outputs."""
    _, _, this, after = _matrices()
    return np.ascontiguousarray(np.vstack((this, after)))


def _clip_into_two_calls(values: np.ndarray, into: np.ndarray) -> None:
    np.minimum(values, 32767.0, out=values)
    np.maximum(values, -32768.0, out=values)
    np.copyto(into, values, casting="unsafe")


def _clip_into_ufunc() -> Callable[[np.ndarray, np.ndarray], None]:
    """Saturate float samples to int16 and store them as int16, in one call of numpy's clip ufunc (``np.clip``
    wraps it in ~2 us of Python); three calls where the ufunc is not importable."""
    try:
        from numpy._core.umath import clip  # type: ignore[attr-defined]  # numpy's stubs omit the private module
    except ImportError:  # numpy < 2
        return _clip_into_two_calls
    return lambda values, into: clip(values, -32768.0, 32767.0, out=into, casting="unsafe")


_clip_into = _clip_into_ufunc()
_PCM16 = np.dtype("<i2")


def _pcm16_bytes(out: np.ndarray, out16: np.ndarray, count: int) -> bytes:
    """Round the float outputs (in place), saturate them into ``out16`` and give its first ``count`` as bytes."""
    np.rint(out, out=out)
    _clip_into(out, out16)
    flat = out16.reshape(-1)
    return (flat if count == flat.size else flat[:count]).tobytes()


class _Frames:
    """Buffers for one chunk size, made once and reused for every chunk of that size: the extended input (the
    carried history, then the chunk, then zero padding to whole blocks), a view of it as overlapping rows of two
    blocks, and the outputs. After the first chunk no array is allocated but the bytes handed back: numpy's
    per-call overhead, not arithmetic, is what a 20 ms frame costs (and more so in a busy server, where the
    caches are cold: about 30 us a frame measured in place, against 7 us in a loop)."""

    __slots__ = ("extended", "chunk", "rows", "out", "out16", "count")

    def __init__(self, history: int, block: int, chunk: int, count: int, outputs_per_block: int) -> None:
        blocks = -(-max(count, 1) // outputs_per_block)
        self.extended = np.zeros((blocks + 1) * block, dtype=np.float32)
        self.chunk = self.extended[history : history + chunk]  # where a chunk's samples go
        # Row b is blocks b and b + 1 (overlapping, no copy): one matrix product gives every block's outputs.
        self.rows = np.lib.stride_tricks.as_strided(self.extended, shape=(blocks, 2 * block),
                                                    strides=(block * 4, 4), writeable=False)
        self.out = np.empty((blocks, outputs_per_block), dtype=np.float32)
        self.out16 = np.empty((blocks, outputs_per_block), dtype=_PCM16)
        self.count = count  # real outputs (the rest come from the zero padding)

    def to_bytes(self) -> bytes:
        return _pcm16_bytes(self.out, self.out16, self.count)


class _Ring:
    """Upsampler buffers for chunks of ``n`` samples, ``n`` a whole number of blocks (Twilio's 160-sample frames):
    the chunks are written one after another into a long buffer, so each chunk's history is simply the end of the
    chunk before it (no copy), and the two-block row views of every slot are made once. Only when the buffer is
    full are the last 40 samples moved to its start. Per frame: decode into the slot, one matrix product, round,
    saturate into int16, bytes."""

    __slots__ = ("n", "stream", "chunks", "rows", "out", "out16", "slot")

    SLOTS = 8  # 8 frames (5 KB); the history moves once every 8 frames

    def __init__(self, n: int, history: np.ndarray) -> None:
        self.n = n
        blocks = n // _UP_BLOCK
        self.stream = np.zeros(_UP_BLOCK + self.SLOTS * n, dtype=np.float32)
        self.stream[:_UP_BLOCK] = history
        self.chunks = [self.stream[_UP_BLOCK + k * n : _UP_BLOCK + (k + 1) * n] for k in range(self.SLOTS)]
        self.rows = [np.lib.stride_tricks.as_strided(self.stream[k * n :], shape=(blocks, 2 * _UP_BLOCK),
                                                     strides=(_UP_BLOCK * 4, 4), writeable=False)
                     for k in range(self.SLOTS)]
        self.out = np.empty((blocks, _UP_BLOCK * RATIO), dtype=np.float32)
        self.out16 = np.empty((blocks, _UP_BLOCK * RATIO), dtype=_PCM16)
        self.slot = 0  # the next chunk's slot

    def next_slot(self) -> int:
        slot = self.slot
        if slot == self.SLOTS:  # full: the history (the last 40 samples) moves to the start
            self.stream[:_UP_BLOCK] = self.stream[-_UP_BLOCK:]
            slot = 0
        self.slot = slot + 1
        return slot

    def history(self) -> np.ndarray:
        end = _UP_BLOCK + self.slot * self.n
        return self.stream[end - _UP_BLOCK : end].copy()


class Upsampler:
    """8 kHz -> 24 kHz, streaming, polyphase: the last 40 input samples carried between chunks.

    A chunk (after the 40 carried samples) is cut into blocks of 40 samples; each block's 120 outputs are
    ``previous block @ P + this block @ C``: one matrix product of the overlapping two-block rows with ``[P; C]``
    for all blocks at once. A last partial block is zero-padded and only its real outputs kept: any chunk size
    gives exactly 3x its length, at once."""

    __slots__ = ("_matrix", "_history", "_ring", "_frames", "_frames_size")

    def __init__(self) -> None:
        self._matrix = _up_matrix()
        self._history = np.zeros(_UP_BLOCK, dtype=np.float32)  # while neither the ring nor the frames hold it
        self._ring: _Ring | None = None  # for chunks of whole blocks
        self._frames: _Frames | None = None  # for any other size
        self._frames_size = -1

    def _take_history(self) -> np.ndarray:
        """The carried samples, out of whichever buffers hold them (those are dropped)."""
        if self._ring is not None:
            history, self._ring = self._ring.history(), None
        elif self._frames is not None:
            n = self._frames_size
            history = self._frames.extended[n : n + _UP_BLOCK].copy()
            self._frames, self._frames_size = None, -1
        else:
            history = self._history
        return history

    def _ring_for(self, n: int) -> _Ring:
        ring = self._ring
        if ring is None or ring.n != n:
            ring = self._ring = _Ring(n, self._take_history())
        return ring

    def _frames_for(self, n: int) -> _Frames:
        frames = self._frames
        if frames is not None and self._frames_size == n:
            frames.extended[:_UP_BLOCK] = frames.extended[n : n + _UP_BLOCK]  # the history, carried in place
            return frames
        history = self._take_history()
        frames = self._frames = _Frames(_UP_BLOCK, _UP_BLOCK, n, n * RATIO, _UP_BLOCK * RATIO)
        self._frames_size = n
        frames.extended[:_UP_BLOCK] = history
        return frames

    def process_mulaw(self, mulaw: bytes | bytearray | memoryview) -> bytes:
        """mu-law 8 kHz bytes in, little-endian PCM16 24 kHz bytes out (3x as many samples): decoded straight
        into the filter's input."""
        n = len(mulaw)
        if n == 0:
            return b""
        codes = np.frombuffer(mulaw, dtype=np.uint8)
        if n % _UP_BLOCK == 0:
            ring = self._ring_for(n)
            slot = ring.next_slot()
            _DECODE_TABLE_F32.take(codes, out=ring.chunks[slot])
            np.matmul(ring.rows[slot], self._matrix, out=ring.out)
            return _pcm16_bytes(ring.out, ring.out16, n * RATIO)
        frames = self._frames_for(n)
        _DECODE_TABLE_F32.take(codes, out=frames.chunk)
        np.matmul(frames.rows, self._matrix, out=frames.out)
        return frames.to_bytes()

    def process(self, samples: np.ndarray) -> np.ndarray:
        """int16 (or float) at 8 kHz in, int16 at 24 kHz out (exactly 3x as many samples)."""
        n = len(samples)
        if n == 0:
            return np.zeros(0, dtype=np.int16)
        frames = self._frames_for(n)
        frames.chunk[:] = samples
        np.matmul(frames.rows, self._matrix, out=frames.out)
        return np.frombuffer(frames.to_bytes(), dtype="<i2").astype(np.int16, copy=False)

    def reset(self) -> None:
        self._history = np.zeros(_UP_BLOCK, dtype=np.float32)
        self._ring = self._frames = None
        self._frames_size = -1


class Downsampler:
    """24 kHz -> 8 kHz, streaming, polyphase: only every 3rd output (the kept one) is computed.

    Carried between chunks: the 118-120 input samples that come before the next kept output's window. The
    chunk is cut into blocks of 120 samples (40 outputs); a block's outputs are ``this block @ T + next block @
    A``: one matrix product of the overlapping two-block rows with ``[T; A]``. A chunk gives every output whose
    last input sample it brings, at once, so the output is the same whatever the chunk sizes."""

    __slots__ = ("_matrix", "_history", "_frames", "_frames_key")

    def __init__(self) -> None:
        self._matrix = _down_matrix()
        self._history = np.zeros(_DOWN_BLOCK, dtype=np.float32)
        self._frames: _Frames | None = None
        self._frames_key = (-1, -1)  # (history length, chunk length) the buffers were made for

    def process_bytes(self, pcm16: bytes | bytearray | memoryview) -> np.ndarray:
        """Little-endian PCM16 24 kHz bytes (an even count) in, int16 8 kHz out."""
        return self.process(np.frombuffer(pcm16, dtype="<i2"))

    def process(self, samples: np.ndarray) -> np.ndarray:
        """int16 (or float) at 24 kHz in, int16 at 8 kHz out (one output chunk per input chunk)."""
        held = len(self._history)
        n = len(samples)
        total = held + n
        # Output m needs extended[3 m .. 3 m + 120]: the outputs whose last sample is here.
        count = (total - _DOWN_BLOCK - 1) // RATIO + 1 if total > _DOWN_BLOCK else 0
        if count == 0:
            if n:
                self._history = np.concatenate((self._history, np.asarray(samples, dtype=np.float32)))
            return np.zeros(0, dtype=np.int16)
        key = (held, n)
        frames = self._frames
        if frames is None or self._frames_key != key:
            frames = self._frames = _Frames(0, _DOWN_BLOCK, total, count, _DOWN_OUT)
            self._frames_key = key
        extended = frames.extended
        extended[:held] = self._history
        extended[held:total] = samples
        self._history = extended[RATIO * count : total].copy()
        np.matmul(frames.rows, self._matrix, out=frames.out)
        return np.frombuffer(frames.to_bytes(), dtype="<i2").astype(np.int16, copy=False)

    def reset(self) -> None:
        self._history = np.zeros(_DOWN_BLOCK, dtype=np.float32)
        self._frames, self._frames_key = None, (-1, -1)


class InboundConverter(Protocol):
    """Twilio's mu-law 8 kHz -> the model's input format."""

    def convert(self, mulaw: AudioBytes) -> AudioBytes: ...


class OutboundConverter(Protocol):
    """The model's output format -> Twilio's mu-law 8 kHz."""

    def convert(self, model_audio: AudioBytes) -> AudioBytes: ...

    def reset(self) -> None: ...


class MulawToPcm24k:
    """Inbound for the ``pcm16`` format: decode, upsample 3x, little-endian PCM16 bytes."""

    __slots__ = ("_upsampler",)

    def __init__(self) -> None:
        self._upsampler = Upsampler()

    def convert(self, mulaw: AudioBytes) -> bytes:
        return self._upsampler.process_mulaw(audio_bytes(mulaw))


class Pcm24kToMulaw:
    """Outbound for the ``pcm16`` format: downsample 3x, encode mu-law."""

    __slots__ = ("_downsampler", "_pending")

    def __init__(self) -> None:
        self._downsampler = Downsampler()
        self._pending = b""  # an odd trailing byte, kept for the next chunk

    def convert(self, model_audio: AudioBytes) -> bytes:
        data = audio_bytes(model_audio)
        if self._pending:
            data = self._pending + data
        usable = len(data) - (len(data) % 2)
        self._pending = bytes(data[usable:])
        return mulaw_encode(self._downsampler.process_bytes(memoryview(data)[:usable]))

    def reset(self) -> None:
        self._downsampler.reset()
        self._pending = b""


class PassThrough:
    """The ``pcmu`` format: the model speaks mu-law 8 kHz itself; nothing to do either way (a
    :class:`Base64Audio` stays undecoded: it goes out as the text it came in)."""

    __slots__ = ()

    def convert(self, audio: AudioBytes) -> AudioBytes:
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
