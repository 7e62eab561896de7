"""Calls that survive a bad model, end to end: faults injected in the embedded server (``server.faults``), the
call played by the replay phone, every verdict taken from the caller's side (was the next turn answered?)."""

from __future__ import annotations

import asyncio
import re
import time
from email.utils import formatdate

import httpx
import numpy as np

from gateway.audio.convert import mulaw_decode
from gateway.call import ModelRolledOver, ModelSessionLost
from gateway.local.server import Faults
from gateway.tooling.replay import CallerTurn, load_sample, run_call
from gateway.tooling.replay.phone.units import HEARD_RMS

from .conftest import start_gateway

NORMAL_TURN_MS = 2500  # the echo agent answers ~550 ms after the caller stops; anything past this is a gap


def two_turns(second_after_ms: int) -> list[CallerTurn]:
    return [CallerTurn(load_sample("caller_hello"), after_silence_ms=300, name="before"),
            CallerTurn(load_sample("caller_question"), after_silence_ms=second_after_ms, name="after")]


async def test_a_model_socket_cut_without_a_close_is_replaced_and_the_next_turn_answered() -> None:
    async with start_gateway() as gw:
        # Cut after the first answer has played (~6.5 s in); the caller speaks again 2.5 s after it.
        gw.local_server.faults = Faults(drop_after_s=7.0)
        report = await run_call(gw.ws_url, two_turns(2500), timeout_s=30, hangup_after_ms=500)
        sessions = list(gw.local_server.sessions)
    assert [t.response_ms is not None for t in report.turns] == [True, True], report.turns
    assert report.turns[1].response_ms < NORMAL_TURN_MS and report.violations == []
    assert len(sessions) == 2
    reconnect_ms = sessions[1].opened_at_ms - sessions[0].closed_at_ms
    assert reconnect_ms < 1500, reconnect_ms


async def test_a_model_that_goes_silent_without_closing_is_replaced_within_6_s() -> None:
    async with start_gateway() as gw:
        # Silent after the first answer (~6.5 s in); the caller speaks again 8 s after it, once it must be replaced.
        gw.local_server.faults = Faults(silent_after_s=7.0)
        started = time.monotonic() * 1000
        report = await run_call(gw.ws_url, two_turns(8000), timeout_s=40, hangup_after_ms=500)
        sessions = list(gw.local_server.sessions)
        lost = gw.of_type(ModelSessionLost)
    assert len(sessions) >= 2 and lost
    went_silent_ms = sessions[0].opened_at_ms + 7000
    replaced_after_ms = sessions[1].opened_at_ms - went_silent_ms
    assert 0 < replaced_after_ms < 6000, replaced_after_ms
    assert sessions[0].opened_at_ms >= started
    # The turn after the silent stretch is answered by the new session, at a normal pace.
    assert report.turns[1].response_ms is not None and report.turns[1].response_ms < NORMAL_TURN_MS
    assert report.violations == []


# ---- a model refusing connects at the start of a call (429, 503; Retry-After) ----------------------------------

GIVE_UP_S = 10.0  # README "Model sessions": no session for 10 s from the start of a call, the gateway gives up
GIVE_UP_TOLERANCE_S = 0.6  # the phone's start and the gateway's close each cross a local socket and an event loop


def longest_silence_ms(report, until_ms: float, since_ms: float = 0.0) -> float:
    """The longest stretch in which nothing played at the caller (Twilio's queue was empty), from ``since_ms`` (the
    stream's start) to ``until_ms``: measured on the caller's side, from the phone's playback runs (comfort noise
    counts as sound)."""
    gaps, sounding_until = [], since_ms
    for run in report.runs:
        end = until_ms if run.end_ms is None else run.end_ms
        if run.start_ms >= until_ms or end <= since_ms:
            continue
        gaps.append(run.start_ms - sounding_until)
        sounding_until = end
    gaps.append(until_ms - sounding_until)
    return max(gaps)


