"""The call core's model-session schedule, driven by event scripts in milliseconds: when it (re)connects, how it
honours a refusal's Retry-After, when it gives up, and the comfort noise the caller hears meanwhile. No sockets, no
sleeps: a small driver plays the shell (it carries out ConnectModel and WakeAt, ticks once a second) against a
scripted model service."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate

import pytest

from gateway.call import (
    Call,
    CallConfig,
    ConnectModel,
    EndCall,
    ModelGaveUp,
    ModelSessionLost,
    Peer,
    Send,
    WakeAt,
)
from gateway.call.limits import (
    COMFORT_NOISE_AFTER_MS,
    MAX_MODEL_LOSSES_PER_MINUTE,
    MODEL_DOWN_LIMIT_MS,
    MODEL_OPEN_TIMEOUT_MS,
)
from gateway.media_stream.model_socket import MAX_RETRY_AFTER_S, parse_retry_after
from gateway.realtime import events as rt
from gateway.twilio import media as tw
from gateway.audio.wavio import load_sample

SID = "MZ" + "0" * 32
NOISE_MS = 1000  # each comfort-noise message: 1 s of mu-law (8000 bytes)

# What the scripted model service answers attempt n (1-based): None opens a session, else (reason, Retry-After ms).
Answer = Callable[[int], "tuple[str, float | None] | None"]


def refuse_all(status: int = 503, retry_after_ms: float | None = None) -> Answer:
    return lambda n: (f"HTTP {status}", retry_after_ms)


def refuse_first(count: int, status: int = 429, retry_after_ms: float | None = None) -> Answer:
    return lambda n: (f"HTTP {status}", retry_after_ms) if n <= count else None


@dataclass
class Run:
    """What the caller's side and the model's side saw, in the core's milliseconds."""

    attempts: list[float] = field(default_factory=list)  # when each ConnectModel was carried out
    timeouts: list[float] = field(default_factory=list)  # the timeout each was given
    noise: list[tuple[float, float]] = field(default_factory=list)  # (when, ms) of each piece of audio sent to Twilio
    opened_ms: float | None = None
    ended_ms: float | None = None
    end_reason: str = ""
    lost_events: int = 0

    def silences(self, until_ms: float) -> list[tuple[float, float]]:
        """(start, length) of every stretch with nothing playing, from the call's start to ``until_ms``, the noise
        played back to back from when it was sent (as Twilio plays what it is sent)."""
        gaps, play_end = [], 0.0
        for sent, ms in self.noise:
            if sent > play_end:
                gaps.append((play_end, sent - play_end))
            play_end = max(play_end, sent) + ms
        if until_ms > play_end:
            gaps.append((play_end, until_ms - play_end))
        return gaps

    def longest_silence_ms(self, until_ms: float) -> float:
        return max((length for _, length in self.silences(until_ms)), default=0.0)


def start_call(**config) -> Call:
    return Call(CallConfig(session_update={"type": "session.update", "session": {}}, **config))


def drive(answer: Answer, *, call: Call | None = None, until_ms: int = 20_000, connect_ms: int = 20,
          clock_phase_ms: int = 0) -> Run:
    """Start a call at t = 0 and play the shell for it, a millisecond at a time, until it ends or ``until_ms``.

    An attempt's answer comes ``connect_ms`` after it starts (or at its timeout, if that is sooner: a timed-out
    attempt fails then). The shell's clock ticks once a second (from ``clock_phase_ms``), and at each WakeAt."""
    call = call or start_call()
    run = Run()
    wake: float | None = None
    in_flight: tuple[float, float] | None = None  # the attempt at the shell: (when its answer comes, its timeout)

    def carry_out(outputs: list, now: int) -> None:
        nonlocal wake, in_flight
        for output in outputs:
            if isinstance(output, ConnectModel):
                assert in_flight is None, "an attempt while one is in flight"
                run.attempts.append(now)
                run.timeouts.append(output.timeout_ms)
                in_flight = (now + min(connect_ms, output.timeout_ms), output.timeout_ms)
            elif isinstance(output, WakeAt):
                wake = output.at_ms
            elif isinstance(output, EndCall):
                run.ended_ms, run.end_reason = now, output.reason
            elif isinstance(output, ModelSessionLost):
                run.lost_events += 1
            elif isinstance(output, Send) and output.to is Peer.TWILIO and output.message["event"] == "media":
                run.noise.append((now, len(base64.b64decode(output.message["media"]["payload"])) / 8))

    carry_out(call.twilio_event(tw.Start(SID, "CA1", "AC1", "audio/x-mulaw", 8000, {}), 0), 0)
    for now in range(1, until_ms + 1):
        if call.ended:
            break
        if in_flight is not None and now >= in_flight[0]:
            timed_out = connect_ms > in_flight[1]
            in_flight = None
            result = ("TimeoutError", None) if timed_out else answer(len(run.attempts))
            if result is None:
                run.opened_ms = now
                carry_out(call.model_connected(now), now)
            else:
                carry_out(call.model_connect_failed(result[0], now, result[1]), now)
        if wake is not None and now >= wake:
            wake = None
            carry_out(call.tick(now), now)
        elif now % 1000 == clock_phase_ms:
            carry_out(call.tick(now), now)
    return run


