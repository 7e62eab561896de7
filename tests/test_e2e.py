"""End to end on 127.0.0.1: real uvicorn, real websockets, the embedded model, the replay phone as Twilio."""

from __future__ import annotations

import asyncio
import re
import json
import time

import httpx
import pytest

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.call import BargeIn, ModelReportedError, ModelSessionLost
from gateway.media_stream import MODEL_DOWN_LIMIT_S
from gateway.tooling.replay import CallerTurn, load_sample, run_call

from .conftest import start_gateway


def conversation_with_barge_in() -> list[CallerTurn]:
    return [
        CallerTurn(load_sample("caller_hello"), after_silence_ms=300, name="hello"),
        CallerTurn(load_sample("caller_bargein"), after_agent_heard_ms=1200, name="barge-in"),
    ]


@pytest.mark.parametrize("audio_format, latency_ms, playback_delay_ms",
                         [("pcm16", 0, 0), ("pcmu", 0, 0), ("pcm16", 60, 0), ("pcm16", 20, 80)])
async def test_call_with_barge_in_truncates_at_what_the_caller_heard(audio_format, latency_ms, playback_delay_ms):
    # latency_ms: a Twilio edge 60 ms away; the gateway measures the round trip from marks and compensates.
    # playback_delay_ms: Twilio's jitter buffer holds audio before it plays, which the gateway does not model.
    async with start_gateway(audio_format=audio_format) as gateway:
        report = await run_call(gateway.ws_url, conversation_with_barge_in(), timeout_s=40, hangup_after_ms=500,
                                latency_ms=latency_ms, playback_delay_ms=playback_delay_ms)
        session = gateway.local_server.sessions[-1]

    assert report.violations == []
    assert gateway.of_type(ModelReportedError) == []
    assert session.errors == []  # the model never answered with an error: no truncate errors
    hello, barge_in = report.turns
    assert hello.response_ms is not None and 0 < hello.response_ms < 2000
    # The barge-in: the agent was talking, and stopped because the gateway cleared Twilio's buffer.
    assert barge_in.barge_in and barge_in.agent_playing_at_start
    assert barge_in.stopped_by == "cleared"
    assert barge_in.stop_ms is not None and barge_in.stop_ms < 1500
    # Exactly one truncate, within 40 ms of what the phone actually played of that answer.
    assert len(report.clears) == 1 and len(session.truncations) == 1
    item_id, audio_end_ms, item_audio_ms = session.truncations[0]
    played_ms = report.clears[0].played_ms
    # A jitter buffer is indistinguishable from network delay in the marks' round trip, so the gateway counts it as
    # heard: measured 80 ms late with an 80 ms buffer (1419 vs 1339 ms). Bounded, and never past what the item holds.
    assert abs(audio_end_ms - played_ms) <= 40 + playback_delay_ms, (audio_end_ms, played_ms)
    assert audio_end_ms <= item_audio_ms
    (gateway_barge_in,) = gateway.of_type(BargeIn)
    assert gateway_barge_in.item_id == item_id and gateway_barge_in.heard_ms == audio_end_ms
    # The answer to the barge-in turn is heard too, and every mark came back.
    assert barge_in.response_ms is not None
    assert report.marks_echoed == report.marks_received > 0


async def test_agent_speaks_first():
    async with start_gateway(agent_speaks_first=True) as gateway:
        turns = [CallerTurn(load_sample("caller_goodbye"), after_silence_ms=300, wait_for_agent=True)]
        report = await run_call(gateway.ws_url, turns, timeout_s=40, hangup_after_ms=300)
    assert report.runs and report.runs[0].start_ms < 1500  # the greeting, before the caller said anything
    assert report.turns[0].start_ms > report.runs[0].start_ms
    assert report.violations == []


async def test_packet_loss_keeps_the_model_clock_on_the_call_clock():
    async with start_gateway() as gateway:
        turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300)]
        report = await run_call(gateway.ws_url, turns, timeout_s=30, hangup_after_ms=300, drop_frames=range(10, 30))
        session = gateway.local_server.sessions[-1]
    assert report.frames_dropped == 20
    assert report.turns[0].response_ms is not None
    # 20 lost frames were filled with 400 ms of silence: the model heard as much audio as time passed.
    model_audio_ms = session.input_audio_ms
    sent_ms = (report.frames_sent + report.frames_dropped) * 20
    assert abs(model_audio_ms - sent_ms) <= 40


async def test_stop_closes_the_model_socket_within_a_second_and_leaves_nothing_behind():
    async with start_gateway() as gateway:
        baseline = len(asyncio.all_tasks())
        turns = [CallerTurn(load_sample("caller_question"), after_silence_ms=200)]
        report = await run_call(gateway.ws_url, turns, timeout_s=30, hangup_after_ms=200)
        stopped_at = time.monotonic() * 1000
        session = gateway.local_server.sessions[-1]
        for _ in range(100):
            if session.closed_at_ms is not None and not gateway.state.active_calls:
                break
            await asyncio.sleep(0.01)
        assert report.ended_by == "hangup"
        assert session.closed_at_ms is not None and session.closed_at_ms - stopped_at < 1000
        assert not gateway.state.active_calls
        assert session.items == []  # the embedded server let go of the ended call's audio
        await asyncio.sleep(0.05)
        assert len(asyncio.all_tasks()) <= baseline


