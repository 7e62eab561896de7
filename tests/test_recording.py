"""RECORD_CALLS_DIR: a live call's Twilio frames, both ways, with their times, as JSON Lines."""

import json

from gateway.recording import MAX_BYTES_BEFORE_START, CallRecorder
from gateway.replay import CallerTurn, load_sample, run_call

from .conftest import start_gateway


async def test_a_live_call_is_recorded_both_ways(tmp_path):
    async with start_gateway(record_calls_dir=str(tmp_path)) as gateway:
        turns = [CallerTurn(load_sample("caller_question"), after_silence_ms=200)]
        report = await run_call(gateway.ws_url, turns, timeout_s=30, hangup_after_ms=300)
    (path,) = tmp_path.glob("*.jsonl")
    assert path.name == f"{report.call_sid}.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    header, frames = lines[0], lines[1:]
    assert header["type"] == "header" and header["version"] == 1
    assert header["call_sid"] == report.call_sid and header["stream_sid"] == report.stream_sid
    events_in = [json.loads(f["text"])["event"] for f in frames if f["dir"] == "in"]
    events_out = [json.loads(f["text"])["event"] for f in frames if f["dir"] == "out"]
    assert events_in[:2] == ["connected", "start"] and events_in[-1] == "stop"
    assert events_in.count("media") == report.frames_sent
    assert events_out.count("mark") == report.marks_received and "media" in events_out
    times = [f["t_ms"] for f in frames]
    assert times == sorted(times)
    # Media frames were recorded about 20 ms apart: the recording keeps the call's timing.
    media_times = [f["t_ms"] for f in frames if f["dir"] == "in" and '"media"' in f["text"]]
    gaps = sorted(b - a for a, b in zip(media_times, media_times[1:]))
    assert 15 <= gaps[len(gaps) // 2] <= 25


def test_frames_before_start_are_bounded_and_nothing_is_written_without_a_call(tmp_path):
    recorder = CallRecorder(tmp_path, 0.0)
    for i in range(MAX_BYTES_BEFORE_START // 10):
        recorder.record("in", "garbage", float(i))
    recorder.close()
    assert list(tmp_path.iterdir()) == []
    recorder = CallRecorder(tmp_path / "calls", 0.0)
    recorder.record("in", '{"event":"connected"}', 1.0)
    recorder.call_started("CA../../etc", "MZ1")
    recorder.record("in", '{"event":"stop"}', 2.0)
    recorder.close()
    recorder.record("in", "after close", 3.0)
    (path,) = (tmp_path / "calls").iterdir()
    assert path.name == "CA______etc.jsonl"
    assert len(path.read_text().splitlines()) == 3
