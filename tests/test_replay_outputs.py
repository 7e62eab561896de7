"""The replay outputs: the PNG timeline and the terminal summary, for a real call and for edge cases."""

from __future__ import annotations

import io
import re
import struct
import time
from dataclasses import dataclass

import numpy as np
import pytest

from gateway.audio.convert import MULAW_SILENCE, mulaw_encode
from gateway.tooling.replay import CallerTurn, load_sample, run_call
from gateway.tooling.replay.plot import envelope, write_timeline_png
from gateway.tooling.replay.report import (
    UNKNOWN_EVENT,
    WRONG_STREAM_SID,
    CallReport,
    ClearRecord,
    MarkRecord,
    PlaybackRun,
    TurnReport,
    Violation,
)
from gateway.tooling.replay.summary import format_summary, use_color

from .conftest import start_gateway
from .helpers import mulaw_tone

ANSI = re.compile(r"\x1b\[")


@dataclass
class Result:
    name: str
    passed: bool | None
    detail: str = ""


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    assert data.rstrip(b"\x00")[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


def synthetic_report() -> CallReport:
    """A call with a latency, a barge-in cut by a clear, an unanswered turn, violations and a lost mark."""
    caller = bytearray([MULAW_SILENCE]) * 8 * 9000
    heard = bytearray([MULAW_SILENCE]) * 8 * 9000
    caller[8 * 500 : 8 * 2000] = mulaw_tone(1500)
    heard[8 * 2400 : 8 * 3600] = mulaw_tone(1200)
    caller[8 * 3000 : 8 * 4000] = mulaw_tone(1000)
    caller[8 * 6000 : 8 * 7000] = mulaw_tone(1000)
    return CallReport(
        stream_sid="MZ1",
        call_sid="CAtest",
        account_sid="AC1",
        ended_by="hangup",
        duration_ms=9000.0,
        turns=[
            TurnReport(0, "hello", False, 500.0, 2000.0, response_ms=412.0),
            TurnReport(1, "interrupt", True, 3000.0, 4000.0, response_ms=None, agent_playing_at_start=True,
                       stop_ms=97.0, stopped_by="cleared", talk_over_ms=97.0),
            TurnReport(2, "silence after", False, 6000.0, 7000.0, completed=False),
        ],
        clears=[ClearRecord(3097.0, 697.0, 500.0, 3)],
        marks=[MarkRecord("g1:100:item", 2400.0, 2500.0, 2500.0, "played"), MarkRecord("g1:200:item", 2500.0)],
        violations=[Violation(2450.0, UNKNOWN_EVENT, "unknown event 'foo'"),
                    Violation(2460.0, UNKNOWN_EVENT, "unknown event 'foo'"),
                    Violation(2470.0, WRONG_STREAM_SID, "media: streamSid 'MZx'")],
        runs=[PlaybackRun(2400.0, 3097.0, "cleared", 697.0)],
        dtmf_sent=[(5000.0, "1"), (5200.0, "#")],
        underruns=1,
        underrun_ms=120.0,
        frames_sent=450,
        max_frame_lag_ms=3.2,
        agent_audio_received_ms=1200.0,
        agent_audio_played_ms=697.0,
        agent_audio_cleared_ms=503.0,
        caller_audio=bytes(caller),
        heard_audio=bytes(heard),
    )


# ---------------------------------------------------------------------- a real call: plot and summary


async def test_plot_and_summary_of_a_real_call(tmp_path):
    async with start_gateway() as gateway:
        turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300, name="hello")]
        report = await run_call(gateway.ws_url, turns, timeout_s=30, hangup_after_ms=300)
    (turn,) = report.turns
    assert turn.response_ms is not None

    path = tmp_path / "call.png"
    write_timeline_png(report, path, title="hello")
    assert png_size(path) == (1200, 500)  # 12 x 5 inches at 100 dpi

    text = format_summary(report, [Result("max_turn_latency", True, f"{turn.response_ms:.0f} ms <= 1500 ms")])
    assert "hello" in text and f"{turn.response_ms:.0f} ms" in text
    assert f"marks: {report.marks_received} sent, {report.marks_echoed} echoed" in text
    assert "violations: none" in text
    assert "PASS  max_turn_latency" in text
    assert text.splitlines()[-1].startswith("result: PASS (1 passed, 0 failed, 0 skipped)")


# ---------------------------------------------------------------------- the plot


