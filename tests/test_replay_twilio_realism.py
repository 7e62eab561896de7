"""The replay phone as a Twilio that is not the gateway's mirror image: mark echoes that come late by a varying
amount (in order), a phone that reads its socket slowly (TCP-level backpressure), and the longest silence a
caller heard where they expected audio. The phone's logic with explicit times, and its socket shell against a
trivial server on 127.0.0.1 (the real gateway: tests/test_replay_realism_e2e.py)."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from gateway.tooling.replay import CallerTurn
from gateway.tooling.replay.phone import SlowReader, run_call
from gateway.tooling.replay.report import CallReport, Silence
from gateway.tooling.replay.summary import format_summary

from .helpers import mulaw_tone
from .test_phone import clear, events, mark, media, opened, run_script, silence


# ---------------------------------------------------------------------- mark jitter


def _jittered_marks(seed: int, jitter_ms: float = 60.0) -> tuple[list[str], list[tuple[float, float]]]:
    phone = opened(mark_jitter_ms=jitter_ms, seed=seed)
    for i in range(20):  # a mark every 20 ms of audio: closer together than the jitter
        phone.receive(media(phone, mulaw_tone(20)), 0.0)
        phone.receive(mark(phone, f"m{i}"), 0.0)
    sent = run_script(phone, {}, 1000)
    marks = phone.report().marks
    return [m["mark"]["name"] for m in events(sent, "mark")], [(m.due_ms, m.echoed_ms) for m in marks]


def test_mark_echoes_come_late_by_up_to_the_jitter_in_order_and_reproducibly() -> None:
    names, times = _jittered_marks(seed=7)
    assert names == [f"m{i}" for i in range(20)]  # Twilio never reorders its echoes
    assert [due for due, _ in times] == [20.0 * (i + 1) for i in range(20)]
    delays = [echoed - due for due, echoed in times]
    assert all(0.0 <= d <= 60.0 for d in delays), delays
    assert max(delays) - min(delays) > 10  # it varies
    echoed = [e for _, e in times]
    assert echoed == sorted(echoed)
    assert _jittered_marks(seed=7) == (names, times)  # seeded: the same call every time
    assert _jittered_marks(seed=8)[1] != times


def test_without_jitter_every_echo_leaves_the_moment_its_audio_has_played() -> None:
    _, times = _jittered_marks(seed=7, jitter_ms=0.0)
    assert all(due == echoed for due, echoed in times)


def test_jittered_echoes_wake_the_phone_and_a_clear_echoes_after_the_ones_already_due() -> None:
    phone = opened(mark_jitter_ms=50, seed=3)
    for i in range(5):
        phone.receive(media(phone, mulaw_tone(100)), 0.0)
        phone.receive(mark(phone, f"m{i}"), 0.0)
    sent = run_script(phone, {250.0: [clear(phone)]}, 600)
    assert [m["mark"]["name"] for m in events(sent, "mark")] == [f"m{i}" for i in range(5)]
    report = phone.report()
    assert [m.outcome for m in report.marks] == ["played", "played", "cleared", "cleared", "cleared"]
    for m in report.marks:
        assert m.due_ms is not None and m.echoed_ms is not None
        assert m.due_ms <= m.echoed_ms <= m.due_ms + 50
    assert [m.due_ms for m in report.marks] == [100.0, 200.0, 250.0, 250.0, 250.0]
    # A mark with nothing queued is echoed "at once", plus its jitter.
    phone = opened(mark_jitter_ms=50, seed=3)
    assert phone.receive(mark(phone, "alone"), 5.0) in ([], [{"event": "mark", "sequenceNumber": "2",
                                                               "streamSid": phone.stream_sid,
                                                               "mark": {"name": "alone"}}])
    assert 5.0 <= phone.next_wakeup_ms() <= 20.0
    run_script(phone, {}, 100)
    (alone,) = phone.report().marks
    assert alone.outcome == "immediate" and 5.0 <= alone.echoed_ms <= 55.0


def test_a_mark_still_held_by_jitter_when_the_call_ends_is_pending() -> None:
    phone = opened(mark_jitter_ms=1000, seed=1)
    phone.receive(media(phone, mulaw_tone(20)), 0.0)
    phone.receive(mark(phone, "late"), 0.0)
    phone.tick(40.0)
    phone.hangup(41.0)
    (late,) = phone.report().marks
    assert late.due_ms == 20.0
    if late.echoed_ms is None:
        assert late.outcome == "pending" and phone.report().marks_echoed == 0


# ---------------------------------------------------------------------- the longest silence


def test_silence_waiting_for_an_answer_and_a_hole_inside_it() -> None:
    phone = opened([CallerTurn(mulaw_tone(200, 300), after_silence_ms=0, name="q")], hangup_after_ms=1000)
    # The answer starts 300 ms after the question, drains at 800 ms, goes on at 1500 ms: a 700 ms hole.
    run_script(phone, {500.0: [media(phone, mulaw_tone(300))], 1500.0: [media(phone, mulaw_tone(300))]}, 4000)
    report = phone.report()
    assert report.turns[0].response_ms == 300.0
    assert report.silences == [Silence(200.0, 300.0, "answer", "q"), Silence(800.0, 700.0, "inside_answer", "q")]
    assert report.longest_silence_ms == 700.0 and report.longest_silence == report.silences[1]
    assert report.underruns == 0  # too long for an underrun: the silence is what shows it
    data = json.loads(json.dumps(report.to_dict()))
    assert data["longest_silence_ms"] == 700.0
    assert data["longest_silence"] == {"start_ms": 800.0, "duration_ms": 700.0, "kind": "inside_answer",
                                       "after_turn": "q", "answered": True}
    assert len(data["silences"]) == 2
    text = format_summary(report, color=False)
    assert "longest silence: 700 ms (a hole inside the answer to 'q', from 0.8 s)" in text


def test_silence_is_counted_from_where_the_voice_ends_to_where_the_answer_is_heard() -> None:
    # The clip ends with 100 ms of silence; the answer's audio starts with 50 ms of it.
    phone = opened([CallerTurn(mulaw_tone(200, 300) + silence(100), after_silence_ms=0, name="q")], hangup_after_ms=500)
    run_script(phone, {600.0: [media(phone, silence(50) + mulaw_tone(300))]}, 3000)
    (only,) = phone.report().silences
    assert (only.start_ms, only.duration_ms, only.kind) == (200.0, 450.0, "answer")


def test_an_unanswered_turn_is_silent_until_the_caller_goes_on_or_hangs_up() -> None:
    phone = opened([CallerTurn(mulaw_tone(200, 300), after_silence_ms=0, name="q"),
                    CallerTurn(mulaw_tone(200, 300), after_silence_ms=400, wait_for_agent=False, name="again")],
                   hangup_after_ms=600, hangup_wait_for_agent=False)
    run_script(phone, {}, 3000)
    report = phone.report()
    assert report.ended_by == "hangup"
    first, second = report.silences
    assert (first.start_ms, first.duration_ms, first.answered) == (200.0, 400.0, False)  # until "again" started
    assert (second.start_ms, second.duration_ms, second.answered) == (800.0, 600.0, False)  # until the hang-up
    assert "longest silence: 600 ms (after 'again', no answer came, from 0.8 s)" in format_summary(report, color=False)


def test_a_barge_in_clear_and_dtmf_do_not_count_as_holes() -> None:
    phone = opened(
        [CallerTurn(mulaw_tone(200, 300), after_silence_ms=0, name="question"),
         CallerTurn(mulaw_tone(400, 300), after_agent_heard_ms=300, name="interrupt"),
         CallerTurn(dtmf="1", after_silence_ms=100, wait_for_agent=False, name="key")],
        hangup_after_ms=300, hangup_wait_for_agent=False)
    answer = silence(50) + mulaw_tone(2000, 600)
    # The agent is cleared by the barge-in; it answers the interrupt after the key press only.
    run_script(phone, {500.0: [media(phone, answer)], 1070.0: [clear(phone)], 2500.0: [media(phone, mulaw_tone(200))]},
               5000)
    report = phone.report()
    kinds = [(s.kind, s.after_turn, s.answered) for s in report.silences]
    assert ("inside_answer", "question", True) not in kinds  # the cleared answer left no "hole"
    assert kinds[0] == ("answer", "question", True) and report.silences[0].duration_ms == 350.0
    assert ("answer", "interrupt", False) in kinds  # the key press came before any answer
    assert all(s.kind == "answer" for s in report.silences)


def test_a_call_where_the_caller_never_waited_has_no_silence() -> None:
    report = CallReport("MZ", "CA", "AC", "hangup", 1000.0)
    assert report.longest_silence is None and report.longest_silence_ms == 0.0
    assert report.to_dict()["longest_silence"] is None
    assert "longest silence: none" in format_summary(report, color=False)


def test_a_hole_in_a_greeting() -> None:
    phone = opened([CallerTurn(mulaw_tone(100), after_silence_ms=1500, wait_for_agent=True)], hangup_after_ms=200,
                   hangup_wait_for_agent=False)
    run_script(phone, {100.0: [media(phone, mulaw_tone(200))], 1100.0: [media(phone, mulaw_tone(200))]}, 5000)
    hole = next(s for s in phone.report().silences if s.kind == "inside_answer")
    assert (hole.start_ms, hole.duration_ms, hole.after_turn) == (300.0, 800.0, "")
    assert "a hole inside the greeting" in format_summary(phone.report(), color=False)


# ---------------------------------------------------------------------- the slow reader


def test_slow_reader_options() -> None:
    slow = SlowReader(pause_ms=300, every_ms=1000)
    assert [slow.pause_end_ms(t) for t in (0, 500, 999, 1000, 1299, 1300, 2100)] == \
        [None, None, None, 1300, 1300, None, 2300]
    assert SlowReader(max_bytes_per_s=20_000).pause_end_ms(1000) is None
    for bad in ({"pause_ms": 300}, {"pause_ms": 500, "every_ms": 500}, {"max_bytes_per_s": 0},
                {"max_queue": 0}, {"receive_buffer": 0}, {"mss": 10}, {"pause_ms": -1, "every_ms": 10}):
        with pytest.raises(ValueError):
            SlowReader(**bad)


async def test_a_slow_reader_makes_the_senders_writes_wait() -> None:
    """Two minutes of audio sent at once by a trivial server: a phone reading 500 kB/s takes seconds to read it, and
    the server's own sends wait for it (TCP backpressure); a phone reading at full speed takes it in at once."""
    from websockets.asyncio.server import serve

    loop = asyncio.get_running_loop()
    chunk = base64.b64encode(bytes([0x7F]) * 3200).decode()  # 400 ms of near-silence: 4.3 kB a message

    async def call(slow: SlowReader | None, timeout_s: float) -> tuple[float, CallReport]:
        done: dict[str, float] = {}

        async def gateway(ws) -> None:
            async for text in ws:
                msg = json.loads(text)
                if msg["event"] == "start":
                    started = loop.time()
                    for _ in range(300):
                        await ws.send(json.dumps({"event": "media", "streamSid": msg["streamSid"],
                                                  "media": {"payload": chunk}}))
                    done["sent_s"] = loop.time() - started

        async with serve(gateway, "127.0.0.1", 0, compression=None) as server:
            port = server.sockets[0].getsockname()[1]
            report = await run_call(f"ws://127.0.0.1:{port}/media-stream", [CallerTurn(pause_ms=100)],
                                    hangup_after_ms=300, timeout_s=timeout_s, slow_reader=slow)
        return done["sent_s"], report

    fast_s, fast = await call(None, 1.5)
    slow_s, slow = await call(SlowReader(max_bytes_per_s=500_000), 4.0)
    assert fast.agent_audio_received_ms == slow.agent_audio_received_ms == 120_000  # all of it, in the end
    assert fast_s < 0.5 and fast.reader_paused_ms == 0
    # 1.3 MB read at 500 kB/s (2.6 s): the server's sends finished only once most of it had been read (the rest
    # fits in its buffers: websockets' 32 KiB, the kernel's).
    assert slow_s > 1.2, slow_s
    assert slow.reader_paused_ms > 1000 and slow.max_unread_bytes > 1000
    assert slow.violations == [] and fast.violations == []


