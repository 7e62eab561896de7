"""WAV files: a small RIFF reader/writer that knows G.711, and the bundled samples (prompts, callers of the harness).

Python's :mod:`wave` reads and writes PCM only, but a phone line carries mu-law (``WAVE_FORMAT_MULAW`` = 7),
which is what the bundled samples and the harness's recordings are. This module reads PCM (8/16/24/32-bit
integer, 32-bit float), mu-law (7) and A-law (6) WAV files at any rate, with ``WAVE_FORMAT_EXTENSIBLE``
headers, odd-sized chunks and unknown chunks handled, and writes mu-law or PCM16 files, mono or stereo.

:func:`to_mulaw_8k` turns any of these into the phone's format (mono mu-law at 8 kHz). Another rate is
converted with ``scipy.signal.resample_poly`` over the whole file at once: right for files, offline; the
streaming path uses :mod:`gateway.audio.convert`'s resamplers instead.
"""

from __future__ import annotations

import functools
import struct
import warnings
from dataclasses import dataclass
from fractions import Fraction
from importlib import resources
from os import PathLike
from pathlib import Path
from typing import Literal

import numpy as np

from gateway.audio.convert import mulaw_decode, mulaw_encode, to_int16

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

WAVE_FORMAT_PCM = 1
WAVE_FORMAT_IEEE_FLOAT = 3
WAVE_FORMAT_ALAW = 6
WAVE_FORMAT_MULAW = 7
WAVE_FORMAT_EXTENSIBLE = 0xFFFE

PHONE_RATE = 8000

Encoding = Literal["mulaw", "pcm16"]
Source = str | PathLike[str] | bytes


class WavError(ValueError):
    """A file that is not a WAV file this module can read."""


