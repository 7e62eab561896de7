"""Recordings under hostile input and a full disk (issue 17): a total quota for RECORD_CALLS_DIR (new recordings
not started once it is full, the call goes on, counted and logged once; a recording reaching it is cut short; the
WAV skipped), only parsed frames recorded (what the gateway accepted, never junk whole), and caller numbers masked
in frame recordings unless LOG_FULL_NUMBERS. End to end against a real gateway, plus the recorder on its own.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from gateway.observe import metrics
from gateway.recordings.frames import CallRecorder, RecordingsQuota
from gateway.recordings.wav import write_call_wav
from gateway.tooling.replay import CallerTurn, load_sample, run_call
from gateway.tooling.replay.recording import load_recording
from gateway.tooling.replay.scenario import load_scenario, run_scenario
from gateway.twilio import media as tw

from .conftest import start_gateway
from .test_bad_input import media_frame, settle, twilio_call

CALLER = "+14155550123"


def over_quota(what: str) -> float:
    return metrics.RECORDINGS_OVER_QUOTA.labels(what)._value.get()


def frames_in(path: Path) -> list[str]:
    return [entry["text"] for entry in map(json.loads, path.read_text().splitlines())
            if entry.get("dir") == "in"]


async def short_call(gateway, **kwargs):
    turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=200)]
    return await run_call(gateway.ws_url, turns, timeout_s=30, hangup_after_ms=300, **kwargs)


async def test_a_full_recordings_directory_starts_no_recording_and_the_call_goes_on(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="gateway.recordings.frames")
    (tmp_path / "old.jsonl").write_bytes(b"x" * 8192)  # the directory already holds its quota
    before = over_quota("not_started")
    async with start_gateway(record_calls_dir=str(tmp_path), record_total_max_bytes=8192) as gateway:
        reports = [await short_call(gateway) for _ in range(2)]
    for report in reports:
        assert report.runs and report.violations == []  # the agent answered: the call went on
        assert report.ended_by == "hangup"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["old.jsonl"]
    assert over_quota("not_started") - before == 2
    lines = [record.getMessage() for record in caplog.records if "RECORD_TOTAL_MAX_BYTES" in record.getMessage()]
    assert len(lines) == 1  # logged once, then counted


def test_a_recording_reaching_the_quota_is_cut_short_and_still_loads(tmp_path):
    quota = RecordingsQuota(tmp_path, 6000)
    recorder = CallRecorder(tmp_path, 0.0, quota=quota)
    recorder.record_event(tw.Start("MZ1", "CA1", "", "audio/x-mulaw", 8000, {}), 1.0)
    recorder.call_started("CA1", "MZ1")
    for n in range(200):
        recorder.record_event(tw.Media("MZ1", 20 * n, b"\xff" * 160), 2.0 + 20 * n)
    recorder.close()
    assert recorder.truncated and recorder.path is not None
    assert recorder.path.stat().st_size <= 6000  # the truncated line's room was counted when the file began
    last = json.loads(recorder.path.read_text().splitlines()[-1])
    assert last["type"] == "truncated" and last["reason"] == "total quota" and last["max_bytes"] == 6000
    assert load_recording(recorder.path).truncated
    # No room left for its WAV: skipped and counted, never written past the quota.
    before = over_quota("wav_skipped")
    assert write_call_wav(recorder.path, quota) is None
    assert not recorder.path.with_suffix(".wav").exists() and over_quota("wav_skipped") == before + 1
    # The next calls: no file at all (not a header and a truncated line each), and the directory stays within it.
    before = over_quota("not_started")
    for n in range(2, 5):
        later = CallRecorder(tmp_path, 0.0, quota=quota)
        later.record_event(tw.Start(f"MZ{n}", f"CA{n}", "", "audio/x-mulaw", 8000, {}), 1.0)
        later.call_started(f"CA{n}", f"MZ{n}")
        later.record_event(tw.Media(f"MZ{n}", 0, b"\xff" * 160), 2.0)
        later.close()
        assert later.path is None and later.over_quota
    assert [path.name for path in tmp_path.iterdir()] == [recorder.path.name]
    assert over_quota("not_started") - before == 3
    assert sum(path.stat().st_size for path in tmp_path.iterdir()) <= 6000


async def test_only_parsed_frames_are_recorded_never_junk_whole(tmp_path):
    junk = "J" * 20_000
    async with start_gateway(record_calls_dir=str(tmp_path)) as gateway:
        async with twilio_call(gateway) as (client, session):
            await client.send("not json at all " + junk)
            await client.send({"event": "made_up", "streamSid": client.stream_sid, "junk": junk})
            await client.send({"event": "media", "streamSid": client.stream_sid, "media": {"payload": "%%%"}})
            frame = media_frame(client.stream_sid, client.timestamp_ms, junk_field=junk)  # parses: junk ignored
            client.timestamp_ms += 20
            await client.send({**frame, "extra": junk})
            await settle(client, session)
            await client.send({"event": "stop", "streamSid": client.stream_sid})
    (path,) = tmp_path.glob("*.jsonl")
    texts = frames_in(path)
    assert all(junk[:100] not in text for text in texts)
    assert [json.loads(text)["event"] for text in texts][:2] == ["connected", "start"]
    for text in texts:  # every recorded frame is one the gateway parsed
        tw.parse_twilio_message(text)
    assert path.stat().st_size < 10_000
    assert load_recording(path).call_sid == client.call_sid


@pytest.mark.parametrize("full", [False, True])
async def test_caller_numbers_in_frame_recordings_are_masked_unless_log_full_numbers(tmp_path, full):
    async with start_gateway(record_calls_dir=str(tmp_path), log_full_numbers=full) as gateway:
        await short_call(gateway, custom_parameters={"From": CALLER, "note": f"call back on {CALLER}"})
    (path,) = tmp_path.glob("*.jsonl")
    text = path.read_text()
    start = next(json.loads(t) for t in frames_in(path) if json.loads(t)["event"] == "start")
    parameters = start["start"]["customParameters"]
    if full:
        assert parameters == {"From": CALLER, "note": f"call back on {CALLER}"}
    else:
        assert CALLER not in text
        assert parameters == {"From": "+1415*****23", "note": "call back on +1415*****23"}
        # What was recorded as accepted still replays against a gateway, as a recorded call does.
        scenario = tmp_path / "replay.toml"
        scenario.write_text(f"recording = '{path.name}'\n[call]\ntimeout_s = 30\n")
        async with start_gateway() as gateway:
            report = await run_scenario(load_scenario(scenario), gateway.ws_url, fresh_sids=True)
        assert report.frames_sent > 0 and report.runs and report.violations == []


def test_the_total_quota_setting():
    from gateway.config import ConfigError, Settings

    assert Settings.from_env({}).record_total_max_bytes == 10 * 1024 ** 3
    assert Settings.from_env({"RECORD_TOTAL_MAX_BYTES": "1048576"}).record_total_max_bytes == 1 << 20
    for bad in ("0", "lots", "-1"):
        with pytest.raises(ConfigError, match="RECORD_TOTAL_MAX_BYTES"):
            Settings.from_env({"RECORD_TOTAL_MAX_BYTES": bad})
