"""The polyphase resamplers against the filter they replaced (issue 11).

The reference is the previous implementation, restated here: ``scipy.signal.firwin`` taps, the zero-stuffed (or
full-rate) signal convolved at 24 kHz, every product computed. The polyphase path must give the same samples (to
one LSB of rounding), the same pass band and the same stop band, in any chunking, and without scipy at run time.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from gateway.audio.convert import (
    FILTER_CUTOFF_HZ,
    FILTER_KAISER_BETA,
    FILTER_TAPS,
    MODEL_RATE,
    Downsampler,
    MulawToPcm24k,
    Pcm24kToMulaw,
    Upsampler,
    lowpass_taps,
    mulaw_decode,
    mulaw_encode,
)

from .helpers import pcm_tone


def firwin_taps() -> np.ndarray:
    from scipy.signal import firwin  # the old design, for reference only

    return firwin(FILTER_TAPS, FILTER_CUTOFF_HZ, window=("kaiser", FILTER_KAISER_BETA), fs=MODEL_RATE)


def old_down(x: np.ndarray) -> np.ndarray:
    """The previous downsampler over a whole stream: filter every 24 kHz sample, keep every 3rd (float)."""
    extended = np.concatenate((np.zeros(FILTER_TAPS - 1), x.astype(float)))
    return np.convolve(extended, firwin_taps(), "valid")[::3]


def old_up(x: np.ndarray) -> np.ndarray:
    """The previous upsampler over a whole stream: zero-stuff to 24 kHz, filter every sample (float)."""
    stuffed = np.zeros(FILTER_TAPS - 1 + 3 * len(x))
    stuffed[FILTER_TAPS - 1 :: 3] = x
    return np.convolve(stuffed, firwin_taps() * 3, "valid")


def rounded(values: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(values, -32768, 32767)).astype(int)


def noise(n: int, seed: int = 0, level: float = 6000) -> np.ndarray:
    return np.clip(np.random.default_rng(seed).standard_normal(n) * level, -32768, 32767).astype(np.int16)


def rms_db(signal: np.ndarray, amplitude: float) -> float:
    rms = np.sqrt(np.mean(np.asarray(signal, dtype=float) ** 2))
    return 20 * np.log10(max(rms, 1e-9) / (amplitude / np.sqrt(2)))


def in_chunks(process, x: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([process(x[i : i + size]) for i in range(0, len(x), size)])


def test_the_taps_are_firwins_without_scipy():
    assert np.max(np.abs(lowpass_taps() - firwin_taps())) < 1e-12
    assert abs(lowpass_taps().sum() - 1.0) < 1e-12


def test_serving_never_imports_scipy():
    code = "import sys, gateway.server.app; print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("chunk", [2400, 4800, 960, 777, 1])
def test_downsampler_gives_the_old_filters_samples(chunk):
    x = noise(24000 if chunk > 1 else 2400, seed=chunk)
    new = in_chunks(Downsampler().process, x, chunk)
    assert len(new) == -(-len(x) // 3)
    assert np.max(np.abs(new.astype(int) - rounded(old_down(x)))) <= 1


@pytest.mark.parametrize("chunk", [160, 320, 8, 53, 1])
def test_upsampler_gives_the_old_filters_samples(chunk):
    x = noise(8000 if chunk > 1 else 1600, seed=chunk)
    new = in_chunks(Upsampler().process, x, chunk)
    assert len(new) == 3 * len(x)
    assert np.max(np.abs(new.astype(int) - rounded(old_up(x)))) <= 1


def test_pass_band_error_against_the_old_filter():
    """Telephone-band tones: the polyphase path's level is the old one's within 0.01 dB, and flat within 0.5 dB."""
    for freq in (300, 500, 1000, 2000, 3000, 3400):
        x = pcm_tone(freq, MODEL_RATE, 0.5)
        new = in_chunks(Downsampler().process, x, 2400)[200:]
        old = old_down(x)[200:]
        assert abs(rms_db(new, 20000) - rms_db(old, 20000)) < 0.01, freq
        assert abs(rms_db(new, 20000)) < 0.5, freq
        y = pcm_tone(freq, 8000, 0.5)
        up_new = in_chunks(Upsampler().process, y, 160)[600:]
        up_old = old_up(y)[600:]
        assert abs(rms_db(up_new, 20000) - rms_db(up_old, 20000)) < 0.01, freq


def test_stop_band_attenuation_against_the_old_filter():
    """24 kHz tones that would alias into the 8 kHz line: at least 60 dB down, as with the old filter."""
    for freq in (4400, 5000, 6000, 8000, 10000, 11500):
        x = pcm_tone(freq, MODEL_RATE, 0.5)
        new_db = rms_db(in_chunks(Downsampler().process, x, 2400)[200:], 20000)
        old_db = rms_db(old_down(x)[200:], 20000)
        assert new_db <= -60.0 and old_db <= -60.0, (freq, new_db, old_db)
    # Images of an 8 kHz-line tone at 24 kHz (1 kHz -> 7 and 9 kHz): at least 60 dB below the tone.
    up = Upsampler().process(pcm_tone(1000, 8000, 1.0)).astype(float)[600:]
    spectrum = np.abs(np.fft.rfft(up * np.hanning(len(up))))
    freqs = np.fft.rfftfreq(len(up), 1 / MODEL_RATE)
    peak = spectrum[np.argmin(np.abs(freqs - 1000))]
    for image in (7000, 9000):
        near = spectrum[np.abs(freqs - image) < 20].max()
        assert 20 * np.log10(near / peak) <= -60.0, image


def test_no_click_at_frame_edges():
    """A tone streamed in Twilio frames (and 100 ms model chunks) equals the same tone filtered whole: nothing
    happens at a frame boundary."""
    y = pcm_tone(1000, 8000, 1.0, 12000)
    frames = in_chunks(Upsampler().process, y, 160).astype(int)
    whole = Upsampler().process(y).astype(int)
    assert np.max(np.abs(frames - whole)) <= 1
    # The sample-to-sample step never exceeds the tone's own steepest step (a click would).
    steepest = 2 * np.pi * 1000 / MODEL_RATE * 12000
    assert np.max(np.abs(np.diff(frames[600:]))) <= steepest * 1.05 + 2
    x = pcm_tone(1000, MODEL_RATE, 1.0, 12000)
    chunks = in_chunks(Downsampler().process, x, 2400).astype(int)
    assert np.max(np.abs(chunks - Downsampler().process(x).astype(int))) <= 1
    assert np.max(np.abs(np.diff(chunks[200:]))) <= 2 * np.pi * 1000 / 8000 * 12000 * 1.05 + 2


def test_converters_match_the_resamplers():
    mulaw = mulaw_encode(noise(160 * 20, seed=9))
    inbound = MulawToPcm24k()
    pcm = b"".join(inbound.convert(mulaw[i : i + 160]) for i in range(0, len(mulaw), 160))
    expected = Upsampler().process(mulaw_decode(mulaw))
    # float32 sums in another order may round one sample the other way: one LSB at most.
    assert np.max(np.abs(np.frombuffer(pcm, dtype="<i2").astype(int) - expected)) <= 1
    outbound = Pcm24kToMulaw()
    out = b"".join(outbound.convert(pcm[i : i + 4800]) for i in range(0, len(pcm), 4800))
    whole = mulaw_encode(Downsampler().process(np.frombuffer(pcm, dtype="<i2")))
    assert len(out) == len(whole) == len(mulaw)
    assert np.max(np.abs(mulaw_decode(out).astype(int) - mulaw_decode(whole))) <= 1024  # one mu-law step at most


def test_mulaw_frames_through_the_ring_match_the_whole_signal_whatever_the_sizes():
    """The converter's fast path (frames of whole 40-sample blocks, written one after another into a ring, the
    history never copied until the ring wraps) and its general path (any size) give the samples of one pass over
    the whole signal, across wraps and size changes."""
    from gateway.audio.convert import MulawToPcm24k, _Ring, mulaw_decode, mulaw_encode

    rng = np.random.default_rng(5)
    mulaw = mulaw_encode(noise(8000 * 3, seed=5))
    whole = Upsampler().process(mulaw_decode(mulaw))
    sizes = [160] * (_Ring.SLOTS + 5) + [80, 53, 160, 1, 160, 120, 7] + list(rng.integers(1, 400, 40))
    converter, pieces, at = MulawToPcm24k(), [], 0
    while at < len(mulaw):
        size = int(sizes[len(pieces) % len(sizes)])
        pieces.append(np.frombuffer(converter.convert(mulaw[at : at + size]), dtype="<i2"))
        at += size
    streamed = np.concatenate(pieces)
    assert len(streamed) == len(whole) == 3 * len(mulaw)
    assert np.max(np.abs(streamed.astype(int) - whole.astype(int))) <= 1