def first_heard_ms(report) -> float:
    """When the caller first heard the agent: the first millisecond above the phone's heard threshold (the comfort
    noise is below it)."""
    samples = mulaw_decode(report.heard_audio).astype(np.float64)
    per_ms = samples[: len(samples) // 8 * 8].reshape(-1, 8)
    loud = np.flatnonzero(np.sqrt((per_ms ** 2).mean(axis=1)) > HEARD_RMS)
    return float(loud[0]) if len(loud) else float("inf")


async def test_a_model_refusing_at_call_start_with_retry_after_keeps_the_line_alive_and_is_waited_for() -> None:
    async with start_gateway(agent_speaks_first=True) as gw:
        server = gw.local_server
        # An HTTP date 3 s ahead (the delta-seconds form, and the schedule itself, are unit-tested in
        # tests/test_call_reconnect.py, in milliseconds).
        server.faults = Faults(refuse_connects=1, refuse_status=503, retry_after=formatdate(time.time() + 3, usegmt=True))
        turns = [CallerTurn(load_sample("caller_goodbye"), after_silence_ms=300, wait_for_agent=True)]
        report = await run_call(gw.ws_url, turns, timeout_s=40, hangup_after_ms=300)
        attempts = list(server.connect_attempts)
    assert server.refused_connects == 1 and len(attempts) == 2, attempts
    # Nothing before the Retry-After (2 s; the date 3 s ahead, whole seconds: more than 2 s): not the 0.2 s backoff.
    assert attempts[1] - attempts[0] >= 2000, attempts
    greeting_ms = first_heard_ms(report)
    assert greeting_ms > 2000 and report.violations == []
    # From the first second to the greeting, the line was never silent for a second: comfort noise, no gaps.
    assert longest_silence_ms(report, greeting_ms) < 1000, (longest_silence_ms(report, greeting_ms), report.runs)


async def test_a_model_refusing_every_connect_is_given_up_at_10_s_with_the_line_alive_then_the_spoken_message() -> None:
    # The give-up's schedule (Retry-After past it, a loss mid-call, the wait prompt, MODEL_RECONNECT off, the losses
    # per minute) is unit-tested in milliseconds in tests/test_call_reconnect.py; this is the one end-to-end run.
    async with start_gateway() as gw:
        server = gw.local_server
        server.faults = Faults(refuse_for_s=60, refuse_status=503)
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            twiml = (await http.post("/incoming-call", data={"CallSid": "CA" + "1" * 32})).text
        report = await run_call(gw.ws_url, [CallerTurn(load_sample("caller_hello"), after_silence_ms=30_000)],
                                timeout_s=40, hangup_after_ms=30_000)
        attempts = list(server.connect_attempts)
    assert report.ended_by == "gateway_closed"
    # Measured from the caller's side: from the phone's start to the gateway closing the stream.
    assert abs(report.duration_ms / 1000 - GIVE_UP_S) < GIVE_UP_TOLERANCE_S, report.duration_ms
    assert longest_silence_ms(report, report.duration_ms) < 1000, report.runs
    assert len(attempts) >= 5, attempts  # retried on the backoff until the give-up
    # The gateway closed the stream: Twilio then says the message after </Connect>.
    assert re.search(r"</Connect><Say>[^<]+</Say><Hangup />", twiml), twiml


async def test_a_session_that_keeps_dying_is_not_reopened_forever() -> None:
    async with start_gateway() as gw:
        server = gw.local_server

        async def keep_cutting() -> None:
            while True:
                server.faults = Faults(drop_after_s=2.5)  # every session lives 2.5 s
                await asyncio.sleep(0.05)

        cutter = asyncio.create_task(keep_cutting())
        try:
            report = await run_call(gw.ws_url, [CallerTurn(load_sample("caller_hello"), after_silence_ms=300)],
                                    timeout_s=40, hangup_after_ms=30_000)
        finally:
            cutter.cancel()
        sessions = len(server.sessions)
    assert report.ended_by == "gateway_closed"
    assert sessions <= 8  # bounded: a handful of sessions within the minute, then the call ends with its message


async def test_a_session_near_its_limit_is_replaced_at_a_quiet_point_with_no_gap() -> None:
    # Sessions last 12 s here; the next one is prepared 6 s before the limit, at the first quiet point after 6 s.
    async with start_gateway(local_session_limit_s=12.0, model_rollover_margin_s=6.0,
                             transcription_model="gpt-4o-mini-transcribe") as gw:
        turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300, name="first"),
                 CallerTurn(load_sample("caller_question"), after_silence_ms=2500, name="second"),
                 CallerTurn(load_sample("caller_hello"), after_silence_ms=2500, name="third")]
        report = await run_call(gw.ws_url, turns, timeout_s=60, hangup_after_ms=500)
        sessions = list(gw.local_server.sessions)
        rolled = gw.of_type(ModelRolledOver)
        lost = gw.of_type(ModelSessionLost)
    assert rolled and not lost, (rolled, lost)  # replaced ahead of the limit, never after it struck
    assert report.ended_by == "hangup" and report.violations == []
    assert all(t.response_ms is not None and t.response_ms < NORMAL_TURN_MS for t in report.turns), report.turns
    # Each session was replaced before it expired: the next opened while the previous one still lived.
    for old, new in zip(sessions, sessions[1:]):
        assert new.opened_at_ms < old.closed_at_ms, (old.opened_at_ms, old.closed_at_ms, new.opened_at_ms)
        assert old.closed_at_ms - old.opened_at_ms < 12_000
    # The new session was told the conversation so far, in order: the caller first, then the agent.
    carried = sessions[1].client_texts
    assert [role for role, _ in carried[:2]] == ["user", "assistant"], carried
    assert all(text for _, text in carried), carried
