"""Call recordings as audio (issue 9 part 6): the call as a stereo WAV, caller left and agent right as the caller
heard it; consent per call (RECORD_AUDIO, POST /calls' "record"); named in the record; served by
GET /calls/{sid}/recording with the API's scoping."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import httpx
import numpy as np
import pytest

from gateway.audio.convert import mulaw_decode, mulaw_encode
from gateway.config import ConfigError, Settings
from gateway.recordings.frames import CallRecorder
from gateway.recordings.wav import call_tracks, call_wav_bytes, recording_file, write_call_wav
from gateway.tooling.replay import CallerTurn, load_sample, run_call
from gateway.store.retention import RECORDING_FILE
from gateway.audio.wavio import read_wav

from .conftest import start_gateway
from .helpers import calls_over, mulaw_tone
from .test_outbound_e2e import outbound_gateway, place_and_answer

SPB = 8  # mu-law samples per ms
OPERATOR = "operator-key-aaaaaaaaaaaaaaaaaaaa"
OTHER = "other-key-bbbbbbbbbbbbbbbbbbbbbbbb"


def _frame(event: str, **fields: object) -> str:
    return json.dumps({"event": event, "streamSid": "MZ1", **fields})


def _media(audio: bytes, timestamp: int | None = None) -> str:
    media: dict[str, object] = {"payload": base64.b64encode(audio).decode()}
    if timestamp is not None:
        media.update(track="inbound", chunk="1", timestamp=str(timestamp))
    return _frame("media", media=media)


def _recording(directory: Path, frames: list[tuple[float, str, str]], start_ms: float = 5.0) -> Path:
    """A frame recording written by the gateway's own recorder: Twilio's start at ``start_ms``, then ``frames``
    (t_ms since the start, "in"/"out", text)."""
    recorder = CallRecorder(directory, 0.0)
    recorder.record("in", '{"event":"connected","protocol":"Call","version":"1.0.0"}', 1.0)
    recorder.record("in", _frame("start", start={"callSid": "CA1", "streamSid": "MZ1"}), start_ms)
    recorder.call_started("CA1", "MZ1")
    for t_ms, direction, text in frames:
        recorder.record(direction, text, start_ms + t_ms)
    recorder.close()
    assert recorder.path is not None
    return recorder.path


def loud_ms(track: bytes) -> np.ndarray:
    """One flag per ms: audio louder than a whisper."""
    samples = mulaw_decode(track[: len(track) // SPB * SPB]).astype(np.float64).reshape(-1, SPB)
    return np.sqrt(np.mean(samples**2, axis=1)) > 300


def test_agent_audio_plays_from_when_it_was_sent_and_a_clear_cuts_it(tmp_path):
    caller = [(20.0 * (n + 1), "in", _media(mulaw_tone(20), timestamp=20 * n)) for n in range(30)]  # 600 ms of caller
    agent = [
        (100.0, "out", _media(mulaw_tone(500))),  # 500 ms sent at 100 ms...
        (110.0, "out", _media(mulaw_tone(500))),  # ...and 500 more queued behind it: plays 600..1100
        (120.0, "out", _frame("mark", mark={"name": "m1"})),
        (800.0, "out", _frame("clear")),  # the caller barged in: heard 100..800 only
        (1500.0, "out", _media(mulaw_tone(200))),  # the next answer: 1500..1700
        (1800.0, "in", _frame("stop", stop={})),
    ]
    path = _recording(tmp_path, sorted(caller + agent))
    left, right = call_tracks(path)
    assert len(left) == len(right) == 1800 * SPB
    heard = loud_ms(right)
    assert not heard[:100].any() and heard[101:799].all() and not heard[801:1499].any()
    assert heard[1501:1699].all() and not heard[1701:].any()
    said = loud_ms(left)
    assert said[:599].all() and not said[601:].any()
    assert left[:600 * SPB] == mulaw_tone(20) * 30  # the caller's own bytes, at their own timestamps

    samples, rate = read_wav(call_wav_bytes(path))
    assert rate == 8000 and samples.dtype == np.int16 and samples.shape == (1800 * SPB, 2)
    assert np.array_equal(samples[:, 0], mulaw_decode(left)) and np.array_equal(samples[:, 1], mulaw_decode(right))


def test_a_lost_caller_frame_is_silence_and_bad_frames_are_skipped(tmp_path):
    frames = [(20.0, "in", _media(mulaw_tone(20), timestamp=0)), (60.0, "in", _media(mulaw_tone(20), timestamp=40)),
              (61.0, "in", "not json"), (62.0, "in", _frame("media", media={"payload": "%%%", "timestamp": "60"})),
              (63.0, "in", _media(mulaw_tone(20), timestamp=10**9)),  # far beyond the call: not placed
              (64.0, "out", _media(b"")), (80.0, "in", _frame("stop", stop={}))]
    left, right = call_tracks(_recording(tmp_path, frames))
    said = loud_ms(left)
    assert len(left) == 80 * SPB and said[:19].all() and not said[21:39].any() and said[41:59].all()
    assert not loud_ms(right).any()


def test_the_wav_is_private_and_never_written_over_a_file(tmp_path):
    path = _recording(tmp_path, [(20.0, "in", _media(mulaw_tone(20), timestamp=0))])
    written = write_call_wav(path)
    assert written == tmp_path / "CA1.wav" and stat.S_IMODE(written.stat().st_mode) == 0o600
    assert read_wav(written)[0].shape == (20 * SPB, 2)
    written.write_bytes(b"someone else's")
    assert write_call_wav(path) is None and written.read_bytes() == b"someone else's"


def test_record_audio_needs_a_directory():
    with pytest.raises(ConfigError, match="RECORD_AUDIO needs RECORD_CALLS_DIR"):
        Settings.from_env({"RECORD_AUDIO": "true"})
    settings = Settings.from_env({"RECORD_AUDIO": "true", "RECORD_CALLS_DIR": "/tmp/calls"})
    assert settings.record_audio and not Settings.from_env({}).record_audio


def test_a_recording_is_served_only_from_its_directory_and_never_through_a_link(tmp_path):
    (tmp_path / "CA1.wav").write_bytes(b"RIFF")
    (tmp_path / "CA2.wav").symlink_to(tmp_path / "CA1.wav")
    assert recording_file(str(tmp_path), "CA1.wav") == tmp_path / "CA1.wav"
    for name in ("CA2.wav", "../CA1.wav", "CA1.jsonl", "", None, "missing.wav"):
        assert recording_file(str(tmp_path), name) is None
    assert recording_file("", "CA1.wav") is None


def near(flags: np.ndarray, ms: int = 30) -> np.ndarray:
    """Each ms within ``ms`` of a flagged one."""
    return np.convolve(flags.astype(np.int32), np.ones(2 * ms + 1, np.int32), mode="same") > 0


async def test_a_recorded_call_is_a_stereo_wav_of_what_each_side_heard_and_is_served_as_scoped(tmp_path):
    async with start_gateway(record_calls_dir=str(tmp_path), record_audio=True, api_keys=(OTHER,),
                             operator_api_keys=(OPERATOR,)) as gateway:
        turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300),
                 CallerTurn(load_sample("caller_question"), after_silence_ms=1500)]
        report = await run_call(gateway.ws_url, turns, timeout_s=40, hangup_after_ms=500)
        await calls_over(gateway)
        record = await gateway.state.store.get_call(report.call_sid)
        assert record.recording == f"{report.call_sid}.wav"
        assert RECORDING_FILE.fullmatch(record.recording)  # retention prunes it with its record
        async with httpx.AsyncClient(base_url=gateway.http_url) as client:
            served = await client.get(f"/calls/{report.call_sid}/recording",
                                      headers={"authorization": f"Bearer {OPERATOR}"})
            hidden = await client.get(f"/calls/{report.call_sid}/recording",
                                      headers={"authorization": f"Bearer {OTHER}"})
            anonymous = await client.get(f"/calls/{report.call_sid}/recording")
            summary = (await client.get(f"/calls/{report.call_sid}",
                                        headers={"authorization": f"Bearer {OPERATOR}"})).json()
    assert summary["recording"] is True
    assert served.status_code == 200 and served.headers["content-type"] == "audio/wav"
    assert served.content == (tmp_path / record.recording).read_bytes()
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "call_not_found"  # an inbound call
    assert anonymous.status_code == 401
    samples, rate = read_wav(served.content)
    assert rate == 8000 and samples.shape[1] == 2
    # Left: the caller's audio exactly as the phone sent it, on the stream's time axis.
    caller = mulaw_decode(report.caller_audio)
    assert np.array_equal(samples[: len(caller), 0], caller)
    # Right: the agent as the phone heard it. The gateway's clock and the phone's differ by the socket's latency (a
    # few ms): every millisecond heard on one side is heard within 30 ms on the other.
    n = min(len(report.heard_audio), len(samples)) // SPB * SPB
    ours, phones = loud_ms(mulaw_encode(samples[:n, 1])), loud_ms(report.heard_audio[:n])
    assert phones.sum() > 1000 and abs(int(ours.sum()) - int(phones.sum())) < 0.05 * phones.sum()
    assert np.mean(near(phones)[ours]) > 0.99 and np.mean(near(ours)[phones]) > 0.99


async def test_without_consent_there_is_no_wav(tmp_path):
    async with start_gateway(record_calls_dir=str(tmp_path)) as gateway:
        report = await run_call(gateway.ws_url, [CallerTurn(load_sample("caller_hello"), after_silence_ms=300)],
                                timeout_s=30, hangup_after_ms=300)
        await calls_over(gateway)
        record = await gateway.state.store.get_call(report.call_sid)
    assert record.recording is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{report.call_sid}.jsonl"]  # the frames, as configured


HELLO_SCRIPT = """
[[replies]]
say = "Hello, this is Acme."
"""


@pytest.mark.parametrize("record_audio, requested, recorded", [(False, True, True), (True, False, False)])
async def test_the_requests_record_flag_overrides_record_audio(tmp_path, record_audio, requested, recorded):
    calls = tmp_path / "calls"
    async with outbound_gateway(HELLO_SCRIPT, tmp_path, record_calls_dir=str(calls),
                                record_audio=record_audio) as (gateway, fake):
        turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300)]
        call_sid, _ = await place_and_answer(gateway, fake, turns, hangup_after_ms=500, record=requested)
        await calls_over(gateway)
        record = await gateway.state.store.get_call(call_sid)
    assert record.record_audio is requested
    if recorded:
        assert record.recording == f"{call_sid}.wav"
        assert sorted(p.name for p in calls.iterdir()) == [f"{call_sid}.jsonl", f"{call_sid}.wav"]
    else:  # the callee's "no": none of the call's audio is kept, not even the frames
        assert record.recording is None and list(calls.iterdir()) == []


async def test_record_true_needs_a_recordings_directory(tmp_path):
    async with outbound_gateway(HELLO_SCRIPT, tmp_path) as (gateway, fake):
        async with httpx.AsyncClient(base_url=gateway.http_url) as client:
            response = await client.post("/calls", json={"to": "+14155550123", "record": True},
                                         headers={"authorization": "Bearer e2e-key-cccccccccccccccccccccccc"})
            wrong_type = await client.post("/calls", json={"to": "+14155550123", "record": "yes"},
                                           headers={"authorization": "Bearer e2e-key-cccccccccccccccccccccccc"})
    assert response.status_code == 422 and response.json()["error"]["field"] == "record"
    assert "RECORD_CALLS_DIR" in response.json()["error"]["message"]
    assert wrong_type.status_code == 422 and wrong_type.json()["error"]["field"] == "record"
    assert not fake.calls  # nothing was dialled