def test_plot_of_an_empty_report(tmp_path):
    path = tmp_path / "empty.png"
    write_timeline_png(CallReport("", "", "", "gateway_closed", 0.0), path)
    assert png_size(path) == (1200, 500)


def test_plot_of_every_kind_of_mark(tmp_path):
    path = tmp_path / "synthetic.png"
    write_timeline_png(synthetic_report(), path, title="synthetic")
    assert png_size(path) == (1200, 500)


def test_plot_of_a_ten_minute_call_stays_fast(tmp_path):
    rng = np.random.default_rng(0)
    n = 8000 * 600
    audio = mulaw_encode(rng.normal(0, 2000, n).astype(np.int16))
    turns = [TurnReport(i, f"t{i}", i % 3 == 2, i * 9000.0, i * 9000.0 + 3000, response_ms=500.0,
                        stop_ms=80.0 if i % 3 == 2 else None) for i in range(66)]
    report = CallReport("MZ", "CA", "AC", "hangup", 600_000.0, turns=turns, caller_audio=audio, heard_audio=audio)
    started = time.perf_counter()
    write_timeline_png(report, tmp_path / "long.png")
    # Not a benchmark: a guard against drawing every sample (which takes tens of seconds).
    assert time.perf_counter() - started < 15
    assert png_size(tmp_path / "long.png") == (1200, 500)


def test_envelope_keeps_the_peaks_of_each_column():
    audio = bytes([MULAW_SILENCE]) * 8000 + mulaw_tone(1000, amp=16000)
    t, low, high = envelope(audio, columns=100)
    assert len(t) == len(low) == len(high) == 100
    assert t[0] < t[-1] <= 2.0
    assert np.all(np.abs(low[:45]) < 0.01) and np.all(np.abs(high[:45]) < 0.01)  # the silent first second
    assert high[60:].min() > 0.45 and low[60:].max() < -0.45  # the tone's peaks (16000 / 32768 ~ 0.49)
    assert envelope(b"")[0].size == 0
    t, low, high = envelope(mulaw_tone(1), columns=1000)  # fewer samples than columns: one per sample
    assert len(t) == 8


# ---------------------------------------------------------------------- the summary


def test_summary_shows_the_figures_and_each_expectation():
    results = [
        Result("max_turn_latency", True, "412 ms <= 1500 ms"),
        Result("no_violations", False, "3 violations"),
        Result("agent_says", None, "no transcript from this backend"),
    ]
    text = format_summary(synthetic_report(), results, color=False)
    lines = text.splitlines()
    assert lines[0].startswith("call CAtest") and "9.0 s, ended by hangup" in lines[0]
    hello = next(line for line in lines if line.strip().startswith("hello"))
    assert "412 ms" in hello and hello.rstrip().endswith("0 ms")
    interrupt = next(line for line in lines if line.strip().startswith("interrupt"))
    assert "no answer" in interrupt and "97 ms (cleared)" in interrupt
    assert any(line.strip().startswith("silence after (cut)") for line in lines)
    assert "marks: 2 sent, 1 echoed, 1 never echoed" in text
    assert "violations: 3 (unknown_event 2, wrong_stream_sid 1)" in text
    assert "underruns: 1 (120 ms of holes)" in text
    assert "agent audio heard: 0.7 s (1.2 s received, 0.5 s cleared)" in text
    assert "dtmf sent: 1#" in text
    assert "PASS  max_turn_latency  412 ms <= 1500 ms" in text
    assert "FAIL  no_violations     3 violations" in text
    assert "SKIP  agent_says" in text
    assert lines[-1] == "result: FAIL (1 passed, 1 failed, 1 skipped)"
    assert not ANSI.search(text)


def test_summary_colors_only_on_a_terminal(monkeypatch):
    report = synthetic_report()
    results = [Result("x", True)]
    assert ANSI.search(format_summary(report, results, color=True))
    # Under pytest stdout is captured, not a terminal: no colors by default.
    assert not ANSI.search(format_summary(report, results))

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_color(Tty()) and not use_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(Tty())


def test_summary_without_turns_or_expectations():
    text = format_summary(CallReport("", "", "", "timeout", 0.0), color=False)
    assert "no caller turns" in text
    assert text.splitlines()[-1] == "result: no expectations checked"


@pytest.mark.parametrize("passed,verdict", [(True, "PASS"), (None, "PASS")])
def test_summary_verdict_ignores_skipped(passed, verdict):
    text = format_summary(synthetic_report(), [Result("a", True), Result("b", passed)], color=False)
    assert text.splitlines()[-1].startswith(f"result: {verdict}")