async def test_twilio_socket_closing_without_stop_closes_the_model_within_a_second():
    async with start_gateway() as gateway:
        async with connect(gateway.ws_url, compression=None) as ws:
            sid = "MZ" + "a" * 32
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": sid,
                                      "start": {"streamSid": sid, "callSid": "CA" + "b" * 32, "accountSid": "AC1",
                                                "tracks": ["inbound"], "customParameters": {},
                                                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
            for _ in range(100):
                if gateway.local_server.sessions:
                    break
                await asyncio.sleep(0.01)
        closed_at = time.monotonic() * 1000
        session = gateway.local_server.sessions[-1]
        for _ in range(150):
            if session.closed_at_ms is not None:
                break
            await asyncio.sleep(0.01)
        assert session.closed_at_ms is not None and session.closed_at_ms - closed_at < 1000


async def test_a_socket_that_never_starts_gets_no_model_session_and_is_closed():
    async with start_gateway() as gateway:
        async with connect(gateway.ws_url, compression=None) as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd.code == 1008
        assert len(gateway.local_server.sessions) == 0


@pytest.mark.parametrize("reconnect, within_s", [(False, 3), (True, MODEL_DOWN_LIMIT_S + 2)])
async def test_model_gone_for_good_ends_the_call_cleanly(reconnect, within_s):
    # Without reconnects the call ends at once; with them, once no session could be had for MODEL_DOWN_LIMIT_S
    # (retries after 0.2, 0.5, 1, then every 2 s), or sooner if too many sessions were lost within a minute.
    async with start_gateway(model_reconnect=reconnect) as gateway:

        async def kill_model_soon() -> None:
            while not gateway.local_server.sessions:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)
            await gateway.local_server.stop()

        killer = asyncio.create_task(kill_model_soon())
        turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=5000)]
        started = time.monotonic()
        report = await run_call(gateway.ws_url, turns, timeout_s=20)
        await killer
        assert report.ended_by == "gateway_closed"
        assert time.monotonic() - started < within_s
        for _ in range(100):
            if not gateway.state.active_calls:
                break
            await asyncio.sleep(0.01)
        assert not gateway.state.active_calls


async def test_incoming_call_webhook_answers_connect_stream_twiml():
    call_sid = "CA" + "1" * 32
    form = {"CallSid": call_sid, "From": "+15550001111", "To": "+15550002222", "AccountSid": "AC" + "2" * 32}
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "gw.example.com"}
    stream_url = re.compile(r'<Connect><Stream url="([^"]+)">')
    async with start_gateway() as gateway:
        async with httpx.AsyncClient(base_url=gateway.http_url) as client:
            response = await client.post("/incoming-call", data=form, headers=forwarded)
            assert response.status_code == 200 and response.headers["content-type"].startswith("application/xml")
            twiml = response.text
            # X-Forwarded-* from a peer that is not a trusted proxy are ignored: the request's own host is used.
            url = stream_url.search(twiml).group(1)
            host = gateway.http_url.removeprefix("http://")
            assert re.fullmatch(rf"ws://{re.escape(host)}/media-stream/v1\.i\.{call_sid}\.[0-9]+\.[\w-]+\.[\w-]+", url)
            for name, value in (("CallSid", call_sid), ("From", "+15550001111"), ("To", "+15550002222")):
                assert f'<Parameter name="{name}" value="{value}" />' in twiml
            assert "?" not in url
            get = await client.get("/incoming-call", params={"CallSid": call_sid})
            assert get.status_code == 200 and f'value="{call_sid}"' in get.text
            assert (await client.post("/incoming-call", data={**form, "CallSid": "CA123"})).status_code == 400
            health = await client.get("/healthz")
            assert health.json()["status"] == "ok" and health.json()["model"] == "embedded"
            assert health.json()["warnings"] == []

    async with start_gateway(trusted_proxy_ips=("127.0.0.1",)) as gateway:
        async with httpx.AsyncClient(base_url=gateway.http_url) as client:
            response = await client.post("/incoming-call", data=form, headers=forwarded)
            assert stream_url.search(response.text).group(1).startswith("wss://gw.example.com/media-stream/v1.i.")

    async with start_gateway(public_url="https://public.example.org", trusted_proxy_ips=("127.0.0.1",)) as gateway:
        async with httpx.AsyncClient(base_url=gateway.http_url) as client:
            response = await client.post("/incoming-call", data=form, headers={"X-Forwarded-Host": "evil.example.com"})
            assert stream_url.search(response.text).group(1).startswith("wss://public.example.org/media-stream/v1.i.")


async def test_the_call_survives_the_model_session_expiring():
    async with start_gateway(transcription_model="gpt-4o-mini-transcribe") as gateway:
        # The embedded model ends each session 5 s in, as OpenAI does at its session limit
        # (error session_expired, then close 1001).
        gateway.local_server.session_limit_s = 5.0
        turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300, name="before"),
                 CallerTurn(load_sample("caller_question"), after_silence_ms=2500, name="after")]
        report = await run_call(gateway.ws_url, turns, timeout_s=40, hangup_after_ms=500)
        sessions = list(gateway.local_server.sessions)
        lost = gateway.of_type(ModelSessionLost)
    assert report.ended_by == "hangup" and report.violations == []
    assert len(sessions) >= 2 and lost
    before, after = report.turns
    assert before.response_ms is not None and after.response_ms is not None  # answered in both sessions
    assert after.start_ms > 5000  # really after the first session ended
    # The new session was given the conversation so far, as text (the caller's words and the agent's).
    assert sessions[0].client_items_added == 0 and sessions[1].client_items_added >= 2
