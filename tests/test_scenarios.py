"""Replay scenarios: the TOML loader and its errors, the phone's scripted turn kinds, evaluate() on hand-made
reports, every bundled scenario against our gateway (both audio modes), and recorded calls replayed exactly."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import numpy as np
import pytest

from gateway.audio.convert import MULAW_SILENCE, mulaw_decode
from gateway.call import CallStarted, DtmfReceived, TranscriptReceived
from gateway.tooling.replay.expectations import ExpectationResult, all_passed, evaluate
from gateway.tooling.replay.phone import FRAME_BYTES, CallerTurn, Phone
from gateway.tooling.replay.recording import RecordedPhone, RecordingError, load_recording
from gateway.tooling.replay.report import CallReport, TurnReport, Violation
from gateway.tooling.replay.scenario import (
    Expectations,
    Scenario,
    ScenarioError,
    bundled_names,
    load_scenario,
    run_scenario,
)
from gateway.tooling.replay.testing import ReplayOutcome, replay_scenario
from gateway.audio.wavio import load_sample, write_wav

from .conftest import start_gateway
from .helpers import mulaw_tone


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


ONE_TURN = '[[turns]]\nsay = "caller_goodbye"\n'

# ---------------------------------------------------------------------- loading and validation


def test_every_field_loads(tmp_path) -> None:
    (tmp_path / "audio").mkdir()
    samples = (6000 * np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)).astype(np.int16)
    write_wav(tmp_path / "audio" / "q.wav", samples, 16000)  # 1 s at 16 kHz: converted to 8 kHz mu-law
    path = write(tmp_path, """