@dataclass(frozen=True, slots=True)
class WavFormat:
    """The ``fmt `` chunk, with an extensible header resolved to its sub-format."""

    format_tag: int
    channels: int
    rate: int
    bits_per_sample: int

    @property
    def block_align(self) -> int:
        return self.channels * ((self.bits_per_sample + 7) // 8)


def _read_bytes(source: Source) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    return Path(source).read_bytes()


def parse_wav(source: Source) -> tuple[WavFormat, bytes]:
    """The format and the raw ``data`` chunk of a RIFF/WAVE file (path or bytes); nothing is decoded."""
    data = _read_bytes(source)
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavError("not a RIFF/WAVE file")
    fmt: WavFormat | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body = data[pos + 8 : pos + 8 + size]  # a streaming writer may leave a bogus size: clamp to the file
        if chunk_id == b"fmt ":
            if len(body) < 16:
                raise WavError("fmt chunk too short")
            tag, channels, rate, _byte_rate, _block_align, bits = struct.unpack_from("<HHIIHH", body)
            if tag == WAVE_FORMAT_EXTENSIBLE:
                if len(body) < 40:
                    raise WavError("extensible fmt chunk too short")
                (tag,) = struct.unpack_from("<H", body, 24)  # first two bytes of the sub-format GUID
            fmt = WavFormat(tag, channels, rate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise WavError("data chunk before fmt chunk")
            usable = len(body) - len(body) % max(fmt.block_align, 1)
            return fmt, body[:usable]
        pos += 8 + size + (size & 1)  # chunks are padded to an even size
    raise WavError("no fmt or data chunk")


def _decode(fmt: WavFormat, raw: bytes) -> np.ndarray:
    """Raw frames -> interleaved int16 samples."""
    tag, bits = fmt.format_tag, fmt.bits_per_sample
    if tag == WAVE_FORMAT_MULAW and bits == 8:
        return mulaw_decode(raw).astype(np.int16)
    if tag == WAVE_FORMAT_ALAW and bits == 8:
        return np.frombuffer(audioop.alaw2lin(raw, 2), dtype="<i2").astype(np.int16)
    if tag == WAVE_FORMAT_PCM:
        if bits == 16:
            return np.frombuffer(raw, dtype="<i2").astype(np.int16)
        if bits == 8:  # unsigned, centred on 128
            return ((np.frombuffer(raw, dtype=np.uint8).astype(np.int16) - 128) << 8).astype(np.int16)
        if bits == 24:
            b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
            return (b[:, 2].astype(np.int8).astype(np.int16) << 8 | b[:, 1]).astype(np.int16)
        if bits == 32:
            return (np.frombuffer(raw, dtype="<i4") >> 16).astype(np.int16)
    if tag == WAVE_FORMAT_IEEE_FLOAT and bits in (32, 64):
        values = np.frombuffer(raw, dtype="<f4" if bits == 32 else "<f8").astype(np.float64) * 32768.0
        return to_int16(values)
    raise WavError(f"unsupported WAV encoding: format tag {tag}, {bits} bits per sample")


def read_wav(source: Source) -> tuple[np.ndarray, int]:
    """Read a WAV file (path or bytes): int16 samples and the sample rate.

    Mono gives a 1-D array; more channels give shape ``(frames, channels)``.
    """
    fmt, raw = parse_wav(source)
    samples = _decode(fmt, raw)
    if fmt.channels > 1:
        samples = samples.reshape(-1, fmt.channels)
    return samples, fmt.rate


def _wav_bytes(format_tag: int, channels: int, rate: int, bits: int, payload: bytes) -> bytes:
    block_align = channels * bits // 8
    if format_tag == WAVE_FORMAT_PCM:
        fmt = struct.pack("<HHIIHH", format_tag, channels, rate, rate * block_align, block_align, bits)
        extra = b""
    else:  # non-PCM: an 18-byte fmt (cbSize = 0) and the fact chunk the spec asks for
        fmt = struct.pack("<HHIIHHH", format_tag, channels, rate, rate * block_align, block_align, bits, 0)
        extra = b"fact" + struct.pack("<II", 4, len(payload) // block_align)
    pad = b"\x00" if len(payload) & 1 else b""
    body = (
        b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + extra
        + b"data"
        + struct.pack("<I", len(payload))
        + payload
        + pad
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def mulaw_wav_bytes(mulaw: bytes, rate: int = PHONE_RATE, channels: int = 1) -> bytes:
    """A mu-law WAV file holding these (interleaved) mu-law bytes as they are: no re-encoding."""
    return _wav_bytes(WAVE_FORMAT_MULAW, channels, rate, 8, bytes(mulaw))


def wav_bytes(samples: np.ndarray, rate: int, encoding: Encoding = "pcm16") -> bytes:
    """A WAV file of int16 samples (1-D mono, or ``(frames, channels)``), in mu-law or PCM16."""
    samples = np.asarray(samples)
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    interleaved = np.ascontiguousarray(samples, dtype=np.int16).reshape(-1)
    if encoding == "mulaw":
        return mulaw_wav_bytes(mulaw_encode(interleaved), rate, channels)
    if encoding == "pcm16":
        return _wav_bytes(WAVE_FORMAT_PCM, channels, rate, 16, interleaved.astype("<i2").tobytes())
    raise ValueError(f"unknown encoding {encoding!r}; expected 'mulaw' or 'pcm16'")


def write_wav(path: str | PathLike[str], samples: np.ndarray, rate: int, encoding: Encoding = "pcm16") -> None:
    """Write int16 samples (1-D mono, or ``(frames, channels)``) as a mu-law or PCM16 WAV file."""
    Path(path).write_bytes(wav_bytes(samples, rate, encoding))


def write_mulaw_wav(path: str | PathLike[str], mulaw: bytes, rate: int = PHONE_RATE, channels: int = 1) -> None:
    """Write (interleaved) mu-law bytes as a mu-law WAV file, byte for byte."""
    Path(path).write_bytes(mulaw_wav_bytes(mulaw, rate, channels))


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample a whole 1-D int16 signal (offline; polyphase with scipy's anti-alias filter)."""
    if rate_in == rate_out:
        return samples.astype(np.int16, copy=False)
    from scipy.signal import resample_poly

    ratio = Fraction(rate_out, rate_in)
    out = resample_poly(samples.astype(np.float64), ratio.numerator, ratio.denominator)
    return to_int16(np.asarray(out, dtype=np.float64))


def to_mulaw_8k(source: Source) -> bytes:
    """Any readable WAV (path or bytes) as the phone's audio: mono mu-law bytes at 8 kHz.

    A file already in that format is returned byte for byte; otherwise channels are averaged,
    the rate converted and the result encoded.
    """
    fmt, raw = parse_wav(source)
    if fmt.format_tag == WAVE_FORMAT_MULAW and fmt.rate == PHONE_RATE and fmt.channels == 1:
        return raw
    samples = _decode(fmt, raw)
    if fmt.channels > 1:
        samples = np.rint(samples.reshape(-1, fmt.channels).mean(axis=1)).astype(np.int16)
    return mulaw_encode(resample(samples, fmt.rate, PHONE_RATE))


def sample_names() -> list[str]:
    """The bundled samples (names without ``.wav``)."""
    folder = resources.files("gateway").joinpath("samples")
    return sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".wav"))


def load_sample(name: str) -> bytes:
    """A bundled sample (``"caller_hello"`` or ``"caller_hello.wav"``) as mu-law 8 kHz mono bytes."""
    filename = name if name.endswith(".wav") else f"{name}.wav"
    resource = resources.files("gateway").joinpath("samples", filename)
    if not resource.is_file():
        raise FileNotFoundError(f"no bundled sample {name!r}; have {sample_names()}")
    return to_mulaw_8k(resource.read_bytes())


MAX_WAIT_PROMPT_S = 5.0
WAIT_PROMPT_NONE = ("", "none")


@functools.lru_cache(maxsize=8)
def wait_prompt(spec: str) -> bytes:
    """``MODEL_WAIT_PROMPT`` as phone audio (mu-law 8 kHz): the line a caller hears while there is no model session,
    before the comfort noise. ``""`` or ``"none"``: none (b""); a bundled sample's name (``"one_moment"``: "One
    moment, please."); else the path of a WAV file. Raises ``ValueError`` naming the problem (unreadable, not a WAV
    file, longer than MAX_WAIT_PROMPT_S)."""
    name = spec.strip()
    if name.lower() in WAIT_PROMPT_NONE:
        return b""
    path = Path(name)
    is_path = path.suffix.lower() == ".wav" or len(path.parts) > 1
    try:
        audio = to_mulaw_8k(path) if is_path else load_sample(name)
    except FileNotFoundError as error:
        raise ValueError(f"{name}: no such file" if is_path else str(error)) from None
    except (OSError, WavError) as error:
        raise ValueError(f"{name}: {error}") from None
    if not audio:
        raise ValueError(f"{name}: no audio")
    if len(audio) > MAX_WAIT_PROMPT_S * PHONE_RATE:
        raise ValueError(f"{name}: {len(audio) / PHONE_RATE:.1f} s long; at most {MAX_WAIT_PROMPT_S:g} s")
    return audio
