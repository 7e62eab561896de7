"""The replay phone: its Twilio protocol logic driven with explicit times, WAV I/O, the bundled samples,
and one call over a real socket against a trivial gateway on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import struct

import numpy as np
import pytest

from gateway.audio.convert import MULAW_SILENCE, mulaw_decode, mulaw_encode
from gateway.tooling.replay.phone import FRAME_BYTES, CallerTurn, Phone, run_call
from gateway.tooling.replay.report import (
    BAD_FIELD,
    BEFORE_START,
    BINARY_FRAME,
    EXTRA_FIELD,
    INVALID_BASE64,
    INVALID_JSON,
    MISSING_FIELD,
    UNKNOWN_EVENT,
    WRONG_STREAM_SID,
)
from gateway.audio.wavio import (
    WAVE_FORMAT_MULAW,
    WavError,
    load_sample,
    mulaw_wav_bytes,
    parse_wav,
    read_wav,
    sample_names,
    to_mulaw_8k,
    wav_bytes,
    write_wav,
)

from .helpers import mulaw_tone


def silence(ms: float) -> bytes:
    return bytes([MULAW_SILENCE]) * int(ms * 8)


def media(phone: Phone, audio: bytes) -> str:
    return json.dumps(
        {"event": "media", "streamSid": phone.stream_sid, "media": {"payload": base64.b64encode(audio).decode()}}
    )


def mark(phone: Phone, name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": phone.stream_sid, "mark": {"name": name}})


def clear(phone: Phone) -> str:
    return json.dumps({"event": "clear", "streamSid": phone.stream_sid})


def events(messages: list[dict], kind: str) -> list[dict]:
    return [m for m in messages if m["event"] == kind]


def opened(turns: list[CallerTurn] | None = None, **kwargs) -> Phone:
    phone = Phone(turns or [], **kwargs)
    phone.open(0.0)
    return phone


def run_script(phone: Phone, script: dict[float, list[str]], until_ms: float) -> list[dict]:
    """Drive the phone as the socket loop would: tick at every wake-up, gateway messages at given times."""
    sent: list[dict] = []
    pending = sorted(script.items())
    now = 0.0
    while now < until_ms and not phone.done:
        now = min(phone.next_wakeup_ms(), pending[0][0] if pending else until_ms, until_ms)
        while pending and pending[0][0] <= now:
            for message in pending.pop(0)[1]:
                sent += phone.receive(message, now)
        sent += phone.tick(now)
    return sent


# ---------------------------------------------------------------------- what the phone sends


def test_connected_and_start_are_twilios() -> None:
    phone = Phone([], custom_parameters={"caller": "+15550001111"})
    connected, start = phone.open(0.0)
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert start["event"] == "start" and start["sequenceNumber"] == "1"
    assert start["streamSid"] == start["start"]["streamSid"] == phone.stream_sid
    assert re.fullmatch(r"MZ[0-9a-f]{32}", phone.stream_sid)
    assert re.fullmatch(r"CA[0-9a-f]{32}", start["start"]["callSid"])
    assert re.fullmatch(r"AC[0-9a-f]{32}", start["start"]["accountSid"])
    assert start["start"]["tracks"] == ["inbound"]
    assert start["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    assert start["start"]["customParameters"] == {"caller": "+15550001111"}


def test_media_frames_on_an_absolute_schedule_with_string_fields() -> None:
    phone = opened()
    assert phone.next_wakeup_ms() == 20
    assert phone.tick(19.9) == []
    (first,) = phone.tick(20.0)
    assert first["event"] == "media" and first["streamSid"] == phone.stream_sid
    assert first["sequenceNumber"] == "2"
    assert first["media"] == {
        "track": "inbound",
        "chunk": "1",
        "timestamp": "0",
        "payload": base64.b64encode(silence(20)).decode(),
    }
    late = phone.tick(65.0)  # a late wake-up sends every frame that is due, with its own timestamp
    assert [m["media"]["timestamp"] for m in late] == ["20", "40"]
    assert [m["media"]["chunk"] for m in late] == ["2", "3"]
    assert [m["sequenceNumber"] for m in late] == ["3", "4"]
    assert phone.next_wakeup_ms() == 80  # no drift


def test_packet_loss_makes_timestamps_jump_not_sequence_numbers() -> None:
    phone = opened(drop_frames={1, 2})
    sent = phone.tick(100.0)
    assert [m["media"]["timestamp"] for m in sent] == ["0", "60", "80"]
    assert [m["media"]["chunk"] for m in sent] == ["1", "2", "3"]
    assert [m["sequenceNumber"] for m in sent] == ["2", "3", "4"]
    report = phone.report()
    assert (report.frames_sent, report.frames_dropped) == (3, 2)
    assert len(report.caller_audio) == 5 * FRAME_BYTES  # the caller still spoke during the lost frames


def test_random_packet_loss_is_seeded() -> None:
    a, b = opened(packet_loss=0.3, seed=7), opened(packet_loss=0.3, seed=7)
    ta = [m["media"]["timestamp"] for m in a.tick(2000.0)]
    tb = [m["media"]["timestamp"] for m in b.tick(2000.0)]
    assert ta == tb and 40 < len(ta) < 100


def test_turn_audio_goes_out_in_frames_and_silence_after() -> None:
    audio = mulaw_tone(50)
    phone = opened([CallerTurn(audio, after_silence_ms=40)], hangup_after_ms=10_000)
    sent = phone.tick(140.0)
    payloads = [base64.b64decode(m["media"]["payload"]) for m in sent]
    assert payloads[0] == payloads[1] == silence(20)
    assert b"".join(payloads[2:5]) == audio + silence(10)  # started at the 40 ms boundary, padded
    assert payloads[5] == silence(20)
    (turn,) = phone.report().turns
    assert (turn.start_ms, turn.end_ms) == (40.0, 90.0)


def test_dtmf_turn() -> None:
    phone = opened([CallerTurn(dtmf="1#", after_silence_ms=0)])
    sent = phone.tick(400.0)
    dtmf = events(sent, "dtmf")
    assert [d["dtmf"] for d in dtmf] == [
        {"track": "inbound_track", "digit": "1"},
        {"track": "inbound_track", "digit": "#"},
    ]
    assert all(d["streamSid"] == phone.stream_sid for d in dtmf)
    seqs = [int(m["sequenceNumber"]) for m in sent]
    assert seqs == list(range(2, 2 + len(sent)))
    assert phone.report().dtmf_sent == [(200.0, "1"), (400.0, "#")]


def test_hangup_after_silence_sends_stop() -> None:
    phone = opened([CallerTurn(mulaw_tone(100), after_silence_ms=0)], hangup_after_ms=200, hangup_wait_for_agent=False)
    sent = run_script(phone, {}, 1000)
    stop = sent[-1]
    assert stop == {
        "event": "stop",
        "sequenceNumber": stop["sequenceNumber"],
        "stop": {"accountSid": phone.account_sid, "callSid": phone.call_sid},
        "streamSid": phone.stream_sid,
    }
    assert phone.done and phone.ended_by == "hangup" and phone.end_ms == 300.0
    assert phone.tick(400.0) == [] and phone.receive(clear(phone), 400.0) == []


def test_timeout_ends_the_call_even_mid_turn() -> None:
    phone = opened([CallerTurn(mulaw_tone(2000), after_silence_ms=0)], timeout_ms=500)
    sent = run_script(phone, {}, 5000)
    assert sent[-1]["event"] == "stop"
    report = phone.report()
    assert report.ended_by == "timeout" and report.duration_ms == 500.0
    assert report.turns[0].completed is False and report.turns[0].end_ms == 500.0


# ---------------------------------------------------------------------- playback, marks, clear


def test_marks_echo_when_the_audio_before_them_has_played() -> None:
    phone = opened()
    assert phone.receive(media(phone, mulaw_tone(100)), 10.0) == []
    assert phone.receive(mark(phone, "a"), 12.0) == []
    phone.receive(media(phone, mulaw_tone(50)), 15.0)
    phone.receive(mark(phone, "b"), 15.0)
    assert phone.next_wakeup_ms() == 20.0  # the frame boundary comes first
    phone.tick(20.0)
    assert phone.next_wakeup_ms() == 40.0
    phone.tick(100.0)
    assert phone.next_wakeup_ms() == 110.0  # mark "a" is due: playback started at 10 ms, 100 ms of audio
    assert events(phone.tick(109.9), "mark") == []
    (echo,) = phone.tick(110.0)
    assert echo["event"] == "mark" and echo["mark"] == {"name": "a"} and echo["streamSid"] == phone.stream_sid
    assert int(echo["sequenceNumber"]) > 1
    sent = phone.tick(175.0)
    assert [m["mark"]["name"] for m in events(sent, "mark")] == ["b"]
    a, b = phone.report().marks
    assert (a.due_ms, a.echoed_ms, a.outcome) == (110.0, 110.0, "played")
    assert (b.due_ms, b.echoed_ms, b.outcome) == (160.0, 175.0, "played")
    (run,) = phone.report().runs
    assert (run.start_ms, run.end_ms, run.ended_by, run.played_ms) == (10.0, 160.0, "drained", 150.0)


def test_mark_with_nothing_queued_echoes_at_once() -> None:
    phone = opened()
    (echo,) = phone.receive(mark(phone, "now"), 5.0)
    assert echo["mark"]["name"] == "now"
    phone.receive(media(phone, mulaw_tone(20)), 10.0)
    assert phone.receive(mark(phone, "after"), 29.0) == []
    # The 20 ms ended at 30 ms: "after" is echoed (played) on the way, then "drained" at once.
    played, late = phone.receive(mark(phone, "drained"), 31.0)
    assert (played["mark"]["name"], late["mark"]["name"]) == ("after", "drained")
    assert [m.outcome for m in phone.report().marks] == ["immediate", "played", "immediate"]


def test_clear_drops_audio_and_echoes_every_pending_mark_at_once() -> None:
    phone = opened()
    for i in range(10):
        phone.receive(media(phone, mulaw_tone(100)), 0.0)
        phone.receive(mark(phone, f"m{i}"), 0.0)
    sent = phone.receive(clear(phone), 350.0)
    names = [m["mark"]["name"] for m in events(sent, "mark")]
    assert names == [f"m{i}" for i in range(10)]  # 0-2 had played by now, 3-9 go out with the clear
    seqs = [int(m["sequenceNumber"]) for m in sent]
    assert seqs == sorted(seqs)
    report = phone.report()
    assert [m.outcome for m in report.marks] == ["played"] * 3 + ["cleared"] * 7
    assert [m.due_ms for m in report.marks[:3]] == [100.0, 200.0, 300.0]
    (cleared,) = report.clears
    assert (cleared.time_ms, cleared.played_ms, cleared.dropped_ms, cleared.marks_echoed) == (350.0, 350.0, 650.0, 7)
    assert report.runs[0].ended_by == "cleared" and report.runs[0].end_ms == 350.0
    # Nothing plays after the clear.
    phone.tick(600.0)
    heard = mulaw_decode(phone.report().heard_audio)
    assert np.abs(heard[: 350 * 8]).max() > 4000
    assert np.abs(heard[350 * 8 :]).max() == 0


def test_clear_with_empty_queue() -> None:
    phone = opened()
    assert phone.receive(clear(phone), 100.0) == []
    assert phone.report().clears[0].played_ms == 0.0


def test_playback_is_tracked_between_ticks() -> None:
    phone = opened()
    phone.receive(media(phone, mulaw_tone(30)), 3.0)  # arrives between ticks: plays from 3 ms, not from a tick
    phone.receive(media(phone, mulaw_tone(30)), 50.0)  # after a 17 ms hole
    phone.tick(100.0)
    report = phone.report()
    assert [(r.start_ms, r.end_ms) for r in report.runs] == [(3.0, 33.0), (50.0, 80.0)]
    heard = np.abs(mulaw_decode(report.heard_audio)).astype(int)
    assert heard[: 3 * 8].max() == 0 and heard[33 * 8 : 50 * 8].max() == 0 and heard[80 * 8 :].max() == 0
    assert report.underruns == 1 and report.underrun_ms == 17.0
    assert report.agent_audio_received_ms == report.agent_audio_played_ms == 60.0


# ---------------------------------------------------------------------- measurements


def test_response_time_and_barge_in() -> None:
    phone = opened(
        [
            CallerTurn(mulaw_tone(200, 300), after_silence_ms=0, name="question"),
            CallerTurn(mulaw_tone(400, 300), after_agent_heard_ms=300, name="interrupt"),
        ],
        hangup_after_ms=100,
        hangup_wait_for_agent=False,
    )
    # The agent answers 350 ms after the question ends (audio that starts with 50 ms of silence),
    # the caller talks over it 300 ms after hearing it, the gateway clears 180 ms later.
    answer = silence(50) + mulaw_tone(2000, 600)
    sent = run_script(phone, {500.0: [media(phone, answer), mark(phone, "end")], 1070.0: [clear(phone)]}, 5000)
    report = phone.report()
    question, interrupt = report.turns
    assert (question.start_ms, question.end_ms) == (0.0, 200.0)
    assert question.response_ms == 350.0
    assert interrupt.barge_in and interrupt.start_ms == 860.0  # first boundary after 550 + 300
    assert interrupt.agent_playing_at_start
    assert interrupt.stop_ms == 210.0 and interrupt.stopped_by == "cleared"
    assert interrupt.talk_over_ms == 210.0
    assert interrupt.response_ms is None  # nothing answered it
    assert report.clears[0].played_ms == 570.0
    assert report.marks[0].outcome == "cleared" and len(events(sent, "mark")) == 1
    assert report.response_ms == [350.0] and report.barge_in_stop_ms == [210.0]
    assert report.ended_by == "hangup"


def test_next_turn_waits_for_the_answer_then_silence() -> None:
    phone = opened(
        [CallerTurn(mulaw_tone(100), after_silence_ms=0), CallerTurn(mulaw_tone(100), after_silence_ms=300)],
        hangup_after_ms=10_000,
    )
    run_script(phone, {1000.0: [media(phone, mulaw_tone(500))]}, 2500)
    first, second = phone.report().turns
    assert first.response_ms == 900.0
    assert second.start_ms == 1800.0  # the answer ended at 1500, then 300 ms of silence


def test_first_turn_waits_for_a_greeting_when_asked() -> None:
    phone = opened([CallerTurn(mulaw_tone(100), after_silence_ms=200, wait_for_agent=True)], hangup_after_ms=10_000)
    run_script(phone, {700.0: [media(phone, mulaw_tone(300))]}, 2000)
    assert phone.report().turns[0].start_ms == 1200.0


def test_barge_in_after_the_agent_stopped_by_itself() -> None:
    phone = opened(
        [CallerTurn(mulaw_tone(100), after_silence_ms=0), CallerTurn(mulaw_tone(100), after_agent_heard_ms=200)],
        hangup_after_ms=10_000,
    )
    run_script(phone, {300.0: [media(phone, mulaw_tone(100))]}, 1000)
    barge = phone.report().turns[1]
    assert barge.start_ms == 500.0 and not barge.agent_playing_at_start and barge.stop_ms is None


def test_report_to_dict_is_json_and_wavs_are_one_timeline(tmp_path) -> None:
    phone = opened([CallerTurn(mulaw_tone(100, 300), after_silence_ms=0)], hangup_after_ms=100, hangup_wait_for_agent=False)
    run_script(phone, {150.0: [media(phone, mulaw_tone(100, 1000)), mark(phone, "x")]}, 2000)
    report = phone.report()
    data = json.loads(json.dumps(report.to_dict()))
    assert data["marks_received"] == data["marks_echoed"] == 1
    assert "caller_audio" not in data and data["turns"][0]["response_ms"] == 50.0
    report.write_wav(tmp_path / "call.wav")
    stereo, rate = read_wav(tmp_path / "call.wav")
    assert rate == 8000 and stereo.shape == (len(report.heard_audio), 2)
    left, right = np.abs(stereo[:, 0]), np.abs(stereo[:, 1])
    assert left[:800].mean() > 1000 and left[:800].max() > 4000 and left[100 * 8 :].max() == 0
    assert right[: 150 * 8].max() == 0 and right[150 * 8 : 250 * 8].max() > 4000 and right[250 * 8 :].max() == 0
    report.write_heard_wav(tmp_path / "heard.wav")
    fmt, raw = parse_wav(tmp_path / "heard.wav")
    assert fmt.format_tag == WAVE_FORMAT_MULAW and fmt.channels == 1 and raw == report.heard_audio


# ---------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (b"\x00\x01", BINARY_FRAME),
        ("not json", INVALID_JSON),
        ("[1, 2]", INVALID_JSON),
        ('{"streamSid": "{sid}"}', MISSING_FIELD),
        ('{"event": "hello", "streamSid": "{sid}"}', UNKNOWN_EVENT),
        ('{"event": "media", "streamSid": "{sid}"}', MISSING_FIELD),
        ('{"event": "media", "streamSid": "{sid}", "media": {}}', MISSING_FIELD),
        ('{"event": "media", "media": {"payload": ""}}', MISSING_FIELD),
        ('{"event": "mark", "streamSid": "{sid}", "mark": {}}', MISSING_FIELD),
        ('{"event": "clear"}', MISSING_FIELD),
        ('{"event": "media", "streamSid": "{sid}", "media": {"payload": "", "track": "outbound"}}', EXTRA_FIELD),
        ('{"event": "clear", "streamSid": "{sid}", "sequenceNumber": "3"}', EXTRA_FIELD),
        ('{"event": "mark", "streamSid": "{sid}", "mark": {"name": 5}}', BAD_FIELD),
        ('{"event": "media", "streamSid": "{sid}", "media": "abc"}', BAD_FIELD),
        ('{"event": "media", "streamSid": "{sid}", "media": {"payload": null}}', BAD_FIELD),
        ('{"event": "clear", "streamSid": "MZ00000000000000000000000000000000"}', WRONG_STREAM_SID),
        ('{"event": "media", "streamSid": "{sid}", "media": {"payload": "@@@"}}', INVALID_BASE64),
        ('{"event": "media", "streamSid": "{sid}", "media": {"payload": "/w"}}', INVALID_BASE64),
    ],
)
def test_each_violation_is_counted_and_ignored(message: str | bytes, kind: str) -> None:
    phone = opened()
    if isinstance(message, str):
        message = message.replace("{sid}", phone.stream_sid)
    assert phone.receive(message, 10.0) == []
    report = phone.report()
    assert report.violation_counts == {kind: 1}, report.violations
    assert report.violations[0].time_ms == 10.0 and report.violations[0].reason
    assert report.runs == [] and report.marks == [] and report.clears == []


def test_message_before_start() -> None:
    phone = Phone([])
    assert phone.receive('{"event": "clear", "streamSid": "x"}', 0.0) == []
    assert phone.report().violation_counts == {BEFORE_START: 1}


def test_valid_messages_raise_no_violation() -> None:
    phone = opened()
    phone.receive(media(phone, mulaw_tone(20)), 0.0)
    phone.receive(mark(phone, "m"), 0.0)
    phone.receive(clear(phone), 10.0)
    assert phone.report().violations == []


# ---------------------------------------------------------------------- WAV files and samples


def test_mulaw_wav_round_trip_is_byte_exact(tmp_path) -> None:
    audio = mulaw_tone(123) + silence(7)
    data = mulaw_wav_bytes(audio)
    fmt, raw = parse_wav(data)
    assert (fmt.format_tag, fmt.channels, fmt.rate, fmt.bits_per_sample) == (7, 1, 8000, 8)
    assert raw == audio and to_mulaw_8k(data) == audio
    samples, rate = read_wav(data)
    assert rate == 8000 and np.array_equal(samples, mulaw_decode(audio))
    write_wav(tmp_path / "x.wav", samples, 8000, encoding="mulaw")
    assert parse_wav(tmp_path / "x.wav")[1] == audio


@pytest.mark.parametrize("encoding", ["pcm16", "mulaw"])
def test_stereo_round_trip(encoding: str) -> None:
    rng = np.random.default_rng(1)
    stereo = rng.integers(-20000, 20000, size=(1001, 2)).astype(np.int16)
    samples, rate = read_wav(wav_bytes(stereo, 16000, encoding))
    assert rate == 16000 and samples.shape == (1001, 2)
    expected = stereo if encoding == "pcm16" else mulaw_decode(mulaw_encode(stereo.reshape(-1))).reshape(-1, 2)
    assert np.array_equal(samples, expected)


def test_reader_skips_odd_chunks_and_reads_extensible_headers() -> None:
    pcm = (np.arange(300, dtype=np.int16) * 50).astype("<i2")
    guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 1, 22050, 44100, 2, 16, 22, 16, 4) + struct.pack("<H", 1) + guid_tail
    body = b"WAVE" + b"LIST" + struct.pack("<I", 3) + b"abc\x00" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(pcm) * 2) + pcm.tobytes()
    data = b"RIFF" + struct.pack("<I", len(body)) + body
    samples, rate = read_wav(data)
    assert rate == 22050 and np.array_equal(samples, pcm)
    with pytest.raises(WavError):
        read_wav(b"RIFF\x00\x00\x00\x00WAVE")
    with pytest.raises(WavError):
        read_wav(b"not a wav file")


def test_other_rates_are_resampled_to_8k() -> None:
    t = np.arange(44100) / 44100  # 1 s of 440 Hz at 44.1 kHz, PCM16
    pcm = (10000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    mulaw = to_mulaw_8k(wav_bytes(np.stack([pcm, pcm], axis=1), 44100, "pcm16"))
    assert len(mulaw) == 8000
    out = mulaw_decode(mulaw).astype(float)[400:-400]
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 8000 / len(out) - 440) < 3
    assert 6500 < np.sqrt(np.mean(out**2)) < 7600  # 10000 / sqrt(2), within mu-law error


def test_bundled_samples_load_as_phone_audio() -> None:
    names = sample_names()
    assert {"greeting", "caller_hello", "caller_question", "caller_bargein", "caller_goodbye"} <= set(names)
    for name in names:
        audio = load_sample(name)
        assert 1.0 < len(audio) / 8000 < 8.0, name
        decoded = mulaw_decode(audio).astype(float)
        assert np.sqrt(np.mean(decoded**2)) > 1000, name  # speech, not silence
    assert load_sample("caller_goodbye.wav") == load_sample("caller_goodbye")
    with pytest.raises(FileNotFoundError):
        load_sample("nope")


# ---------------------------------------------------------------------- over a real socket


async def test_call_against_a_trivial_gateway() -> None:
    """The gateway answers the first caller frame with 1 s of tone and a mark per 100 ms, then clears at 450 ms."""
    from websockets.asyncio.server import serve

    loop = asyncio.get_running_loop()
    got: list[dict] = []
    echoes: dict[str, float] = {}
    timing: dict[str, float] = {}
    clearing: set[asyncio.Task[None]] = set()  # kept: a task nobody holds can be collected before it runs

    async def gateway(ws) -> None:
        sid = None
        async for text in ws:
            msg = json.loads(text)
            got.append(msg)
            if msg["event"] == "start":
                sid = msg["streamSid"]
            elif msg["event"] == "media" and "sent" not in timing:
                timing["sent"] = loop.time()
                for i in range(10):
                    payload = base64.b64encode(mulaw_tone(100, 500)).decode()
                    await ws.send(json.dumps({"event": "media", "streamSid": sid, "media": {"payload": payload}}))
                    await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": f"m{i}"}}))

                async def clear_later(stream_sid: str | None) -> None:
                    await asyncio.sleep(0.45)
                    timing["clear"] = loop.time()
                    await ws.send(json.dumps({"event": "clear", "streamSid": stream_sid}))

                clearing.add(asyncio.create_task(clear_later(sid)))
            elif msg["event"] == "mark":
                echoes[msg["mark"]["name"]] = loop.time()

    async with serve(gateway, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        report = await run_call(
            f"ws://127.0.0.1:{port}/media-stream",
            [CallerTurn(mulaw_tone(300, 300), after_silence_ms=0, name="hello")],
            custom_parameters={"from": "+15550001111"},
            hangup_after_ms=300,
            hangup_wait_for_agent=False,
            timeout_s=5,
        )

    # What the gateway received is Twilio's sequence.
    assert [m["event"] for m in got[:3]] == ["connected", "start", "media"]
    assert got[1]["start"]["customParameters"] == {"from": "+15550001111"}
    assert got[-1]["event"] == "stop"
    numbered = [int(m["sequenceNumber"]) for m in got[1:]]
    assert numbered == list(range(1, len(got)))
    stamps = [int(m["media"]["timestamp"]) for m in got if m["event"] == "media"]
    assert stamps == list(range(0, 20 * len(stamps), 20))

    # Marks m0-m3 echoed as their audio finished playing, never early; m4-m9 all at once on the clear.
    assert list(echoes) == [f"m{i}" for i in range(10)]
    for i in range(4):
        after_ms = (echoes[f"m{i}"] - timing["sent"]) * 1000
        assert (i + 1) * 100 - 5 <= after_ms <= (i + 1) * 100 + 80, (i, after_ms)
    burst = [echoes[f"m{i}"] for i in range(4, 10)]
    assert min(burst) >= timing["clear"] and max(burst) - min(burst) < 0.02

    assert report.ended_by == "hangup" and report.violations == []
    assert report.marks_received == report.marks_echoed == 10
    assert [m.outcome for m in report.marks] == ["played"] * 4 + ["cleared"] * 6
    (cleared,) = report.clears
    assert 420 <= cleared.played_ms <= 520 and abs(cleared.played_ms + cleared.dropped_ms - 1000) < 1
    assert report.agent_audio_received_ms == 1000 and report.media_received == 10
    assert report.turns[0].talk_over_ms > 200  # the tone played over the caller's 300 ms
    heard = mulaw_decode(report.heard_audio)
    assert len(report.heard_audio) == len(report.caller_audio)
    played = np.flatnonzero(np.abs(heard) > 1000)
    assert 400 <= (played[-1] - played[0]) / 8 <= 520  # heard from the first frame's answer until the clear


def test_speech_bounds_come_from_the_callers_audio_not_the_file():
    from gateway.tooling.replay.phone import speech_bounds_ms

    tone = mulaw_encode((np.sin(np.arange(8000) * 0.3) * 8000).astype(np.int16))  # 1 s of voice
    clip = bytes([MULAW_SILENCE]) * 8 * 300 + tone + bytes([MULAW_SILENCE]) * 8 * 600
    lead, trail = speech_bounds_ms(clip)
    assert abs(lead - 300) <= 10 and abs(trail - 600) <= 10
    assert speech_bounds_ms(bytes([MULAW_SILENCE]) * 800) == (0.0, 0.0)
