"""Issue 4 end to end: the HTTP API places a call at a stand-in Twilio, which "dials" the replay phone
into the Stream URL of the TwiML it received; a scripted model drives tools and call control."""

from __future__ import annotations

import contextlib
from typing import Any, AsyncIterator

import httpx

from gateway.tooling.replay import CallerTurn, CallReport, load_sample, run_call
from tests.conftest import GatewayUnderTest, start_gateway
from tests.fake_twilio import FakeTwilio, start_fake_twilio

API_KEY = "e2e-key-cccccccccccccccccccccccc"
PUBLIC = "https://gateway.example.test"
TRANSFER_TO = "+14155550199"


@contextlib.asynccontextmanager
async def outbound_gateway(script: str, tmp_path, **overrides: Any) -> AsyncIterator[tuple[GatewayUnderTest, FakeTwilio]]:
    path = tmp_path / "script.toml"
    path.write_text(script)
    async with start_fake_twilio() as fake:
        settings: dict[str, Any] = dict(
            api_keys=(API_KEY,), twilio_account_sid=fake.account_sid, twilio_auth_token=fake.auth_token,
            twilio_api_base_url=fake.base_url, twilio_from_number="+14155550100", public_url=PUBLIC,
            local_agent=f"scripted:{path}", outbound_rate_limit_per_minute=1000,
        )
        settings.update(overrides)
        async with start_gateway(**settings) as gateway:
            yield gateway, fake


async def place_and_answer(gateway: GatewayUnderTest, fake: FakeTwilio, turns: list[CallerTurn],
                           hangup_after_ms: float = 1500, **body: Any) -> tuple[str, CallReport]:
    """POST /calls, then play the callee: connect to the Stream URL with the TwiML's Parameters."""
    async with httpx.AsyncClient(base_url=gateway.http_url) as client:
        response = await client.post("/calls", json={"to": "+14155550123", **body},
                                     headers={"authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 201, response.text
    call_sid = response.json()["call_sid"]
    placed = fake.calls[call_sid]
    # The callee answers: Twilio fetches the call's TwiML from the gateway's answer webhook.
    assert (await fake.answer(gateway.http_url, call_sid)).status_code == 200
    assert placed.stream_url.startswith(f"{PUBLIC.replace('https', 'wss')}/media-stream/v1.o.{call_sid}.")
    # Twilio signs the upgrade against the public wss:// URL; the phone connects to where the gateway listens.
    from twilio.request_validator import RequestValidator

    signature = RequestValidator(fake.auth_token).compute_signature(placed.stream_url, {})
    path = placed.stream_url.removeprefix(PUBLIC.replace("https", "wss"))
    stream_url = gateway.http_url.replace("http://", "ws://") + path
    report = await run_call(stream_url, turns, custom_parameters=placed.stream_parameters, call_sid=call_sid,
                            account_sid=fake.account_sid,
                            extra_headers={"X-Twilio-Signature": signature}, timeout_s=40,
                            hangup_after_ms=hangup_after_ms)
    return call_sid, report


GOODBYE_SCRIPT = """
[[replies]]
say = "Hello Ann, this is Acme about your appointment."
expect_instructions_contain = "dentist appointment on Friday"
[[replies]]
say = "Thank you, goodbye!"
function_call = { name = "end_call", arguments = {} }
[[replies]]
when_function_output = true
say = ""
"""


async def test_outbound_call_with_per_call_instructions_ends_after_the_goodbye_is_heard(tmp_path):
    async with outbound_gateway(GOODBYE_SCRIPT, tmp_path) as (gateway, fake):
        turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300, wait_for_agent=True)]
        # The phone would wait 8 s before hanging up itself: the gateway must end the call first.
        call_sid, report = await place_and_answer(
            gateway, fake, turns, hangup_after_ms=8000, instructions="Remind Ann of her dentist appointment on Friday.", greeting="Hi Ann")
        session = gateway.local_server.sessions[-1]
        hangups = [u for u in fake.calls[call_sid].updates if u.get("Status") == ["completed"]]
    assert session.agent.mismatches == []  # the per-call instructions reached the model
    assert len(session.agent.used) >= 2
    assert report.violations == []
    # The agent spoke first (the greeting), answered, and the gateway hung up via REST once the goodbye was heard.
    assert report.runs[0].start_ms < report.turns[0].start_ms
    assert len(hangups) == 1
    assert report.ended_by == "gateway_closed"
    goodbye = report.runs[-1]
    assert goodbye.ended_by == "drained" and goodbye.played_ms >= 1200  # "Thank you, goodbye!" heard whole