# ---- the give-up -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_a_model_refusing_every_connect_is_given_up_at_exactly_the_documented_limit(status):
    run = drive(refuse_all(status))
    assert run.ended_ms == MODEL_DOWN_LIMIT_MS == 10_000  # from the call's start: not 7.7 s, not later
    assert f"no model session for 10 s; last: HTTP {status}" in run.end_reason
    # Retried after 0.2, 0.5, 1 and then every 2 s: attempts at once, then on the backoff.
    assert run.attempts[:5] == [0, 220, 740, 1760, 3780]
    assert all(a < 10_000 for a in run.attempts)
    assert run.lost_events == len(run.attempts)  # each refusal is reported (metrics, the call's record)


def test_an_attempt_never_outlasts_the_give_up():
    # A model that never answers: each attempt times out; the last one is cut to end at the limit.
    run = drive(refuse_all(), connect_ms=60_000)
    assert run.timeouts[0] == MODEL_OPEN_TIMEOUT_MS
    assert all(start + timeout <= MODEL_DOWN_LIMIT_MS for start, timeout in zip(run.attempts, run.timeouts))
    assert run.ended_ms == MODEL_DOWN_LIMIT_MS


def test_the_give_up_counts_from_the_loss_for_a_session_lost_mid_call():
    call = start_call()
    call.twilio_event(tw.Start(SID, "CA1", "AC1", "audio/x-mulaw", 8000, {}), 0)
    call.model_connected(20)
    out = call.model_lost("code 1006", 30_000)  # up 30 s: replaced at once
    assert [o for o in out if isinstance(o, ConnectModel)] == [ConnectModel(MODEL_OPEN_TIMEOUT_MS)]
    out = call.model_connect_failed("HTTP 503", 30_010)
    assert not [o for o in out if isinstance(o, (ConnectModel, EndCall))]
    assert not [o for o in call.tick(39_999) if isinstance(o, EndCall)]
    assert [o for o in call.tick(40_000) if isinstance(o, EndCall)]


def test_without_model_reconnect_the_first_refusal_ends_the_call():
    run = drive(refuse_all(), call=start_call(model_reconnect=False))
    assert run.attempts == [0] and run.ended_ms == 20 and "MODEL_RECONNECT is off" in run.end_reason


def test_sessions_that_keep_dying_end_the_call_after_the_limit_per_minute():
    call = start_call()
    call.twilio_event(tw.Start(SID, "CA1", "AC1", "audio/x-mulaw", 8000, {}), 0)
    now, ended = 0, []
    for _ in range(MAX_MODEL_LOSSES_PER_MINUTE + 1):
        call.model_connected(now)
        now += 3000  # each lives 3 s (healthy: replaced at once)
        ended = [o for o in call.model_lost("code 1011", now) if isinstance(o, EndCall)]
    assert ended and "7 model sessions lost within a minute" in ended[0].reason


# ---- Retry-After -------------------------------------------------------------------------------------------------


def test_retry_after_is_honoured_no_attempt_before_it():
    run = drive(refuse_first(1, 429, retry_after_ms=2000))
    assert run.attempts == [0, 2020]  # refused at 20 ms, "Retry-After: 2": not at 220 ms as the backoff says
    assert run.opened_ms == 2040 and run.ended_ms is None


def test_a_retry_after_shorter_than_the_backoff_does_not_shorten_it():
    run = drive(refuse_first(4, 503, retry_after_ms=100))
    assert run.attempts == [0, 220, 740, 1760, 3780]


def test_a_retry_after_past_the_give_up_gives_up_at_the_limit_without_waiting_for_it():
    run = drive(refuse_all(429, retry_after_ms=30_000))
    assert run.attempts == [0]  # nothing before the Retry-After, which is past the limit
    assert run.ended_ms == MODEL_DOWN_LIMIT_MS  # at the limit, not at once and not at 30 s
    assert run.longest_silence_ms(run.ended_ms) < 1000  # and the caller heard the line alive until then


