"""End to end on 127.0.0.1 (real uvicorn, the embedded model): barge-in against a Twilio that does not behave
exactly as the gateway assumes (mark echoes jittered, a phone that reads its socket slowly), and the longest
silence the caller heard where they expected audio. Every verdict is taken from the caller's side."""

from __future__ import annotations

from gateway.call import ModelReportedError
from gateway.local.server import Faults
from gateway.tooling.replay import CallerTurn, CallReport, load_sample, run_call
from gateway.tooling.replay.phone import SlowReader
from gateway.tooling.replay.summary import format_summary

from .conftest import GatewayUnderTest, start_gateway

NORMAL_SILENCE_MS = 1500  # the echo agent answers ~550 ms after the caller stops; a normal call stays well below


def conversation_with_barge_in() -> list[CallerTurn]:
    return [
        CallerTurn(load_sample("caller_hello"), after_silence_ms=300, name="hello"),
        CallerTurn(load_sample("caller_bargein"), after_agent_heard_ms=1200, name="barge-in"),
    ]


def assert_barge_in_worked(report: CallReport, gateway: GatewayUnderTest, session) -> None:
    assert report.violations == []
    assert gateway.of_type(ModelReportedError) == []
    assert session.errors == []  # no truncate (or any other) error from the model
    hello, barge_in = report.turns
    assert hello.response_ms is not None and 0 < hello.response_ms < 2000
    # The agent was talking when the caller started, and stopped soon after: the gateway cleared Twilio's buffer.
    assert barge_in.barge_in and barge_in.agent_playing_at_start
    assert barge_in.stopped_by == "cleared", barge_in
    assert barge_in.stop_ms is not None and barge_in.stop_ms < 1500, barge_in.stop_ms
    assert len(report.clears) == 1 and len(session.truncations) == 1
    _, audio_end_ms, item_audio_ms = session.truncations[0]
    assert 0 < audio_end_ms <= item_audio_ms
    # The barge-in is answered, and every mark the gateway sent came back.
    assert barge_in.response_ms is not None
    assert report.marks_echoed == report.marks_received > 0
    assert all(m.outcome in ("played", "cleared", "immediate") for m in report.marks)
    assert 0 < report.longest_silence_ms < NORMAL_SILENCE_MS, report.silences


async def test_barge_in_with_mark_echoes_jittered_by_60_ms() -> None:
    async with start_gateway() as gateway:
        report = await run_call(gateway.ws_url, conversation_with_barge_in(), timeout_s=40, hangup_after_ms=500,
                                mark_jitter_ms=60, seed=11)
        session = gateway.local_server.sessions[-1]
    assert_barge_in_worked(report, gateway, session)
    # The echoes really were late, by varying amounts, and in order.
    delays = [m.echoed_ms - m.due_ms for m in report.marks if m.outcome == "played"]
    assert delays and min(delays) >= 0 and max(delays) > 15, delays
    echoed = [m.echoed_ms for m in report.marks]
    assert echoed == sorted(echoed)


async def test_barge_in_with_a_phone_that_pauses_reading_its_socket() -> None:
    async with start_gateway() as gateway:
        report = await run_call(gateway.ws_url, conversation_with_barge_in(), timeout_s=40, hangup_after_ms=500,
                                slow_reader=SlowReader(pause_ms=400, every_ms=800))
        session = gateway.local_server.sessions[-1]
    assert_barge_in_worked(report, gateway, session)
    # The phone did leave its socket unread while the gateway was sending: bytes waited in the kernel.
    assert report.reader_paused_ms > 0 and report.max_unread_bytes > 0


async def test_barge_in_with_a_phone_reading_at_twice_real_time_and_jittered_marks() -> None:
    async with start_gateway() as gateway:
        report = await run_call(gateway.ws_url, conversation_with_barge_in(), timeout_s=40, hangup_after_ms=500,
                                slow_reader=SlowReader(max_bytes_per_s=24_000), mark_jitter_ms=60, seed=5)
        session = gateway.local_server.sessions[-1]
    assert_barge_in_worked(report, gateway, session)
    assert report.reader_paused_ms > 500 and report.max_unread_bytes > 1000


async def test_the_longest_silence_of_a_normal_call_is_a_normal_turn() -> None:
    async with start_gateway() as gateway:
        turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300, name="hello"),
                 CallerTurn(load_sample("caller_question"), after_silence_ms=300, name="question")]
        report = await run_call(gateway.ws_url, turns, timeout_s=40, hangup_after_ms=500)
    assert [t.response_ms is not None for t in report.turns] == [True, True]
    assert 0 < report.longest_silence_ms < NORMAL_SILENCE_MS, report.silences
    # Here every silence is a wait for an answer, as long as the turn's latency.
    assert [(s.kind, s.after_turn, s.answered) for s in report.silences] == \
        [("answer", "hello", True), ("answer", "question", True)]
    assert abs(report.longest_silence_ms - max(report.response_ms)) <= 1
    data = report.to_dict()
    assert data["longest_silence_ms"] == round(report.longest_silence_ms, 3)
    assert f"longest silence: {report.longest_silence_ms:.0f} ms" in format_summary(report, color=False)


async def test_a_model_slow_to_start_shows_as_the_longest_silence() -> None:
    async with start_gateway() as gateway:
        # The model's session sends nothing (and reads nothing) for its first 3 s; the caller speaks at once.
        gateway.local_server.faults = Faults(first_delta_delay_s=3.0)
        turns = [CallerTurn(load_sample("caller_goodbye"), after_silence_ms=0, name="bye")]
        report = await run_call(gateway.ws_url, turns, timeout_s=40, hangup_after_ms=500)
    (bye,) = report.turns
    assert bye.response_ms is not None  # answered in the end
    longest = report.longest_silence
    assert longest is not None and (longest.kind, longest.after_turn, longest.answered) == ("answer", "bye", True)
    # No answer can be heard before the model starts, 3 s into the call; the caller stopped at ~1.3 s.
    assert longest.end_ms >= 3000 and longest.start_ms < 1500, longest
    assert report.longest_silence_ms > NORMAL_SILENCE_MS
    text = format_summary(report, color=False)
    assert f"longest silence: {report.longest_silence_ms:.0f} ms (waiting for the answer to 'bye'" in text


async def test_pacing_keeps_a_clear_from_waiting_behind_seconds_of_audio_on_a_slow_path() -> None:
    # A path to Twilio that moves about real time (12 kB/s): without pacing the clear queued behind ~1.6 s of audio
    # already in TCP buffers (measured); with TWILIO_AUDIO_LEAD_MS=500 (the default) it waits behind ~0.7 s.
    async with start_gateway() as gateway:
        report = await run_call(gateway.ws_url, conversation_with_barge_in(), timeout_s=40, hangup_after_ms=500,
                                slow_reader=SlowReader(max_bytes_per_s=12_000), seed=3)
        session = gateway.local_server.sessions[-1]
    barge_in = report.turns[1]
    assert barge_in.stopped_by == "cleared" and barge_in.stop_ms is not None and barge_in.stop_ms < 1200, barge_in
    assert session.errors == [] and report.longest_silence_ms < NORMAL_SILENCE_MS  # paced, yet never starved