name = "full"
description = "every field"
[call]
custom_parameters = { From = "+15550100" }
timeout_s = 30
hangup_after_ms = 500
packet_loss = 0.05
drop_frames = [3, 4]
seed = 9
noise_snr_db = 18.5
audio_format = "pcmu"
[[turns]]
say = ["caller_hello", "caller_question"]
after_silence_ms = 300
name = "two"
[[turns]]
wav = "audio/q.wav"
after_agent_heard_ms = 600
[[turns]]
dtmf = "1#"
when_agent_stops = true
[[turns]]
pause_ms = 700
[[turns]]
say = "caller_goodbye"
after_silence_ms = 100
wait_for_agent = false
expect_answer = false
[[turns]]
hangup = true
after_agent_heard_ms = 700
[expect]
max_turn_latency_ms = 2500
max_barge_in_stop_ms = 1000
no_violations = false
min_agent_heard_ms = 100
max_agent_heard_ms = 90000
all_marks_echoed = true
max_underruns = 0
agent_says = "hello"
agent_never_says = ["sorry", "error"]
ended_by = "hangup"
all_turns_played = false
""")
    s = load_scenario(path)
    assert (s.name, s.description, s.path) == ("full", "every field", path)
    c = s.call
    assert (c.custom_parameters, c.timeout_s, c.hangup_after_ms, c.packet_loss) == ({"From": "+15550100"}, 30, 500, 0.05)
    assert (c.drop_frames, c.seed, c.noise_snr_db, c.audio_format) == ((3, 4), 9, 18.5, "pcmu")
    two, wav, dtmf, pause, bye, hang = s.turns
    assert two.audio == load_sample("caller_hello") + load_sample("caller_question") and two.name == "two"
    assert len(wav.audio) == 8000 and wav.barge_in and wav.after_agent_heard_ms == 600 and wav.name == "turn1"
    assert (dtmf.dtmf, dtmf.after_silence_ms, dtmf.wait_for_agent, dtmf.kind, dtmf.expects_answer) == ("1#", 0, True, "dtmf", False)
    assert (pause.kind, pause.pause_ms, pause.after_silence_ms) == ("pause", 700, None)
    assert (bye.wait_for_agent, bye.expects_answer) == (False, False)
    assert hang.hangup and hang.after_agent_heard_ms == 700
    e = s.expect
    assert e.agent_says == ("hello",) and e.agent_never_says == ("sorry", "error")
    assert (e.no_violations, e.all_turns_played, e.all_marks_echoed, e.ended_by) == (False, False, True, "hangup")


def test_the_documented_example_is_a_valid_scenario(tmp_path) -> None:
    import textwrap

    import gateway.tooling.replay.scenario as module

    doc = module.__doc__ or ""
    example = textwrap.dedent(doc.split("every field (all optional but one of ``turns`` / ``recording``)::")[1].split("More turn options")[0])
    (tmp_path / "audio").mkdir()
    write_wav(tmp_path / "audio" / "question.wav", (3000 * np.ones(8000)).astype(np.int16), 8000)
    s = load_scenario(write(tmp_path, example))
    assert s.name == "barge-in" and [t.kind for t in s.turns] == ["speech", "speech", "dtmf", "pause", "hangup"]
    assert s.expect.agent_never_says == ("sorry",) and s.call.noise_snr_db == 18


def test_defaults_and_bundled_names(tmp_path) -> None:
    s = load_scenario(write(tmp_path, ONE_TURN, "my-call.toml"))
    assert s.name == "my-call" and s.description == "" and s.call.timeout_s == 60 and s.call.custom_parameters == {}
    assert s.expect == Expectations() and s.expect.no_violations and s.expect.all_turns_played
    assert s.turns[0].after_silence_ms == 800 and s.turns[0].name == "turn0"
    assert set(bundled_names()) >= {"simple-exchange", "early-barge-in", "late-barge-in", "long-agent-answer",
                                    "silent-caller", "dtmf-menu", "noisy-line", "packet-loss", "hangup-while-agent-talks"}
    for name in bundled_names():
        scenario = load_scenario(name)
        assert scenario.name == name and scenario.description
        assert scenario.expect.max_turn_latency_ms in (None, 2500)


BAD = [
    ("name = \n", "not valid TOML"),
    ("nmae = 'x'\n" + ONE_TURN, "nmae: unknown field"),
    ("name = ''\n" + ONE_TURN, "name: must not be empty"),
    ("name = 'x'\n", "turns: no [[turns]] and no recording"),
    ("turns = 3\n", "turns: must be a non-empty array"),
    ("recording = 'r.jsonl'\n" + ONE_TURN, "recording: a scenario has turns or a recording, not both"),
    ("recording = 'missing.jsonl'\n", "recording: "),
    ("[[turns]]\nsay = 'caller_hello'\ndtmf = '1'\n", "turns[0]: a turn does exactly one of say, wav, dtmf, pause_ms, hangup = true (got say, dtmf)"),
    ("[[turns]]\nafter_silence_ms = 3\n", "turns[0]: a turn does exactly one of"),
    ("[[turns]]\nsay = 'caller_hello'\nafter_silence_ms = 1\nwhen_agent_stops = true\n", "turns[0]: give at most one start rule, got after_silence_ms, when_agent_stops"),
    ("[[turns]]\nsay = 'caller_hullo'\n", "turns[0].say: no bundled phrase 'caller_hullo' (bundled: caller_bargein"),
    ("[[turns]]\nsay = []\n", "turns[0].say: must be a non-empty string or list"),
    ("[[turns]]\nwav = 'nope.wav'\n", "turns[0].wav: no such file"),
    ("[[turns]]\nwav = 'not-audio.wav'\n", "turns[0].wav: cannot read"),
    ("[[turns]]\ndtmf = '1x'\n", "turns[0].dtmf: not DTMF keys: 'x'"),
    ("[[turns]]\npause_ms = 0\n", "turns[0].pause_ms: must be > 0"),
    ("[[turns]]\nsay = 'caller_hello'\nafter_silence_ms = 'soon'\n", "turns[0].after_silence_ms: must be a number, got 'soon'"),
    ("[[turns]]\nsay = 'caller_hello'\nafter_agent_heard_ms = -5\n", "turns[0].after_agent_heard_ms: must be >= 0"),
    ("[[turns]]\nsay = 'caller_hello'\nafter_agent_heard_ms = 5\nwait_for_agent = true\n", "turns[0].wait_for_agent: applies to an after_silence_ms rule only"),
    ("[[turns]]\npause_ms = 10\nexpect_answer = true\n", "turns[0].expect_answer: applies to say, wav and dtmf turns only"),
    ("[[turns]]\nhangup = 'yes'\n", "turns[0].hangup: must be true or false"),
    ("[[turns]]\nsay = 'caller_hello'\nvolume = 3\n", "turns[0].volume: unknown field"),
    ("[[turns]]\nhangup = true\n[[turns]]\nsay = 'caller_hello'\n", "turns[1]: comes after a hang-up turn"),
    ("call = 3\n" + ONE_TURN, "call: must be a table"),
    ("[call]\npacket_loss = 1.5\n" + ONE_TURN, "call.packet_loss: must be < 1"),
    ("[call]\ntimeout_s = 0\n" + ONE_TURN, "call.timeout_s: must be > 0"),
    ("[call]\nseed = 1.5\n" + ONE_TURN, "call.seed: must be a whole number"),
    ("[call]\ndrop_frames = [-1]\n" + ONE_TURN, "call.drop_frames: must be a list of frame indexes >= 0"),
    ("[call]\naudio_format = 'opus'\n" + ONE_TURN, "call.audio_format: must be one of 'pcm16', 'pcmu', got 'opus'"),
    ("[call]\ncustom_parameters = { From = 5 }\n" + ONE_TURN, "call.custom_parameters.From: must be a string"),
    ("[call]\ncustom_parameters = []\n" + ONE_TURN, "call.custom_parameters: must be a table of strings"),
    (f"[call]\ncustom_parameters = {{ Big = '{'x' * 500}' }}\n" + ONE_TURN, "call.custom_parameters.Big: name and value must be under 500"),
    ("[call]\nnoise_snr_db = 'loud'\n" + ONE_TURN, "call.noise_snr_db: must be a number"),
    ("[call]\njitter = 3\n" + ONE_TURN, "call.jitter: unknown field"),
    (ONE_TURN + "[expect]\nmax_turn_latency_ms = 0\n", "expect.max_turn_latency_ms: must be > 0"),
    (ONE_TURN + "[expect]\nmax_turn_latency_ms = 'fast'\n", "expect.max_turn_latency_ms: must be a number"),
    (ONE_TURN + "[expect]\nmax_underruns = 0.5\n", "expect.max_underruns: must be a whole number"),
    (ONE_TURN + "[expect]\nended_by = 'crash'\n", "expect.ended_by: must be one of 'hangup', 'timeout', 'gateway_closed'"),
    (ONE_TURN + "[expect]\nagent_says = 3\n", "expect.agent_says: must be a non-empty string or list"),
    (ONE_TURN + "[expect]\nno_violation = true\n", "expect.no_violation: unknown field (known here: agent_never_says"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_a_bad_scenario_names_the_file_the_field_and_the_problem(tmp_path, text: str, message: str) -> None:
    (tmp_path / "not-audio.wav").write_bytes(b"RIFF....nope")
    (tmp_path / "r.jsonl").write_text(recording_text([(0.0, "in", connected())]))
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_unknown_scenario_name_lists_the_bundled_ones() -> None:
    with pytest.raises(ScenarioError, match="no-such-thing: no such scenario file, and no bundled .*simple-exchange"):
        load_scenario("no-such-thing")


def test_recording_scenario_refuses_options_it_cannot_honour(tmp_path) -> None:
    write_recording(tmp_path / "r.jsonl", recorded_call())
    ok = load_scenario(write(tmp_path, "recording = 'r.jsonl'\n[call]\ntimeout_s = 5\n"))
    assert ok.recording is not None and ok.turns == [] and ok.call.timeout_s == 5
    for option in ("packet_loss = 0.1", "noise_snr_db = 10", "custom_parameters = { A = 'b' }"):
        with pytest.raises(ScenarioError, match=f"call.{option.split()[0]}: not with a recording"):
            load_scenario(write(tmp_path, f"recording = 'r.jsonl'\n[call]\n{option}\n"))


# ---------------------------------------------------------------------- the phone's scripted turn kinds


def drive(phone: Phone, until_ms: float, script: dict[float, list[str]] | None = None) -> list[dict]:
    sent: list[dict] = list(phone.open(0.0))
    pending = sorted((script or {}).items())
    now = 0.0
    while now < until_ms and not phone.done:
        now = min(phone.next_wakeup_ms(), pending[0][0] if pending else until_ms, until_ms)
        while pending and pending[0][0] <= now:
            for message in pending.pop(0)[1]:
                sent += phone.receive(message, now)
        sent += phone.tick(now)
    return sent


def agent(phone: Phone, audio: bytes) -> str:
    return json.dumps({"event": "media", "streamSid": phone.stream_sid, "media": {"payload": base64.b64encode(audio).decode()}})


def test_pause_delays_the_next_rule_and_is_not_a_turn() -> None:
    phone = Phone([CallerTurn(mulaw_tone(100), after_silence_ms=0), CallerTurn(pause_ms=500),
                   CallerTurn(mulaw_tone(100), after_silence_ms=0, name="after")], hangup_after_ms=10_000)
    drive(phone, 1500, {200.0: [agent(phone, mulaw_tone(100))]})
    first, after = phone.report().turns
    # The answer (200-300 ms) falls inside the pause (100-600 ms) yet still counts for the first turn.
    assert first.response_ms == 100.0
    assert after.start_ms == 600.0 and after.name == "after"


def test_dtmf_turn_expects_no_answer_by_default() -> None:
    phone = Phone([CallerTurn(dtmf="1", after_silence_ms=0), CallerTurn(mulaw_tone(100), after_silence_ms=100)],
                  hangup_after_ms=10_000)
    drive(phone, 1000)
    dtmf, speech = phone.report().turns
    assert (dtmf.kind, dtmf.expects_answer, speech.kind) == ("dtmf", False, "speech")
    assert speech.start_ms == 300.0  # 200 ms of key press, then 100 ms of silence: no answer awaited


def test_hangup_turn_while_the_agent_talks() -> None:
    phone = Phone([CallerTurn(mulaw_tone(100), after_silence_ms=0), CallerTurn(hangup=True, after_agent_heard_ms=200)])
    sent = drive(phone, 3000, {300.0: [agent(phone, mulaw_tone(1000))]})
    assert sent[-1]["event"] == "stop" and phone.ended_by == "hangup" and phone.end_ms == 500.0
    report = phone.report()
    assert len(report.turns) == 1 and report.runs[0].end_ms is None  # still playing when the caller hung up


def test_when_agent_stops_starts_the_turn_as_soon_as_playback_drains() -> None:
    phone = Phone([CallerTurn(mulaw_tone(100), after_silence_ms=0), CallerTurn(mulaw_tone(100), after_silence_ms=0, wait_for_agent=True)],
                  hangup_after_ms=10_000)
    drive(phone, 2000, {400.0: [agent(phone, mulaw_tone(300))]})
    assert phone.report().turns[1].start_ms == 700.0


def test_line_noise_is_seeded_and_at_the_asked_snr() -> None:
    speech = mulaw_tone(1000, amp=4000)

    def caller_audio(seed: int) -> bytes:
        phone = Phone([CallerTurn(speech, after_silence_ms=1000)], noise_snr_db=20, seed=seed, hangup_after_ms=10_000)
        drive(phone, 1000)
        return phone.report().caller_audio

    a, b, c = caller_audio(1), caller_audio(1), caller_audio(2)
    assert a == b and a != c
    noise = mulaw_decode(a).astype(np.float64)
    expected = 4000 / np.sqrt(2) / 10  # the tone's RMS, 20 dB down
    assert abs(np.sqrt(np.mean(noise**2)) - expected) < 0.1 * expected
    assert a != bytes([MULAW_SILENCE]) * len(a)


# ---------------------------------------------------------------------- evaluate() on hand-made reports


def report(**fields) -> CallReport:
    base = dict(stream_sid="MZ1", call_sid="CA1", account_sid="AC1", ended_by="hangup", duration_ms=5000.0)
    return CallReport(**{**base, **fields})


def turn(name: str, response: float | None, **fields) -> TurnReport:
    return TurnReport(index=0, name=name, barge_in=False, start_ms=0.0, end_ms=1000.0, response_ms=response, **fields)


def scenario(turns: list[CallerTurn] | None = None, **expect) -> Scenario:
    return Scenario("t", turns=turns or [], expect=Expectations(**{"all_turns_played": False, **expect}))


def results(s: Scenario, r: CallReport, transcripts: list[str] | None = None) -> dict[str, ExpectationResult]:
    return {x.name: x for x in evaluate(s, r, transcripts)}


def test_no_violations() -> None:
    assert results(scenario(), report())["no_violations"].passed is True
    bad = results(scenario(), report(violations=[Violation(1.0, "unknown_event", "unknown event 'x'")]))["no_violations"]
    assert bad.passed is False and "1 unknown_event" in bad.detail and "unknown event 'x'" in bad.detail
    assert "no_violations" not in results(scenario(no_violations=False), report())


def test_max_turn_latency() -> None:
    s = scenario(max_turn_latency_ms=1000)
    ok = results(s, report(turns=[turn("a", 400.0), turn("b", 900.0), turn("keys", None, kind="dtmf", expects_answer=False)]))
    assert ok["max_turn_latency_ms"].passed is True and "2 of 2 turns answered, worst 900 ms" in ok["max_turn_latency_ms"].detail
    slow = results(s, report(turns=[turn("a", 400.0), turn("b", 1200.0)]))["max_turn_latency_ms"]
    assert slow.passed is False and "too slow: 'b' 1200 ms" in slow.detail
    unanswered = results(s, report(turns=[turn("a", None)]))["max_turn_latency_ms"]
    assert unanswered.passed is False and "no answer heard to 'a'" in unanswered.detail
    cut = results(s, report(turns=[turn("a", None, completed=False)]))["max_turn_latency_ms"]
    assert cut.passed is None and cut.detail.startswith("skipped")
    early = results(s, report(turns=[turn("a", -500.0, kind="speech")]))["max_turn_latency_ms"]
    assert early.passed is False and "answered before the caller finished: 'a'" in early.detail


def test_max_barge_in_stop() -> None:
    s = scenario(max_barge_in_stop_ms=500)

    def barge(stop: float | None, playing: bool = True) -> TurnReport:
        return TurnReport(index=1, name="b", barge_in=True, start_ms=0.0, end_ms=1.0, agent_playing_at_start=playing,
                          stop_ms=stop, stopped_by="cleared" if stop is not None else "never")

    assert results(s, report(turns=[barge(200.0)]))["max_barge_in_stop_ms"].passed is True
    slow = results(s, report(turns=[barge(800.0)]))["max_barge_in_stop_ms"]
    assert slow.passed is False and "'b': stopped after 800 ms (cleared)" in slow.detail
    assert "never stopped" in results(s, report(turns=[barge(None)]))["max_barge_in_stop_ms"].detail
    idle = results(s, report(turns=[barge(None, playing=False)]))["max_barge_in_stop_ms"]
    assert idle.passed is False and "not talking" in idle.detail
    assert results(s, report(turns=[turn("a", 1.0)]))["max_barge_in_stop_ms"].passed is None


def test_agent_heard_marks_underruns_ended_by() -> None:
    s = scenario(min_agent_heard_ms=1000, max_agent_heard_ms=2000, all_marks_echoed=True, max_underruns=0, ended_by="hangup")
    from gateway.twilio.playback import MarkRecord

    good = report(agent_heard_ms=1500.0, marks=[MarkRecord("m", 1.0, 2.0, 2.0, "played")])
    assert all(r.passed for r in evaluate(s, good, None))
    bad = results(s, report(agent_heard_ms=500.0, marks=[MarkRecord("m", 1.0)], underruns=2, underrun_ms=300.0,
                            ended_by="timeout"))
    assert [bad[k].passed for k in ("min_agent_heard_ms", "all_marks_echoed", "max_underruns", "ended_by")] == [False] * 4
    assert bad["all_marks_echoed"].detail == "0 of 1 marks echoed"
    assert bad["ended_by"].detail == "ended by timeout (expected hangup)"
    assert results(s, report(agent_heard_ms=2500.0))["max_agent_heard_ms"].passed is False


def test_transcript_expectations() -> None:
    s = scenario(agent_says=["Order", "refund"], agent_never_says=["sorry"])
    said = results(s, report(), ["Your order is on its way.", "A refund is possible."])
    assert said["agent_says"].passed is True and said["agent_never_says"].passed is True
    missing = results(s, report(), ["Sorry, your order is late."])
    assert missing["agent_says"].passed is False and "never said: 'refund'" in missing["agent_says"].detail
    assert missing["agent_never_says"].passed is False and "said: 'sorry'" in missing["agent_never_says"].detail
    skipped = results(s, report(), None)
    assert skipped["agent_says"].passed is None and skipped["agent_says"].detail == "skipped: no transcripts"
    assert all_passed(list(skipped.values()))


def test_all_turns_played() -> None:
    turns = [CallerTurn(mulaw_tone(100)), CallerTurn(pause_ms=100), CallerTurn(dtmf="1"), CallerTurn(hangup=True)]
    s = Scenario("t", turns=turns)
    two = [turn("a", 1.0), turn("b", None, kind="dtmf", expects_answer=False)]
    assert results(s, report(turns=two))["all_turns_played"].passed is True
    short = results(s, report(turns=two[:1], ended_by="timeout"))["all_turns_played"]
    assert short.passed is False and "1 of 2 turns played" in short.detail and "ended by timeout" in short.detail
    assert results(s, report(turns=two, ended_by="gateway_closed"))["all_turns_played"].passed is False


def test_replay_outcome_assert_passed_lists_the_failures() -> None:
    failed = ExpectationResult("max_turn_latency_ms", False, "too slow: 'a' 3000 ms")
    outcome = ReplayOutcome(Scenario("x"), report(), [ExpectationResult("no_violations", True, "none"), failed,
                                                       ExpectationResult("agent_says", None, "skipped")])
    assert not outcome.passed and outcome.failures == [failed]
    with pytest.raises(AssertionError, match=r"scenario 'x' failed:\n  - max_turn_latency_ms: too slow: 'a' 3000 ms$"):
        outcome.assert_passed()
    ReplayOutcome(Scenario("y"), report(), [failed.__class__("a", None, "skipped")]).assert_passed()


# ---------------------------------------------------------------------- bundled scenarios against our gateway


def assistant_transcripts(gateway, call_sid: str) -> list[str]:
    return [e.text for sid, e in gateway.events
            if sid == call_sid and isinstance(e, TranscriptReceived) and e.role == "assistant"]


PCMU_SCENARIOS = ["early-barge-in", "late-barge-in", "packet-loss", "dtmf-menu", "hangup-while-agent-talks"]


async def test_bundled_scenarios_pass_against_our_gateway_in_both_modes() -> None:
    """Every bundled scenario in pcm16 mode, and a few in pcmu mode: all calls at once, as they are real time
    (about 20 s for all; on 2 cores each call costs a few percent of one)."""
    # (The openai models the embedded server validates against are built before any call: tests/conftest.py.)
    runs = [("pcm16", load_scenario(n)) for n in bundled_names()] + [("pcmu", load_scenario(n)) for n in PCMU_SCENARIOS]
    async with start_gateway(audio_format="pcm16") as pcm16, start_gateway(audio_format="pcmu") as pcmu:
        gateways = {"pcm16": pcm16, "pcmu": pcmu}

        async def one(mode: str, s: Scenario) -> tuple[str, Scenario, CallReport, list[ExpectationResult]]:
            r = await run_scenario(s, gateways[mode].ws_url)
            return mode, s, r, evaluate(s, r, assistant_transcripts(gateways[mode], r.call_sid))

        outcomes = await asyncio.gather(*(one(mode, s) for mode, s in runs))
        for _ in range(100):  # the gateway ends each call once the phone's stop arrives
            if not pcm16.state.active_calls and not pcmu.state.active_calls:
                break
            await asyncio.sleep(0.02)
        assert not pcm16.state.active_calls and not pcmu.state.active_calls

    failures = [f"{s.name} [{mode}]: {x.name}: {x.detail}" for mode, s, _, res in outcomes for x in res if x.passed is False]
    assert not failures, "\n".join(failures)
    by_name = {(mode, s.name): (r, res) for mode, s, r, res in outcomes}
    for key, (r, res) in by_name.items():
        assert r.violations == [] and r.ended_by == "hangup", key
        assert r.max_frame_lag_ms < 500, (key, r.max_frame_lag_ms)  # the phones kept Twilio's schedule
        assert len(res) >= 3, key  # every bundled scenario checks something real
    for mode, gateway in gateways.items():
        # What the phone cannot see, the gateway reports: the keys reached it, in order.
        sid = by_name[(mode, "dtmf-menu")][0].call_sid
        assert [e.digit for c, e in gateway.events if c == sid and isinstance(e, DtmfReceived)] == ["1", "2", "#"]
        for name in ("early-barge-in", "late-barge-in"):
            (barge,) = [t for t in by_name[(mode, name)][0].turns if t.barge_in]
            assert barge.stopped_by == "cleared", (mode, name)
        assert by_name[(mode, "hangup-while-agent-talks")][0].runs[-1].end_ms is None  # hung up mid-answer
    assert by_name[("pcm16", "silent-caller")][0].agent_heard_ms == 0
    assert any(x.name == "agent_says" and x.passed for x in by_name[("pcm16", "simple-exchange")][1])


async def test_replay_scenario_helper_in_process_and_at_a_url(tmp_path) -> None:
    path = write(tmp_path, ONE_TURN.replace("\n", "\nafter_silence_ms = 200\n", 1)
                 + "[call]\nhangup_after_ms = 300\n[expect]\nmax_turn_latency_ms = 2500\nagent_says = ['echo of']\n")
    async with start_gateway() as gateway:
        in_process, at_url, with_transcripts = await asyncio.gather(
            replay_scenario(path, audio_format="pcmu"),  # starts its own gateway
            replay_scenario(path, gateway.ws_url),
            replay_scenario(load_scenario(path), gateway.ws_url, transcripts=lambda sid: assistant_transcripts(gateway, sid)),
        )
    in_process.assert_passed()
    assert in_process.transcripts and in_process.report.turns[0].response_ms is not None
    assert {r.name: r.passed for r in at_url.results}["agent_says"] is None  # no transcripts from a URL
    with_transcripts.assert_passed()
    assert {r.name: r.passed for r in with_transcripts.results}["agent_says"] is True


# ---------------------------------------------------------------------- recorded calls


STREAM, CALL, ACCOUNT = "MZ" + "a" * 32, "CA" + "b" * 32, "AC" + "c" * 32


def connected() -> str:
    return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def recording_text(lines: list[tuple[float, str, str]]) -> str:
    header = {"type": "header", "version": 1, "call_sid": CALL, "stream_sid": STREAM, "started_at": "2025-05-01T12:00:00+00:00"}
    return "\n".join([json.dumps(header)] + [json.dumps({"t_ms": t, "dir": d, "text": x}) for t, d, x in lines]) + "\n"


def write_recording(path: Path, lines: list[tuple[float, str, str]]) -> Path:
    path.write_text(recording_text(lines))
    return path


def recorded_call(speech: bytes | None = None, lost: range = range(40, 43), tail_ms: int = 1600) -> list[tuple[float, str, str]]:
    """A call as the gateway would record it: 0.4 s of silence, the caller's speech, ``tail_ms`` of silence (frames
    in ``lost`` never arrived), a key press, a mark echo and frames the old gateway sent, then stop."""
    speech = load_sample("caller_hello") if speech is None else speech
    audio = bytes([MULAW_SILENCE]) * 3200 + speech + bytes([MULAW_SILENCE]) * (tail_ms * 8)
    audio += bytes([MULAW_SILENCE]) * (-len(audio) % FRAME_BYTES)
    seq = iter(range(1, 10_000))
    lines = [(0.4, "in", connected()),
             (0.9, "in", json.dumps({"event": "start", "sequenceNumber": str(next(seq)), "start": {
                 "accountSid": ACCOUNT, "streamSid": STREAM, "callSid": CALL, "tracks": ["inbound"],
                 "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                 "customParameters": {"From": "+15550100", "campaign": "spring"}}, "streamSid": STREAM}))]
    chunk = 0
    for k in range(len(audio) // FRAME_BYTES):
        if k in lost:
            continue
        chunk += 1
        payload = base64.b64encode(audio[k * FRAME_BYTES : (k + 1) * FRAME_BYTES]).decode()
        lines.append((20.0 * (k + 1) + 1.3, "in", json.dumps({"event": "media", "sequenceNumber": str(next(seq)), "media": {
            "track": "inbound", "chunk": str(chunk), "timestamp": str(20 * k), "payload": payload}, "streamSid": STREAM})))
    end = 20.0 * (len(audio) // FRAME_BYTES) + 2
    lines += [(1500.0, "out", json.dumps({"event": "media", "streamSid": STREAM, "media": {"payload": "/w=="}})),
              (1500.5, "out", json.dumps({"event": "mark", "streamSid": STREAM, "mark": {"name": "old"}})),
              (1600.0, "in", json.dumps({"event": "mark", "sequenceNumber": str(next(seq)), "streamSid": STREAM,
                                         "mark": {"name": "old"}})),
              (end - 300, "in", json.dumps({"event": "dtmf", "streamSid": STREAM, "sequenceNumber": str(next(seq)),
                                            "dtmf": {"track": "inbound_track", "digit": "7"}})),
              (end, "in", json.dumps({"event": "stop", "sequenceNumber": str(next(seq)),
                                      "stop": {"accountSid": ACCOUNT, "callSid": CALL}, "streamSid": STREAM}))]
    return sorted(lines, key=lambda line: line[0])


def test_load_recording_keeps_twilios_frames_and_drops_mark_echoes(tmp_path) -> None:
    lines = recorded_call()
    rec = load_recording(write_recording(tmp_path / "r.jsonl", lines))
    assert (rec.call_sid, rec.stream_sid, rec.out_frames, rec.dropped_marks) == (CALL, STREAM, 2, 1)
    assert [f.text for f in rec.frames] == [x for _, d, x in lines if d == "in" and '"mark"' not in x]
    assert rec.start["customParameters"] == {"From": "+15550100", "campaign": "spring"}


@pytest.mark.parametrize("text, message", [
    ("", ":1: the first line must be the header"),
    ('{"type": "header", "version": 2}\n', ":1: version 2 is not supported"),
    ('{"type": "header", "version": 1}\nnope\n', ":2: not JSON"),
    ('{"type": "header", "version": 1}\n{"t_ms": -1, "dir": "in", "text": "{}"}\n', ":2: 't_ms' must be a number >= 0"),
    ('{"type": "header", "version": 1}\n{"t_ms": 1, "dir": "up", "text": "{}"}\n', ":2: 'dir' must be"),
    ('{"type": "header", "version": 1}\n{"t_ms": 1, "dir": "in", "text": 3}\n', ":2: 'text' must be a string"),
    ('{"type": "header", "version": 1}\n', ": no 'start' frame"),
])
def test_bad_recordings(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(text)
    with pytest.raises(RecordingError, match=message):
        load_recording(path)
    with pytest.raises(ScenarioError, match=f"recording: .*{message}"):
        load_scenario(write(tmp_path, "recording = 'r.jsonl'\n"))


def test_fresh_sids_rewrite_only_the_sids(tmp_path) -> None:
    rec = load_recording(write_recording(tmp_path / "r.jsonl", recorded_call(speech=mulaw_tone(200))))
    phone = RecordedPhone(rec, fresh_sids=True)
    sent = phone.open(0.0) + phone.tick(100_000.0)
    assert phone.call_sid != CALL and phone.stream_sid != STREAM and phone.done
    assert len(sent) == len(rec.frames)
    for text, frame in zip(sent, rec.frames):
        assert json.loads(text) == json.loads(frame.text.replace(CALL, phone.call_sid).replace(STREAM, phone.stream_sid))
    same = RecordedPhone(rec)
    assert same.open(0.0) + same.tick(100_000.0) == [f.text for f in rec.frames]  # without: byte for byte


async def test_a_recording_replays_exactly_and_marks_are_echoed_live(tmp_path) -> None:
    """A bare server records what arrives and when; it also plays 200 ms of audio with a mark."""
    from websockets.asyncio.server import serve

    rec = load_recording(write_recording(tmp_path / "r.jsonl", recorded_call()))
    received: list[tuple[float, str]] = []
    loop = asyncio.get_running_loop()

    async def handler(ws) -> None:
        t0 = loop.time()
        async for message in ws:
            received.append(((loop.time() - t0) * 1000, message))
            if len(received) == 30:  # mid-call: 200 ms of agent audio, then a mark
                await ws.send(json.dumps({"event": "media", "streamSid": STREAM,
                                          "media": {"payload": base64.b64encode(mulaw_tone(200)).decode()}}))
                await ws.send(json.dumps({"event": "mark", "streamSid": STREAM, "mark": {"name": "live"}}))
                sent_at = (loop.time() - t0) * 1000
                received.append((sent_at, "SENT"))

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        s = Scenario("rec", recording=rec)
        report = await run_scenario(s, f"ws://127.0.0.1:{port}")

    (sent_at,) = [t for t, m in received if m == "SENT"]
    echoes = [(t, m) for t, m in received if m != "SENT" and json.loads(m)["event"] == "mark"]
    replayed = [(t, m) for t, m in received if m != "SENT" and json.loads(m)["event"] != "mark"]
    assert [m for _, m in replayed] == [f.text for f in rec.frames]  # byte for byte, in order
    late = [(f.t_ms, t) for (t, _), f in zip(replayed, rec.frames) if abs(t - f.t_ms) > 20]
    assert not late, late[:5]
    (echo_t, echo), = echoes
    assert json.loads(echo)["mark"] == {"name": "live"} and json.loads(echo)["streamSid"] == STREAM
    assert 190 <= echo_t - sent_at <= 240  # once the 200 ms before it had played
    assert report.ended_by == "hangup" and report.violations == [] and report.frames_dropped == 3
    assert report.dtmf_sent and report.dtmf_sent[0][1] == "7"
    assert report.marks[0].outcome == "played"


async def test_a_recording_against_our_gateway(tmp_path) -> None:
    (tmp_path / "calls").mkdir()
    rec_path = write_recording(tmp_path / "calls" / "CA1.jsonl", recorded_call(tail_ms=4000))
    # (No all_marks_echoed: the gateway answers the key press near the end, and the caller hangs up over it.)
    path = write(tmp_path, "recording = 'calls/CA1.jsonl'\n[expect]\nmax_turn_latency_ms = 2500\nmax_underruns = 0\n")
    s = load_scenario(path)
    assert s.recording is not None and s.recording.path == rec_path
    async with start_gateway() as gateway:
        r = await run_scenario(s, gateway.ws_url)
        session = gateway.local_server.sessions[-1]
    res = evaluate(s, r, None)
    assert all_passed(res), res
    (started,) = gateway.of_type(CallStarted)
    assert (started.call_sid, started.stream_sid) == (CALL, STREAM)
    assert started.custom_parameters == {"From": "+15550100", "campaign": "spring"}
    assert [e.digit for e in gateway.of_type(DtmfReceived)] == ["7"]
    # Every recorded frame reached the model, the 3 lost ones as 60 ms of silence: as much audio as the call's time.
    media = [f for f in s.recording.frames if f.event == "media"]
    last_ts = int(media[-1].message["media"]["timestamp"])
    assert abs(session.input_audio_ms - (last_ts + 20)) <= 40
    # The caller's speech was found in the recorded audio, and the gateway under test answered it.
    (speech,) = r.turns
    assert abs(speech.start_ms - 400) <= 40 and abs(speech.end_ms - (400 + len(load_sample("caller_hello")) / 8)) <= 60
    assert speech.response_ms is not None and not speech.barge_in
    assert r.runs[0].ended_by == "drained" and r.marks_echoed > 0  # the echo answer played out, marks came back


def test_strict_mode_fails_skipped_expectations() -> None:
    from gateway.tooling.replay.expectations import all_passed

    skipped = [ExpectationResult("agent_says", None, "skipped: no transcripts")]
    assert all_passed(skipped) is True
    assert all_passed(skipped, strict=True) is False