def test_a_retry_after_that_lands_just_before_the_limit_still_gets_its_attempt():
    run = drive(refuse_first(1, 503, retry_after_ms=9_000))
    assert run.attempts == [0, 9_020] and run.timeouts[1] == MODEL_DOWN_LIMIT_MS - 9_020
    assert run.opened_ms == 9_040 and run.ended_ms is None


def test_retry_after_is_parsed_once_at_the_edge_in_both_forms():
    now = 1_800_000_000.0
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after(formatdate(now + 5, usegmt=True), now) == 5.0  # an HTTP-date
    assert parse_retry_after("Fri, 15 Jan 2027 08:00:00 GMT", 1_800_000_000.0 + 86_400 * 365) == 0.0  # passed
    assert parse_retry_after("99999999999") == MAX_RETRY_AFTER_S  # bounded
    for bad in (None, "", "-1", "1.5", "soon", "x" * 500, "\u0663"):
        assert parse_retry_after(bad) is None  # absent or unreadable: no Retry-After


# ---- what the caller hears ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", [0, 1, 371, 999])
def test_comfort_noise_from_the_first_second_without_a_gap_until_the_give_up(phase):
    run = drive(refuse_all(503), clock_phase_ms=phase)
    assert run.noise[0] == (COMFORT_NOISE_AFTER_MS, NOISE_MS)  # half a second of silence, whatever the clock's phase
    assert {ms for _, ms in run.noise} == {NOISE_MS}
    assert run.silences(run.ended_ms) == [(0.0, COMFORT_NOISE_AFTER_MS)]  # then no gap at all until the give-up
    assert len(run.noise) <= MODEL_DOWN_LIMIT_MS / NOISE_MS + 2  # never far ahead of its playback


def test_comfort_noise_while_a_model_that_hangs_is_waited_for():
    run = drive(refuse_all(), connect_ms=60_000)  # no answer at all: each attempt times out
    assert run.silences(run.ended_ms) == [(0.0, COMFORT_NOISE_AFTER_MS)]


def test_a_model_that_answers_at_once_gets_no_noise():
    run = drive(lambda n: None, until_ms=5000)
    assert run.opened_ms == 20 and run.noise == []


def test_noise_until_the_model_is_back_and_its_first_audio_clears_the_rest():
    call = start_call()
    run = drive(refuse_first(2, 429, retry_after_ms=3000), call=call, until_ms=6_100)
    assert run.opened_ms == 6_060 and run.silences(run.opened_ms) == [(0.0, COMFORT_NOISE_AFTER_MS)]
    assert sends(call.tick(6_500)) == []  # the model is back: no more noise
    call.model_event(rt.ResponseCreated("r1"), 6_600)
    out = sends(call.model_event(rt.AudioDelta("r1", "a1", b"\x00\x01" * 2400), 6_700))
    assert out[0] == {"event": "clear", "streamSid": SID} and out[1]["event"] == "media"
    assert sends(call.model_event(rt.AudioDelta("r1", "a1", b"\x00\x01" * 2400), 6_800))[0]["event"] == "media"


def sends(outputs):
    return [o.message for o in outputs if isinstance(o, Send) and o.to is Peer.TWILIO]


def test_after_a_loss_the_noise_waits_for_the_lost_sessions_last_words_then_starts_at_once():
    call = start_call()
    call.twilio_event(tw.Start(SID, "CA1", "AC1", "audio/x-mulaw", 8000, {}), 0)
    call.model_connected(0)
    call.model_event(rt.ResponseCreated("r1"), 5_000)
    out = call.model_event(rt.AudioDelta("r1", "a1", b"\x00\x01" * 24_000 * 2), 5_000)  # 2 s of agent audio
    marks = [m["mark"]["name"] for m in sends(out) if m["event"] == "mark"]
    call.model_lost("code 1006", 5_100)
    assert sends(call.tick(6_000)) == []  # its audio still plays at Twilio: the line is not silent
    for name in marks[:-1]:
        assert sends(call.twilio_event(tw.MarkEcho(SID, name), 6_500)) == []
    noise = sends(call.twilio_event(tw.MarkEcho(SID, marks[-1]), 7_000))  # the last of it played: noise at once
    assert noise and all(m["event"] == "media" for m in noise)


