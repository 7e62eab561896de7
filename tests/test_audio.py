"""The streaming resamplers: chunk-exact, low delay, no bursts, no aliasing (issue 2, item 5)."""

import numpy as np
import pytest

from gateway.audio.convert import (
    FILTER_DELAY_MS,
    Downsampler,
    MulawToPcm24k,
    Pcm24kToMulaw,
    PassThrough,
    Upsampler,
    converters_for,
    mulaw_decode,
    mulaw_encode,
)

from .helpers import pcm_tone


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 4000).astype(np.int16)


def _random_chunks(x: np.ndarray, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    chunks, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 1200))
        chunks.append(x[i : i + n])
        i += n
    return chunks


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_downsampler_output_is_identical_whatever_the_chunk_sizes(seed):
    x = _noise(24000 * 2, seed)
    whole = Downsampler().process(x)
    streaming = Downsampler()
    pieces = np.concatenate([streaming.process(c) for c in _random_chunks(x, seed)])
    assert len(pieces) == len(whole) == len(x) // 3
    assert np.max(np.abs(pieces.astype(int) - whole.astype(int))) <= 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_upsampler_output_is_identical_whatever_the_chunk_sizes(seed):
    x = _noise(8000 * 2, seed)
    whole = Upsampler().process(x)
    streaming = Upsampler()
    pieces = np.concatenate([streaming.process(c) for c in _random_chunks(x, seed)])
    assert len(pieces) == len(whole) == len(x) * 3
    assert np.max(np.abs(pieces.astype(int) - whole.astype(int))) <= 1


def _delay_samples(inp: np.ndarray, out: np.ndarray) -> int:
    corr = np.correlate(out.astype(float), inp.astype(float), "full")
    return int(np.argmax(corr)) - (len(inp) - 1)


def test_delay_is_at_most_3_ms_and_every_chunk_gives_its_output_at_once():
    assert FILTER_DELAY_MS <= 3.0
    # A click through the 24k -> 8k path: its peak comes out within 3 ms.
    impulse = np.zeros(2400, dtype=np.int16)
    impulse[1200] = 30000
    down = Downsampler().process(impulse)
    assert abs(int(np.argmax(np.abs(down))) - 400) * 1000 / 8000 <= 3.0
    # Band-limited noise through 8k -> 24k: cross-correlation lag within 3 ms.
    x = Downsampler().process(_noise(24000))
    up = Upsampler().process(x)
    reference = np.repeat(x, 3)
    assert abs(_delay_samples(reference, up)) * 1000 / 24000 <= 3.0
    # No bursts: 20 ms in gives exactly 20 ms out, from the very first frame, both ways.
    down_stream, up_stream = Downsampler(), Upsampler()
    for frame in np.split(_noise(480 * 50), 50):
        assert len(down_stream.process(frame)) == 160
    for frame in np.split(_noise(160 * 50), 50):
        assert len(up_stream.process(frame)) == 480


def _level_db(signal: np.ndarray, reference_amplitude: float) -> float:
    rms = np.sqrt(np.mean(signal.astype(float) ** 2))
    return 20 * np.log10(max(rms, 1e-9) / (reference_amplitude / np.sqrt(2)))


def test_6khz_tone_is_at_least_60_db_down_after_24k_to_8k():
    # Measure in float, before rounding, so the result is not just "below 1 LSB".
    from gateway.audio.convert import lowpass_taps

    tone = pcm_tone(6000, 24000, 1.0)
    filtered = np.convolve(tone.astype(float), lowpass_taps())[::3][200:-200]
    assert _level_db(filtered, 20000) <= -60.0
    # The streaming object agrees: at most rounding noise comes out.
    out = Downsampler().process(tone)[200:]
    assert _level_db(out, 20000) <= -60.0


def test_speech_band_passes_both_ways():
    tone = pcm_tone(1000, 24000, 0.5)
    out = Downsampler().process(tone)[100:]
    assert abs(_level_db(out, 20000)) < 0.5
    back = Upsampler().process(out)[300:]
    assert abs(_level_db(back, 20000)) < 0.5


def test_mulaw_codec_round_trip_and_silence():
    assert np.all(mulaw_decode(b"\xff" * 10) == 0)
    x = _noise(1000)
    error = np.abs(mulaw_decode(mulaw_encode(x)).astype(int) - x.astype(int))
    assert np.all(error <= np.maximum(np.abs(x.astype(int)) // 16, 8))


def test_converters_by_format():
    inbound, outbound = converters_for("pcm16")
    assert isinstance(inbound, MulawToPcm24k) and isinstance(outbound, Pcm24kToMulaw)
    assert len(inbound.convert(b"\xff" * 160)) == 960
    assert len(outbound.convert(b"\x00" * 960)) == 160
    # An odd trailing byte is carried to the next chunk, not lost.
    assert len(outbound.convert(b"\x00" * 961)) + len(outbound.convert(b"\x00" * 959)) == 320
    inbound, outbound = converters_for("pcmu")
    assert isinstance(inbound, PassThrough) and inbound.convert(b"abc") == b"abc"
    with pytest.raises(ValueError):
        converters_for("opus")