TRANSFER_SCRIPT = """
[[replies]]
say = "Let me put you through to a colleague."
function_call = { name = "transfer_call", arguments = { reason = "caller asked for a human" } }
[[replies]]
when_function_output = true
say = ""
"""


async def test_transfer_redirects_the_call_to_the_configured_number_after_the_announcement(tmp_path):
    async with outbound_gateway(TRANSFER_SCRIPT, tmp_path, transfer_number=TRANSFER_TO) as (gateway, fake):
        turns = [CallerTurn(load_sample("caller_question"), after_silence_ms=300)]
        call_sid, report = await place_and_answer(gateway, fake, turns)
        await fake.wait_for(lambda: fake.calls[call_sid].redirected_twiml)
        (twiml,) = fake.calls[call_sid].redirected_twiml
    assert twiml == f'<?xml version="1.0" encoding="UTF-8"?><Response><Dial>{TRANSFER_TO}</Dial></Response>'
    announcement = report.runs[0]
    assert announcement.played_ms >= 2000  # "Let me put you through to a colleague." was heard before the redirect


HANGING_TOOL_SCRIPT = """
[[replies]]
say = "One moment while I check."
function_call = { name = "wait_forever", arguments = {} }
[[replies]]
when_function_output = true
say = "Sorry, our system is slow today."
[[replies]]
say = "Goodbye."
"""


async def test_a_tool_that_hangs_does_not_stall_the_audio(tmp_path):
    async with outbound_gateway(HANGING_TOOL_SCRIPT, tmp_path, tools_module="tests.sample_tools",
                                tool_timeout_s=1.5) as (gateway, fake):
        turns = [CallerTurn(load_sample("caller_question"), after_silence_ms=300),
                 CallerTurn(load_sample("caller_goodbye"), after_silence_ms=500)]
        _, report = await place_and_answer(gateway, fake, turns)
        session = gateway.local_server.sessions[-1]
    # While the tool hung, the announcement played to the end and caller audio kept reaching the model.
    assert report.violations == [] and report.max_frame_lag_ms < 200
    assert len(report.runs) >= 2 and report.runs[0].ended_by == "drained"
    frames_ms = (report.frames_sent + report.frames_dropped) * 20
    assert abs(session.input_audio_ms - frames_ms) <= 60
    # After the timeout the model got an error output and answered it.
    assert session.agent.used[:2] == [0, 1]


async def test_an_outbound_calls_settings_are_taken_once_and_its_stream_cannot_be_replayed(tmp_path):
    import websockets
    from twilio.request_validator import RequestValidator
    from websockets.asyncio.client import connect

    async with outbound_gateway(GOODBYE_SCRIPT, tmp_path) as (gateway, fake):
        turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300, wait_for_agent=True)]
        call_sid, _ = await place_and_answer(gateway, fake, turns, hangup_after_ms=8000, greeting="Hi Ann",
                                             instructions="Remind Ann of her dentist appointment on Friday.")
        assert await gateway.state.store.get_call_settings(call_sid) is None  # taken by its stream: single use
        sessions = len(gateway.local_server.sessions)
        # Someone who captured the stream URL and its signature (a proxy log) replays them after the call.
        placed = fake.calls[call_sid]
        path = placed.stream_url.removeprefix(PUBLIC.replace("https", "wss"))
        signature = RequestValidator(fake.auth_token).compute_signature(placed.stream_url, {})
        async with connect(gateway.http_url.replace("http://", "ws://") + path, compression=None,
                           additional_headers={"X-Twilio-Signature": signature}) as ws:
            try:
                await ws.recv()
            except websockets.exceptions.ConnectionClosed:
                pass
            assert ws.close_code == 1008
        assert len(gateway.local_server.sessions) == sessions  # no model session, no instructions leaked


async def test_a_store_failure_at_call_start_ends_the_call_instead_of_leaving_it_silent(tmp_path, caplog):
    async with outbound_gateway(GOODBYE_SCRIPT, tmp_path) as (gateway, fake):
        async def broken_take(call_sid):
            raise OSError("connection pool exhausted")

        gateway.state.store.take_call_settings = broken_take
        turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300)]
        _, report = await place_and_answer(gateway, fake, turns, hangup_after_ms=8000)
        sessions = len(gateway.local_server.sessions)
    # Ended by the gateway at once (Twilio then says the TwiML's message after </Connect>); no model session opened.
    assert report.ended_by == "gateway_closed" and report.duration_ms < 3000
    assert sessions == 0
    assert any("per-call settings could not be read" in r.getMessage() for r in caplog.records)
