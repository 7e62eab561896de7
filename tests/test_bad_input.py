"""Bad input, end to end over real sockets: every malformed, hostile or oversized frame sent to ``/media-stream``
(or by the model) is a logged drop or a close with a policy code, never a crashed call or process, and the
call goes on: a valid Twilio media frame sent after the bad one still reaches the model.

Each test runs a real gateway under uvicorn on 127.0.0.1 (``tests/conftest.py``); "reaches the model" is
measured on the embedded Realtime server's session (the samples it appended), "reaches the phone" on the
messages the client receives.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import secrets
from typing import Any, AsyncIterator

import httpx
import numpy as np
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.protocol import State

from gateway.call import Dropped
from gateway.tooling.replay import CallerTurn, load_sample, run_call

from .conftest import GatewayUnderTest, start_gateway
from .helpers import eventually

FRAME_BYTES = 160  # 20 ms of mu-law at 8 kHz
SILENCE_FRAME = b"\xff" * FRAME_BYTES
SAMPLES_PER_FRAME = 160  # what one 20 ms frame adds to the embedded session's 8 kHz input clock
MAX_FRAME_BYTES = 65536
ONE_MIB = 1 << 20
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009


# ---------------------------------------------------------------------- helpers


def appended_samples(session: Any) -> int:
    """Caller audio the embedded Realtime session has appended (8 kHz samples; its input clock)."""
    return session._clock


def media_frame(stream_sid: str, timestamp_ms: int, audio: bytes = SILENCE_FRAME, **media_fields: Any) -> dict:
    media = {"track": "inbound", "chunk": "1", "timestamp": str(timestamp_ms), "payload": base64.b64encode(audio).decode()}
    media.update(media_fields)
    return {"event": "media", "sequenceNumber": "1", "media": media, "streamSid": stream_sid}


class TwilioClient:
    """Just enough of Twilio's side of a Media Stream to send good frames around bad ones."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.call_sid = "CA" + secrets.token_hex(16)
        self.timestamp_ms = 0

    async def send(self, message: dict | str | bytes) -> None:
        await self.ws.send(json.dumps(message) if isinstance(message, dict) else message)

    async def start(self) -> None:
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self.send(
            {
                "event": "start",
                "sequenceNumber": "1",
                "start": {
                    "accountSid": "AC" + secrets.token_hex(16),
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": {},
                },
                "streamSid": self.stream_sid,
            }
        )

    def next_media(self, audio: bytes = SILENCE_FRAME) -> dict:
        frame = media_frame(self.stream_sid, self.timestamp_ms, audio)
        self.timestamp_ms += len(audio) // 8
        return frame

    async def media(self, frames: int = 1, audio: bytes = SILENCE_FRAME) -> None:
        for _ in range(frames):
            await self.send(self.next_media(audio))

    @property
    def open(self) -> bool:
        return self.ws.state is State.OPEN


@contextlib.asynccontextmanager
async def twilio_call(gateway: GatewayUnderTest, *, start: bool = True) -> AsyncIterator[tuple[TwilioClient, Any]]:
    """A connected client and the embedded model session the gateway opened for it."""
    sessions = gateway.local_server.sessions
    before = len(sessions)
    calls_before = len(gateway.state.active_calls)
    async with connect(gateway.ws_url, compression=None, max_size=None, ping_interval=None) as ws:
        client = TwilioClient(ws)
        if not start:
            # The gateway opens the model session only once a valid start arrives.
            await asyncio.sleep(0.2)
            assert len(sessions) == before, "a model session was opened before start"
            yield client, None
        else:
            await client.start()
            await eventually(lambda: len(sessions) > before, what="the gateway opening a model session")
            yield client, sessions[before]
    # The gateway has finished the call (and logged its last summary of drops) before the test looks at the logs.
    await eventually(lambda: len(gateway.state.active_calls) <= calls_before)


async def assert_audio_reaches_model(client: TwilioClient, session: Any, frames: int = 3) -> int:
    """Send ``frames`` valid media frames; they must reach the model. Returns the samples they added."""
    before = appended_samples(session)
    await client.media(frames)
    want = before + frames * SAMPLES_PER_FRAME
    await eventually(lambda: appended_samples(session) >= want, what="valid media after bad input at the model")
    assert client.open
    return appended_samples(session) - before