def test_a_give_up_is_not_reported_as_a_reconnect_and_a_late_open_is_ignored():
    call = start_call()
    call.twilio_event(tw.Start(SID, "CA1", "AC1", "audio/x-mulaw", 8000, {}), 0)
    call.model_connect_failed("HTTP 429", 20, retry_after_ms=60_000)
    out = call.tick(10_000)
    assert [type(o) for o in out] == [ModelGaveUp, EndCall]  # no ModelSessionLost: nothing is replaced
    assert call.model_connected(10_005) == []  # an attempt that opened as the call gave up: nothing to configure


def test_a_rollover_refused_with_retry_after_is_not_tried_again_before_it():
    from gateway.call import PrepareRollover

    call = start_call(session_limit_ms=60_000, rollover_margin_ms=10_000)
    call.twilio_event(tw.Start(SID, "CA1", "AC1", "audio/x-mulaw", 8000, {}), 0)
    call.model_connected(0)
    assert [o for o in call.tick(50_000) if isinstance(o, PrepareRollover)]
    call.rollover_failed("HTTP 429", 50_010, retry_after_ms=5_000)
    assert not [o for o in call.tick(54_000) if isinstance(o, PrepareRollover)]  # the 2 s retry would be due
    assert [o for o in call.tick(55_010) if isinstance(o, PrepareRollover)]


# ---- MODEL_WAIT_PROMPT: a short spoken line before the noise ------------------------------------------------------


def test_the_wait_prompt_is_said_once_an_outage_then_the_noise_follows_it_without_a_gap():
    prompt = load_sample("one_moment")
    prompt_ms = len(prompt) / 8
    call = start_call(wait_prompt=prompt)
    run = drive(refuse_all(503), call=call)
    first = run.noise[0]
    assert first == (COMFORT_NOISE_AFTER_MS, NOISE_MS)  # its first second, at half a second into the call
    said = [ms for at, ms in run.noise if at == COMFORT_NOISE_AFTER_MS]
    assert sum(said[:2]) == prompt_ms  # all of it, in pieces of at most a second, then the noise
    assert run.silences(run.ended_ms) == [(0.0, COMFORT_NOISE_AFTER_MS)] and run.ended_ms == MODEL_DOWN_LIMIT_MS
    assert sum(ms for _, ms in run.noise) - prompt_ms == NOISE_MS * (len(run.noise) - 2)  # said once, not again


def test_the_wait_prompt_is_said_again_in_a_later_outage_only():
    call = start_call(wait_prompt=load_sample("one_moment"))
    call.twilio_event(tw.Start(SID, "CA1", "AC1", "audio/x-mulaw", 8000, {}), 0)
    call.model_connected(20)
    call.model_lost("code 1006", 30_000)
    first = sends(call.tick(30_500))
    assert len(first) == 3  # the line (two pieces) and a second of noise
    assert len(sends(call.tick(31_500))) == 1  # the same outage: noise only
    call.model_connected(32_000)
    call.model_lost("code 1006", 60_000)
    assert len(sends(call.tick(60_500))) >= 2  # a new outage: the line again


@pytest.mark.parametrize("value, problem", [("nope", "no bundled sample 'nope'"), ("/nonexistent/x.wav", "no such file"),
                                            ("README.md", "no bundled sample"), (__file__, "not a RIFF/WAVE file")])
def test_a_bad_model_wait_prompt_fails_the_start_with_a_clear_error(value, problem):
    from gateway.config import ConfigError, Settings

    with pytest.raises(ConfigError, match="MODEL_WAIT_PROMPT") as error:
        Settings.from_env({"MODEL_WAIT_PROMPT": value})
    assert problem in str(error.value)


def test_model_wait_prompt_values(tmp_path):
    from gateway.config import Settings
    from gateway.media_stream import call_config
    from gateway.audio.wavio import write_mulaw_wav

    assert call_config(Settings.from_env({})).wait_prompt == b""  # the default: comfort noise only
    assert call_config(Settings.from_env({"MODEL_WAIT_PROMPT": "one_moment"})).wait_prompt == load_sample("one_moment")
    own = tmp_path / "hold.wav"
    write_mulaw_wav(own, b"\x10" * 8000)
    assert call_config(Settings.from_env({"MODEL_WAIT_PROMPT": str(own)})).wait_prompt == b"\x10" * 8000
    too_long = tmp_path / "long.wav"
    write_mulaw_wav(too_long, b"\x10" * 8000 * 6)
    from gateway.config import ConfigError

    with pytest.raises(ConfigError, match="6.0 s long; at most 5 s"):
        Settings.from_env({"MODEL_WAIT_PROMPT": str(too_long)})
