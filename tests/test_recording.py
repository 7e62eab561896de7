"""RECORD_CALLS_DIR: a live call's Twilio frames, both ways, with their times, as JSON Lines."""

import json
import logging
import os
import stat
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from gateway.recordings import frames as recording_module
from gateway.recordings.frames import MAX_BYTES_BEFORE_START, CallRecorder
from gateway.tooling.replay import CallerTurn, load_sample, run_call
from gateway.tooling.replay.recording import load_recording

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


# --- Files: private, never reused, bounded --------------------------------------------------------------

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
CONNECTED = '{"event":"connected","protocol":"Call","version":"1.0.0"}'


def _start(call_sid: str = "CA1", stream_sid: str = "MZ1") -> str:
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": stream_sid,
                       "start": {"callSid": call_sid, "streamSid": stream_sid, "accountSid": "AC1",
                                 "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})


def _media(n: int, stream_sid: str = "MZ1") -> str:
    return json.dumps({"event": "media", "sequenceNumber": str(n + 2), "streamSid": stream_sid,
                       "media": {"track": "inbound", "chunk": str(n + 1), "timestamp": str(20 * n),
                                 "payload": "/" * 216}})


def _record_call(directory: Path, call_sid: str = "CA1", frames: int = 5, max_bytes: int | None = None) -> CallRecorder:
    recorder = CallRecorder(directory, 0.0) if max_bytes is None else CallRecorder(directory, 0.0, max_bytes)
    recorder.record("in", CONNECTED, 1.0)
    recorder.record("in", _start(call_sid), 2.0)
    recorder.call_started(call_sid, "MZ1")
    for n in range(frames):
        recorder.record("in", _media(n), 3.0 + 20 * n)
        recorder.record("out", '{"event":"mark","streamSid":"MZ1","mark":{"name":"m"}}', 4.0 + 20 * n)
    recorder.close()
    return recorder


@posix_only
def test_recordings_are_private(tmp_path):
    directory = tmp_path / "calls"
    recorder = _record_call(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert recorder.path is not None and stat.S_IMODE(recorder.path.stat().st_mode) == 0o600
    assert load_recording(recorder.path).call_sid == "CA1"


@posix_only
def test_an_existing_file_or_symlink_is_never_opened(tmp_path):
    (tmp_path / "CA1.jsonl").write_text("not yours\n")
    os.chmod(tmp_path / "CA1.jsonl", 0o644)
    victim = tmp_path / "elsewhere.txt"
    victim.write_text("precious\n")
    (tmp_path / "CA1-2.jsonl").symlink_to(victim)
    (tmp_path / "CA1-3.jsonl").symlink_to(tmp_path / "dangling")
    recorder = _record_call(tmp_path)
    assert recorder.path == tmp_path / "CA1-4.jsonl"
    assert (tmp_path / "CA1.jsonl").read_text() == "not yours\n"
    assert stat.S_IMODE((tmp_path / "CA1.jsonl").stat().st_mode) == 0o644
    assert victim.read_text() == "precious\n" and not (tmp_path / "dangling").exists()
    assert load_recording(recorder.path).call_sid == "CA1"
    assert _record_call(tmp_path).path == tmp_path / "CA1-5.jsonl"  # the same CallSid again: a new file


def test_when_every_name_is_taken_nothing_is_written_and_one_error_is_logged(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(recording_module, "MAX_NAME_ATTEMPTS", 3)
    for name in ("CA1.jsonl", "CA1-2.jsonl", "CA1-3.jsonl"):
        (tmp_path / name).write_text(name)
    with caplog.at_level(logging.ERROR, logger="gateway.recordings.frames"):
        recorder = _record_call(tmp_path)
    assert recorder.path is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CA1-2.jsonl", "CA1-3.jsonl", "CA1.jsonl"]
    assert all((tmp_path / name).read_text() == name for name in ("CA1.jsonl", "CA1-2.jsonl", "CA1-3.jsonl"))
    assert len([r for r in caplog.records if r.name == "gateway.recordings.frames"]) == 1


def test_a_peer_call_sid_cannot_forge_a_log_line(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level(logging.ERROR, logger="gateway.recordings.frames"):
        _record_call(blocker / "calls", call_sid="CA1\n2025-01-01 ERROR forged\x1b[2J")
    (record,) = [r for r in caplog.records if r.name == "gateway.recordings.frames"]
    message = record.getMessage()
    assert "\n" not in message and "\x1b" not in message and "forged" in message


def test_the_size_cap_stops_growth_and_the_recording_still_loads(tmp_path, caplog):
    max_bytes = 16 * 1024
    with caplog.at_level(logging.WARNING, logger="gateway.recordings.frames"):
        recorder = _record_call(tmp_path, frames=500, max_bytes=max_bytes)
    assert recorder.truncated and recorder.path is not None
    size = recorder.path.stat().st_size
    frame_size = len(json.dumps({"t_ms": 10000.0, "dir": "in", "text": _media(499)})) + 1
    assert max_bytes - 2 * frame_size - 200 <= size <= max_bytes
    lines = [json.loads(line) for line in recorder.path.read_text().splitlines()]
    assert lines[-1]["type"] == "truncated" and lines[-1]["reason"] == "size cap"
    assert lines[-1]["max_bytes"] == max_bytes and lines[-1]["t_ms"] >= lines[-2]["t_ms"]
    assert [line.get("type") for line in lines].count("truncated") == 1
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    loaded = load_recording(recorder.path)
    assert loaded.truncated and loaded.call_sid == "CA1"
    assert [f.event for f in loaded.frames[:2]] == ["connected", "start"] and loaded.frames[-1].event == "media"
    assert len(loaded.frames) + loaded.out_frames == len(lines) - 2
    # Recording more after the cap changes nothing.
    recorder.record("in", _media(600), 99_999.0)
    assert recorder.path.stat().st_size == size
    # Under the cap, no truncated line and the default cap is generous.
    assert not load_recording(_record_call(tmp_path / "small").path).truncated
    assert CallRecorder(tmp_path, 0.0).max_bytes == 64 * 1024 * 1024


@hypothesis_settings(max_examples=25, deadline=None)
@given(st.integers(min_value=4096, max_value=40_000), st.lists(st.integers(0, 3000), min_size=1, max_size=60))
def test_no_recording_ever_passes_its_cap(max_bytes, sizes):
    with tempfile.TemporaryDirectory() as directory:
        recorder = CallRecorder(directory, 0.0, max_bytes)
        recorder.record("in", _start(), 1.0)
        recorder.call_started("CA1", "MZ1")
        for n, size in enumerate(sizes):
            recorder.record("in" if n % 2 else "out", "x" * size, 2.0 + n)
        recorder.close()
        assert recorder.path is not None
        assert recorder.path.stat().st_size <= max_bytes
        loaded = load_recording(recorder.path)
        assert loaded.truncated == recorder.truncated