async def settle(client: TwilioClient, session: Any) -> None:
    """Everything sent so far has been read by the gateway: one valid frame round-trips to the model."""
    await assert_audio_reaches_model(client, session, frames=1)


def drops_logged(caplog: pytest.LogCaptureFixture, reason: str) -> int:
    """How many drops for ``reason`` the gateway's summarised drop log reports: its first line names one drop,
    each later summary line says ``reason xN``."""
    total = 0
    for message in logged(caplog, "dropped", reason):
        counted = re.search(re.escape(reason) + r"[^,:]*? x(\d+)", message)
        total += int(counted.group(1)) if counted else 1
    return total


def logged(caplog: pytest.LogCaptureFixture, *needles: str) -> list[str]:
    """Gateway warnings containing every needle."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("gateway") and r.levelno >= logging.WARNING and all(n in r.getMessage() for n in needles)
    ]


def assert_nothing_crashed(caplog: pytest.LogCaptureFixture, allowed: tuple[str, ...] = ()) -> None:
    """No error was logged: no reader failed, no ASGI exception, no observer failure."""
    errors = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR and not any(a in r.getMessage() for a in allowed)
    ]
    assert not errors, errors


def dropped_reasons(gateway: GatewayUnderTest) -> list[str]:
    return [event.reason for event in gateway.of_type(Dropped)]


@pytest.fixture(autouse=True)
def _capture_warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)


# ---------------------------------------------------------------------- frames the parser refuses


NOT_JSON = "hello, this is not JSON {"
DEEP_ARRAY = "[" * 60_000  # under MAX_FRAME_BYTES, far over the JSON decoder's recursion limit
DEEP_OBJECT = '{"a":' * 12_000


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        pytest.param(NOT_JSON, "frame is not JSON", id="non-json-text"),
        pytest.param('["event", "media"]', "frame is not a JSON object", id="json-array"),
        pytest.param(b'{"event":"connected"}', "binary frame", id="binary-frame"),
        pytest.param(b"\x00\xff\xfe garbage", "binary frame", id="binary-garbage"),
        pytest.param({"event": "transcription", "streamSid": "MZ0"}, "unknown_event 'transcription'", id="unknown-event"),
        pytest.param({"streamSid": "MZ0"}, "unknown_event 'None'", id="no-event"),
        pytest.param(DEEP_ARRAY, "frame is not JSON", id="deeply-nested-array"),
        pytest.param(DEEP_OBJECT, "frame is not JSON", id="deeply-nested-object"),
    ],
)
async def test_unparseable_frame_is_dropped_and_call_goes_on(
    gateway: GatewayUnderTest, caplog: pytest.LogCaptureFixture, frame: Any, reason: str
) -> None:
    async with twilio_call(gateway) as (client, session):
        await client.send(frame)
        await assert_audio_reaches_model(client, session)
        assert logged(caplog, reason), f"no log line saying {reason!r}"
        assert len(gateway.state.active_calls) == 1
    assert_nothing_crashed(caplog)


async def test_deeply_nested_json_inside_a_valid_event_is_dropped(
    gateway: GatewayUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    async with twilio_call(gateway) as (client, session):
        depth = 900  # parses, but is no payload
        nested = "[" * depth + "]" * depth
        await client.send(
            f'{{"event":"media","streamSid":"{client.stream_sid}","media":{{"timestamp":"0","payload":{nested}}}}}'
        )
        await client.send(
            f'{{"event":"mark","streamSid":"{client.stream_sid}","mark":{{"name":{nested}}}}}'
        )
        await assert_audio_reaches_model(client, session)
    assert logged(caplog, "media.payload must be a string")
    assert logged(caplog, "mark.name must be a non-empty string")
    assert_nothing_crashed(caplog)


async def test_bad_base64_payload_is_dropped(gateway: GatewayUnderTest, caplog: pytest.LogCaptureFixture) -> None:
    async with twilio_call(gateway) as (client, session):
        await settle(client, session)
        before = appended_samples(session)
        payloads = ("!!!not base64!!!", "a", "AAA", "AA=A", "A A=", "=" * 8, "\u00ff\u00fe")
        for payload in payloads:
            # The timestamp does not advance: a dropped frame is no lost packet (that would be filled with silence).
            frame = media_frame(client.stream_sid, client.timestamp_ms)
            frame["media"]["payload"] = payload
            await client.send(frame)
        added = await assert_audio_reaches_model(client, session, frames=1)
        assert added == SAMPLES_PER_FRAME and appended_samples(session) == before + added, "a bad payload was appended"
    # Counted, every one; logged as a summary (the first at once, then one line per interval), not one line per frame.
    assert drops_logged(caplog, "media.payload is not valid base64") == len(payloads)
    assert len(logged(caplog, "media.payload is not valid base64")) <= 2
    assert_nothing_crashed(caplog)


async def test_bad_media_fields_are_dropped(gateway: GatewayUnderTest, caplog: pytest.LogCaptureFixture) -> None:
    """Fields a parser may trip on: a non-string payload, odd timestamps (JSON's Infinity and NaN included)."""
    async with twilio_call(gateway) as (client, session):
        sid = client.stream_sid
        payload = base64.b64encode(SILENCE_FRAME).decode()
        bad = [
            f'{{"event":"media","streamSid":"{sid}","media":{{"timestamp":"0","payload":12}}}}',
            f'{{"event":"media","streamSid":"{sid}","media":"not an object"}}',
            f'{{"event":"media","streamSid":"{sid}","media":{{"timestamp":"-20","payload":"{payload}"}}}}',
            f'{{"event":"media","streamSid":"{sid}","media":{{"timestamp":"soon","payload":"{payload}"}}}}',
            f'{{"event":"media","streamSid":"{sid}","media":{{"timestamp":NaN,"payload":"{payload}"}}}}',
            f'{{"event":"media","streamSid":"{sid}","media":{{"timestamp":Infinity,"payload":"{payload}"}}}}',
            f'{{"event":"media","streamSid":"{sid}","media":{{"timestamp":"{"9" * 5000}","payload":"{payload}"}}}}',
            f'{{"event":"media","streamSid":{{"x":1}},"media":{{"timestamp":"0","payload":"{payload}"}}}}',
        ]
        for frame in bad:
            await client.send(frame)
        await assert_audio_reaches_model(client, session)
        assert len(gateway.state.active_calls) == 1
    assert logged(caplog, "media.payload must be a string")
    assert logged(caplog, "media must be an object")
    assert logged(caplog, "media.timestamp must not be negative")
    assert drops_logged(caplog, "media.timestamp must be a whole number") >= 2
    assert not logged(caplog, "twilio reader failed")
    # Infinity overflows int(): gateway/twilio/media.py raises OverflowError, which the shell logs as a parser
    # failure and drops (it used to end the call).
    assert_nothing_crashed(caplog, allowed=("the parser failed",))


# ---------------------------------------------------------------------- frames the call core refuses


async def test_media_before_start_is_dropped(gateway: GatewayUnderTest, caplog: pytest.LogCaptureFixture) -> None:
    sessions = gateway.local_server.sessions
    before = len(sessions)
    async with twilio_call(gateway, start=False) as (client, _):
        await client.media(5)
        await client.send({"event": "mark", "streamSid": client.stream_sid, "mark": {"name": "g0:20:item_x"}})
        await client.start()
        await eventually(lambda: len(sessions) > before)
        session = sessions[before]
        added = await assert_audio_reaches_model(client, session, frames=2)
        assert added == 2 * SAMPLES_PER_FRAME, "media sent before start reached the model"
    assert dropped_reasons(gateway).count("media before start") == 5
    assert drops_logged(caplog, "media before start") == 5
    assert_nothing_crashed(caplog)


async def test_foreign_stream_sid_media_and_mark_are_dropped(
    gateway: GatewayUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    async with twilio_call(gateway) as (client, session):
        await settle(client, session)
        before = appended_samples(session)
        foreign = "MZ" + secrets.token_hex(16)
        for timestamp in range(0, 200, 20):
            await client.send(media_frame(foreign, 1000 + timestamp, b"\x10" * FRAME_BYTES))
        await client.send({"event": "mark", "streamSid": foreign, "mark": {"name": "g0:100:item_x"}})
        await client.send({"event": "dtmf", "streamSid": foreign, "dtmf": {"track": "inbound_track", "digit": "5"}})
        added = await assert_audio_reaches_model(client, session, frames=1)
        assert added == SAMPLES_PER_FRAME and appended_samples(session) == before + added, "foreign media was appended"
    reasons = dropped_reasons(gateway)
    assert reasons.count("media for a foreign streamSid") == 10
    assert "mark for a foreign streamSid" in reasons
    assert "dtmf for a foreign streamSid" in reasons
    assert drops_logged(caplog, "media for a foreign streamSid") == 10
    assert_nothing_crashed(caplog)


async def test_mark_name_the_gateway_never_sent(gateway: GatewayUnderTest, caplog: pytest.LogCaptureFixture) -> None:
    async with twilio_call(gateway) as (client, session):
        for name in ("hello", "g:1:", "gX:10:item", "g0:ten:item_1", "g0:10:", "x" * 256):
            await client.send({"event": "mark", "streamSid": client.stream_sid, "mark": {"name": name}})
        # Well formed, but never sent: nothing is pending, so nothing may change.
        for name in ("m0", "m100", "m99999"):
            await client.send({"event": "mark", "streamSid": client.stream_sid, "mark": {"name": name}})
        await client.send({"event": "mark", "streamSid": client.stream_sid, "mark": {"name": "x" * 300}})
        await assert_audio_reaches_model(client, session)
        assert len(gateway.state.active_calls) == 1
    assert dropped_reasons(gateway).count("mark with a name we never sent") == 6
    assert drops_logged(caplog, "mark with a name we never sent") == 6
    assert logged(caplog, "mark.name must be a non-empty string")  # over 256 characters
    assert_nothing_crashed(caplog)


async def test_stop_for_a_foreign_stream_sid_does_not_end_the_call(
    gateway: GatewayUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    async with twilio_call(gateway) as (client, session):
        await client.send({"event": "stop", "streamSid": "MZ" + secrets.token_hex(16), "stop": {}})
        await client.send({"event": "start", "start": {"streamSid": "MZ" + secrets.token_hex(16),
                                                       "callSid": "CA" + secrets.token_hex(16)}})
        await assert_audio_reaches_model(client, session)
        assert len(gateway.state.active_calls) == 1
        # The call's own stop still ends it: the gateway closes the socket.
        await client.send({"event": "stop", "streamSid": client.stream_sid, "stop": {}})
        await eventually(lambda: not gateway.state.active_calls)
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await asyncio.wait_for(client.ws.recv(), 3)
    reasons = dropped_reasons(gateway)
    assert "stop for a foreign streamSid" in reasons
    assert "second start on one stream" in reasons
    assert drops_logged(caplog, "stop for a foreign streamSid") == 1
    assert_nothing_crashed(caplog)


# ---------------------------------------------------------------------- oversized frames


async def test_frame_over_max_frame_bytes_is_dropped_and_socket_stays_open(
    gateway: GatewayUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    async with twilio_call(gateway) as (client, session):
        await settle(client, session)
        before = appended_samples(session)
        # A valid media frame, just too big: 6.5 s of audio that must not reach the model.
        frame = json.dumps(media_frame(client.stream_sid, client.timestamp_ms, b"\x10" * 52_000))
        assert MAX_FRAME_BYTES < len(frame) < ONE_MIB
        await client.send(frame)
        await client.send("x" * (MAX_FRAME_BYTES + 1))
        added = await assert_audio_reaches_model(client, session, frames=1)
        assert appended_samples(session) == before + added and added < 2 * SAMPLES_PER_FRAME, "the oversized frame was parsed"
    assert drops_logged(caplog, f"frame over MAX_FRAME_BYTES ({MAX_FRAME_BYTES})") == 2
    assert_nothing_crashed(caplog)


async def test_frame_over_one_mib_closes_1009_and_other_calls_go_on(
    gateway: GatewayUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    async with twilio_call(gateway) as (other, other_session):
        async with twilio_call(gateway) as (client, session):
            await settle(client, session)
            assert len(gateway.state.active_calls) == 2
            await client.send("x" * (ONE_MIB + 1))
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                await asyncio.wait_for(client.ws.recv(), 3)
            assert client.ws.close_code == MESSAGE_TOO_BIG
        # The oversized call is over and cleaned up; the other goes on.
        await eventually(lambda: len(gateway.state.active_calls) == 1)
        await assert_audio_reaches_model(other, other_session)
        # The process still takes new calls and answers health checks.
        async with twilio_call(gateway) as (third, third_session):
            await assert_audio_reaches_model(third, third_session)
        async with httpx.AsyncClient() as http:
            health = await http.get(gateway.http_url + "/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
    assert_nothing_crashed(caplog)


# ---------------------------------------------------------------------- a broken model


def _pcm_tone(ms: int) -> bytes:
    n = ms * 24
    return (8000 * np.sin(2 * np.pi * 440 * np.arange(n) / 24000)).astype("<i2").tobytes()


MODEL_GARBAGE: list[str | bytes] = [
    "this is not JSON",
    b"\x80\x81\x82 not UTF-8",
    "[" * 100_000,
    '["an", "array"]',
    '{"no_type": true}',
    '{"type": 42}',
    '{"type": "response.made_up_event", "event_id": "evt_1"}',
    '{"type": "response.output_audio.delta", "response_id": "resp_1", "item_id": "item_1", "delta": "!!not base64!!"}',
    '{"type": "response.output_audio.delta", "response_id": "resp_1", "item_id": "item_1", "delta": 7}',
    '{"type": "response.output_audio.delta", "delta": "AAAA"}',
    '{"type": "input_audio_buffer.speech_started", "audio_start_ms": "soon", "item_id": "item_0"}',
    '{"type": "response.created", "response": "not an object"}',
    '{"type": "response.done", "response": {"id": 5}}',
    '{"type": "error", "error": "not an object"}',
]


@contextlib.asynccontextmanager
async def broken_model() -> AsyncIterator[tuple[str, list[str], list[int | None]]]:
    """A Realtime "model" on 127.0.0.1: once caller audio arrives it sends garbage, then one valid delta.

    Yields its URL, the types of the client events it received and the close code of each connection.
    """
    received: list[str] = []
    close_codes: list[int | None] = []
    valid_delta = {
        "type": "response.output_audio.delta",
        "event_id": "event_1",
        "response_id": "resp_1",
        "item_id": "item_1",
        "output_index": 0,
        "content_index": 0,
        "delta": base64.b64encode(_pcm_tone(60)).decode(),
    }

    async def handler(ws: ServerConnection) -> None:
        answered = False
        await ws.send(json.dumps({"type": "session.created", "event_id": "event_0", "session": {}}))
        try:
            async for message in ws:
                event = json.loads(message)
                received.append(event["type"])
                if event["type"] == "input_audio_buffer.append" and not answered:
                    answered = True
                    for garbage in MODEL_GARBAGE:
                        await ws.send(garbage)
                    await ws.send(json.dumps(valid_delta))
        finally:
            close_codes.append(ws.close_code)

    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/realtime", received, close_codes


async def test_garbage_from_the_model_is_dropped_and_a_valid_delta_still_plays(caplog: pytest.LogCaptureFixture) -> None:
    async with broken_model() as (url, received, close_codes), start_gateway(
        api_key="test-key", realtime_url=url, insecure_dev_mode=True) as gw:
        async with connect(gw.ws_url, compression=None, max_size=None, ping_interval=None) as ws:
            client = TwilioClient(ws)
            await client.start()
            await client.media(3)
            heard: list[dict] = []
            async with asyncio.timeout(5):
                while not any(m["event"] == "mark" for m in heard):
                    heard.append(json.loads(await ws.recv()))
            media = [m for m in heard if m["event"] == "media"]
            assert media, heard
            assert all(m["streamSid"] == client.stream_sid for m in heard)
            assert len(base64.b64decode(media[0]["media"]["payload"])) == 60 * 8  # 60 ms of mu-law
            # The call is still up: more caller audio still goes to the model.
            appends = received.count("input_audio_buffer.append")
            await client.media(2)
            await eventually(lambda: received.count("input_audio_buffer.append") >= appends + 2)
            assert len(gw.state.active_calls) == 1
        # The caller hung up: the gateway ends the model session with a normal close, not 1011.
        await eventually(lambda: bool(close_codes))
    assert close_codes == [1000]
    assert received[0] == "session.update"
    assert logged(caplog, "events from the model", "frame is not JSON")
    assert logged(caplog, "events from the model", "frame is not an event object")
    assert logged(caplog, "events from the model", "unknown_event", "'response.made_up_event'")
    assert logged(caplog, "events from the model", "delta is not base64")
    reasons = {reason for r in caplog.records if "events from the model" in r.getMessage()
               for reason in re.findall(r"(?:: |, )([^,]+?) x\d+", r.getMessage())}
    total = sum(int(n) for r in caplog.records if "events from the model" in r.getMessage()
                for n in re.findall(r" x(\d+)", r.getMessage())) + 1  # the first drop is logged on its own
    assert total == len(MODEL_GARBAGE) and reasons
    assert len(logged(caplog, "events from the model")) <= 3  # summarised, not one line per event
    assert_nothing_crashed(caplog)


# ---------------------------------------------------------------------- a good call beside a hostile one


def garbage_frames(stream_sid: str) -> list[str | bytes]:
    """One of every kind of bad Twilio frame (the 1 MiB one is sent on its own connection)."""
    foreign = "MZ" + secrets.token_hex(16)
    return [
        NOT_JSON,
        '["not", "an", "object"]',
        b"\x00\x01\x02 binary",
        b'{"event":"media"}',
        json.dumps({"event": "bogus", "streamSid": stream_sid}),
        json.dumps(media_frame(foreign, 0)),
        json.dumps({"event": "mark", "streamSid": foreign, "mark": {"name": "g0:100:item_x"}}),
        json.dumps({**media_frame(stream_sid, 0), "media": {"timestamp": "0", "payload": "!!bad base64!!"}}),
        json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": "never-sent"}}),
        json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": "g0:100000:item_forged"}}),
        json.dumps({"event": "stop", "streamSid": foreign}),
        json.dumps({"event": "dtmf", "streamSid": stream_sid, "dtmf": {"digit": "not a digit"}}),
        f'{{"event":"media","streamSid":"{stream_sid}","media":{{"timestamp":Infinity,"payload":""}}}}',
        "x" * (MAX_FRAME_BYTES + 100),
        DEEP_ARRAY,
        DEEP_OBJECT,
    ]


async def test_good_call_is_unaffected_by_a_concurrent_garbage_spray(
    gateway: GatewayUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    stop = asyncio.Event()
    sprayed = 0

    async def spray() -> None:
        nonlocal sprayed
        async with connect(gateway.ws_url, compression=None, max_size=None, ping_interval=None) as ws:
            bad = TwilioClient(ws)
            await bad.send(json.dumps(media_frame(bad.stream_sid, 0)))  # media before start
            await bad.start()
            while not stop.is_set():
                for frame in garbage_frames(bad.stream_sid):
                    await bad.send(frame)
                    sprayed += 1
                await bad.media(1)
                await asyncio.sleep(0.02)
            assert bad.open

    async def oversized() -> int | None:
        async with connect(gateway.ws_url, compression=None, max_size=None, ping_interval=None) as ws:
            await TwilioClient(ws).start()
            await asyncio.sleep(0.5)  # mid-call for the good caller
            await ws.send("x" * (ONE_MIB + 1))
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 3)
            return ws.close_code

    sprayer = asyncio.create_task(spray())
    big = asyncio.create_task(oversized())
    try:
        report = await run_call(
            gateway.ws_url,
            [CallerTurn(load_sample("caller_hello"), after_silence_ms=100, name="hello")],
            timeout_s=15,
            hangup_after_ms=200,
        )
    finally:
        stop.set()
    await sprayer
    assert await big == MESSAGE_TOO_BIG

    assert report.violations == []
    assert report.ended_by == "hangup"
    assert len(report.turns) == 1 and report.turns[0].completed
    assert report.turns[0].response_ms is not None, "the good caller never heard an answer"
    assert report.media_received > 0 and report.agent_audio_played_ms > 0
    assert sprayed >= len(garbage_frames("MZ"))
    # The hostile connection's drops were logged; nothing crashed.
    await eventually(lambda: not gateway.state.active_calls)
    assert drops_logged(caplog, "frame is not JSON") >= sprayed // len(garbage_frames("MZ"))
    assert logged(caplog, "binary frame")
    assert logged(caplog, "foreign streamSid")
    assert logged(caplog, "frame over MAX_FRAME_BYTES")
    # Summarised: a few lines for thousands of frames, never one line per frame.
    assert len(logged(caplog, "dropped")) < sprayed / 10
    assert_nothing_crashed(caplog, allowed=("the parser failed",))
    await eventually(lambda: not gateway.state.active_calls)