async def test_while_the_phone_does_not_read_the_senders_messages_wait_in_the_socket() -> None:
    """A mark every 50 ms, echoed at once when read: those sent during a pause come back only when it ends."""
    from websockets.asyncio.server import serve

    loop = asyncio.get_running_loop()
    sent: dict[str, float] = {}
    echoed: dict[str, float] = {}

    async def gateway(ws) -> None:
        async def marks(sid: str) -> None:
            for i in range(50):
                sent[f"m{i}"] = (loop.time() - t0) * 1000
                await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": f"m{i}"}}))
                await asyncio.sleep(0.05)

        task = None
        async for text in ws:
            msg = json.loads(text)
            if msg["event"] == "start":
                t0 = loop.time()
                task = asyncio.create_task(marks(msg["streamSid"]))
            elif msg["event"] == "mark":
                echoed[msg["mark"]["name"]] = (loop.time() - t0) * 1000
        if task is not None:
            task.cancel()

    async with serve(gateway, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        report = await run_call(f"ws://127.0.0.1:{port}/media-stream", [CallerTurn(pause_ms=100)],
                                hangup_after_ms=2800, hangup_wait_for_agent=False, timeout_s=5,
                                slow_reader=SlowReader(pause_ms=800, every_ms=1000))
    assert report.marks_received == report.marks_echoed == len(echoed) > 30
    for name, at in sent.items():
        if name not in echoed:
            continue
        late = echoed[name] - at
        if 1100 <= at <= 1650:  # sent inside the pause [1000, 1800) ms of the phone's clock
            assert echoed[name] >= 1700 and late > 100, (name, at, echoed[name])
        elif 300 <= at <= 900:
            assert late < 250, (name, at, echoed[name])
    assert report.reader_paused_ms > 500
