"""The embedded Realtime server, over real sockets on 127.0.0.1: what a gateway can observe of it.

Every test talks GA protocol through a ``websockets`` client, with no mocks; the schema test checks
every event of a full conversation against the official ``openai`` pydantic models.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from typing import Any

import numpy as np
import pydantic
import pytest
import webrtcvad
from openai.types.realtime import RealtimeServerEvent
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.audio.convert import Upsampler, mulaw_decode, mulaw_encode
from gateway.local import LocalRealtimeServer, RealtimeSession
from gateway.local.agents import GREETING_TRANSCRIPT, CallerTurn, FunctionCall, Reply, load_greeting, speech_like
from gateway.local.schema import EventSchemaError, validate_server_event

from gateway.audio.wavio import load_sample
FORMATS = {"pcm16": {"type": "audio/pcm", "rate": 24000}, "pcmu": {"type": "audio/pcmu"}}
BYTES_PER_MS = {"pcm16": 48, "pcmu": 8}
TIMEOUT = 5.0
SERVER_EVENTS = pydantic.TypeAdapter(RealtimeServerEvent)


def silence(ms: int) -> np.ndarray:
    return np.zeros(ms * 8, dtype=np.int16)


def utterance(lead_ms: int, speech_ms: int, trail_ms: int) -> np.ndarray:
    return np.concatenate([silence(lead_ms), speech_like(speech_ms), silence(trail_ms)])


class Client:
    """A GA Realtime client that records every server event it reads."""

    def __init__(self, ws: ClientConnection, audio_format: str = "pcm16") -> None:
        self.ws = ws
        self.format = audio_format
        self.events: list[dict[str, Any]] = []
        self._upsampler = Upsampler()

    async def send(self, **event: Any) -> None:
        await self.ws.send(json.dumps(event))

    async def recv(self) -> dict[str, Any]:
        event = json.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT))
        self.events.append(event)
        return event

    async def until(self, kind: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Read up to the next event of type ``kind``; returns it and everything read before it."""
        seen = []
        while True:
            event = await self.recv()
            if event["type"] == kind:
                return event, seen
            seen.append(event)

    async def configure(self, audio_format: str, **session: Any) -> dict[str, Any]:
        self.format = audio_format
        audio = {"input": {"format": FORMATS[audio_format]}, "output": {"format": FORMATS[audio_format]}}
        for key, value in session.pop("audio_input", {}).items():
            audio["input"][key] = value
        await self.send(type="session.update", session={"type": "realtime", "audio": audio, **session})
        event, _ = await self.until("session.updated")
        return event

    async def append(self, samples: np.ndarray) -> None:
        """8 kHz int16 audio, sent as 20 ms appends in the session's input format."""
        for start in range(0, len(samples), 160):
            frame = samples[start : start + 160]
            if self.format == "pcmu":
                payload = mulaw_encode(frame)
            else:
                payload = self._upsampler.process(frame).astype("<i2").tobytes()
            await self.send(type="input_audio_buffer.append", audio=base64.b64encode(payload).decode())

    async def response(self) -> tuple[dict[str, Any], float, list[dict[str, Any]]]:
        """Read to the next response.done: (its response, ms of audio received, events before it)."""
        done, seen = await self.until("response.done")
        received = sum(len(base64.b64decode(e["delta"])) for e in seen if e["type"] == "response.output_audio.delta")
        return done["response"], received / BYTES_PER_MS[self.format], seen


@pytest.fixture
async def server():
    async with LocalRealtimeServer(speed=50.0, validate_events=True) as srv:
        yield srv
        assert srv.validation_failures == []


async def open_client(srv: LocalRealtimeServer, **kwargs: Any) -> tuple[ClientConnection, Client]:
    ws = await connect(srv.url + "?model=gpt-realtime", compression=None, **kwargs)
    client = Client(ws)
    created = await client.recv()
    assert created["type"] == "session.created"
    return ws, client


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


# ------------------------------------------------------------------ handshake and session


async def test_session_created_and_update_round_trip(server):
    ws, client = await open_client(server, additional_headers={"Authorization": "Bearer sk-test"})
    async with ws:
        created = client.events[0]["session"]
        assert created["type"] == "realtime" and created["object"] == "realtime.session"
        assert created["model"] == "gpt-realtime"
        assert created["audio"]["input"]["turn_detection"]["type"] == "server_vad"
        for audio_format in ("pcmu", "pcm16"):
            session = (
                await client.configure(
                    audio_format,
                    instructions="Be brief.",
                    audio_input={
                        "turn_detection": {"type": "server_vad", "threshold": 0.7, "prefix_padding_ms": 200, "silence_duration_ms": 400}
                    },
                )
            )["session"]
            assert session["audio"]["input"]["format"] == FORMATS[audio_format]
            assert session["audio"]["output"]["format"] == FORMATS[audio_format]
            assert session["instructions"] == "Be brief."
            td = session["audio"]["input"]["turn_detection"]
            assert (td["threshold"], td["prefix_padding_ms"], td["silence_duration_ms"]) == (0.7, 200, 400)
            assert td["create_response"] is True and td["interrupt_response"] is True
        session = (await client.configure("pcm16", audio_input={"turn_detection": None}))["session"]
        assert session["audio"]["input"]["turn_detection"] is None
        assert session["instructions"] == "Be brief."  # a partial update keeps the rest


async def test_beta_header_is_refused_with_4000(server):
    async with connect(server.url, additional_headers={"OpenAI-Beta": "realtime=v1"}) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert closed.value.rcvd.code == 4000
    assert closed.value.rcvd.reason == "beta_api_shape_disabled"
    assert len(server.sessions) == 0


async def test_azure_path_and_api_key_header_accepted_unknown_path_refused(server):
    base = server.url.removesuffix("/v1/realtime")
    async with connect(base + "/openai/v1/realtime?model=my-deployment", additional_headers={"api-key": "k"}) as ws:
        created = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert created["type"] == "session.created" and created["session"]["model"] == "my-deployment"
    with pytest.raises(InvalidStatus):
        async with connect(base + "/v2/other"):
            pass


# ------------------------------------------------------------------ voice activity and the echo agent


def test_synthetic_voice_is_speech_for_webrtcvad():
    voice = speech_like(1000)
    for aggressiveness in range(4):
        vad = webrtcvad.Vad(aggressiveness)
        voiced = [vad.is_speech(voice[i : i + 160].tobytes(), 8000) for i in range(0, len(voice), 160)]
        assert sum(voiced) / len(voiced) > 0.9


@pytest.mark.parametrize("audio_format", ["pcm16", "pcmu"])
async def test_speech_is_detected_committed_and_echoed(server, audio_format):
    ws, client = await open_client(server)
    async with ws:
        await client.configure(audio_format)  # defaults: prefix 300 ms, silence 500 ms
        await client.append(utterance(500, 1200, 1000))
        started, _ = await client.until("input_audio_buffer.speech_started")
        stopped, _ = await client.until("input_audio_buffer.speech_stopped")
        committed, _ = await client.until("input_audio_buffer.committed")
        assert started["item_id"] == stopped["item_id"] == committed["item_id"]
        assert abs(started["audio_start_ms"] - (500 - 300)) <= 40
        assert abs(stopped["audio_end_ms"] - (1700 + 500)) <= 60
        added, _ = await client.until("conversation.item.added")
        assert added["item"]["id"] == committed["item_id"]
        assert added["item"]["role"] == "user" and added["item"]["content"][0]["type"] == "input_audio"
        response, audio_ms, seen = await client.response()
        assert response["status"] == "completed"
        # The echo says the speech back without the padding and trailing silence the item holds.
        assert abs(audio_ms - 1200) <= 40
        assert "response.created" in types(seen) and "response.output_audio.done" in types(seen)
        assert types(seen).index("response.output_audio.delta") < types(seen).index("response.output_audio.done")


async def test_real_speech_sample_is_one_turn(server):
    speech = mulaw_decode(load_sample("caller_hello"))
    ws, client = await open_client(server)
    async with ws:
        await client.configure("pcmu")
        await client.append(np.concatenate([silence(400), speech, silence(1000)]))
        response, audio_ms, seen = await client.response()
        assert types(seen).count("input_audio_buffer.speech_started") == 1
        assert audio_ms >= len(speech) / 8 - 100


async def test_agent_speaks_first_with_the_greeting(server):
    ws, client = await open_client(server)
    async with ws:
        await client.configure("pcmu")
        await client.send(type="response.create")
        response, audio_ms, seen = await client.response()
        assert response["status"] == "completed"
        assert abs(audio_ms - len(load_greeting()) / 8) <= 100  # whole chunks of 100 ms
        transcript = next(e for e in seen if e["type"] == "response.output_audio_transcript.done")["transcript"]
        assert transcript == GREETING_TRANSCRIPT == response["output"][0]["content"][0]["transcript"]


# ------------------------------------------------------------------ cancellation and barge-in


async def test_response_cancel_and_the_errors_around_it():
    async with LocalRealtimeServer(speed=2.0) as srv:
        ws, client = await open_client(srv)
        async with ws:
            await client.configure("pcmu")
            await client.send(type="response.cancel", event_id="evt_c1")
            error, _ = await client.until("error")
            assert error["error"]["code"] == "response_cancel_not_active" and error["error"]["event_id"] == "evt_c1"
            await client.send(type="response.create")
            created, _ = await client.until("response.created")
            await client.until("response.output_audio.delta")
            await client.send(type="response.create", event_id="evt_c2")
            error, _ = await client.until("error")
            assert error["error"]["code"] == "conversation_already_has_active_response"
            await client.send(type="response.cancel", response_id=created["response"]["id"])
            response, audio_ms, seen = await client.response()
            assert response["status"] == "cancelled"
            assert response["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
            assert response["output"][0]["status"] == "incomplete"
            assert "response.output_audio.done" in types(seen) and "response.output_item.done" in types(seen)
            sent_ms = audio_ms + 100  # the first delta was read by until()
            assert sent_ms < len(load_greeting()) / 8 / 2
            # The item holds what was sent: one ms more cannot be truncated.
            item_id = response["output"][0]["id"]
            await client.send(type="conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=int(sent_ms) + 1)
            error, _ = await client.until("error")
            assert error["error"]["message"] == f"Audio content of {int(sent_ms)}ms is already shorter than {int(sent_ms) + 1}ms"
            await asyncio.sleep(0.2)
            assert not any(e["type"] == "response.output_audio.delta" for e in await drain(client))


async def drain(client: Client, wait: float = 0.05) -> list[dict[str, Any]]:
    events = []
    while True:
        try:
            events.append(json.loads(await asyncio.wait_for(client.ws.recv(), wait)))
        except TimeoutError:
            return events


@pytest.mark.parametrize("interrupt", [True, False])
async def test_speech_during_a_response_interrupts_it_when_configured(interrupt):
    async with LocalRealtimeServer(speed=8.0) as srv:
        ws, client = await open_client(srv)
        async with ws:
            await client.configure("pcmu", audio_input={"turn_detection": {"type": "server_vad", "interrupt_response": interrupt}})
            await client.send(type="response.create")
            await client.until("response.output_audio.delta")
            await client.append(utterance(100, 600, 0))
            _, before = await client.until("input_audio_buffer.speech_started")
            assert "response.done" not in types(before)
            if interrupt:
                response, _, _ = await client.response()
                assert response["status"] == "cancelled"
                assert response["status_details"]["reason"] == "turn_detected"
            else:
                assert srv.sessions[0].active_response_id is not None
                response, _, _ = await client.response()  # the greeting plays on to its end
                assert response["status"] == "completed"


# ------------------------------------------------------------------ truncation and usage


async def test_truncate_valid_too_long_unknown_and_user_item(server):
    ws, client = await open_client(server)
    async with ws:
        await client.configure("pcm16")
        await client.send(type="response.create")
        response, audio_ms, _ = await client.response()
        item_id = response["output"][0]["id"]
        await client.send(type="conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=1500)
        truncated, _ = await client.until("conversation.item.truncated")
        assert (truncated["item_id"], truncated["content_index"], truncated["audio_end_ms"]) == (item_id, 0, 1500)
        session = server.sessions[-1]
        assert session.truncations == [(item_id, 1500, int(audio_ms))]
        await client.send(type="conversation.item.truncate", event_id="evt_t2", item_id=item_id, content_index=0, audio_end_ms=2000)
        error, _ = await client.until("error")
        assert error["error"]["type"] == "invalid_request_error" and error["error"]["event_id"] == "evt_t2"
        assert error["error"]["message"] == "Audio content of 1500ms is already shorter than 2000ms"
        await client.send(type="conversation.item.truncate", item_id="item_nope", content_index=0, audio_end_ms=0)
        error, _ = await client.until("error")
        assert "item_nope" in error["error"]["message"]
        await client.send(type="conversation.item.create", item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]})
        added, _ = await client.until("conversation.item.added")
        await client.send(type="conversation.item.truncate", item_id=added["item"]["id"], content_index=0, audio_end_ms=0)
        error, _ = await client.until("error")
        assert error["error"]["type"] == "invalid_request_error"
        assert len(session.truncations) == 1 and len(session.errors) == 3


async def test_usage_follows_the_billing_rule(server):
    """1 token per 100 ms of user audio, per 50 ms of assistant audio, the whole conversation as input."""
    instructions = "Repeat after the caller."  # 24 characters: 6 text tokens at 4 characters a token
    ws, client = await open_client(server)
    async with ws:
        await client.configure("pcmu", instructions=instructions)
        await client.append(utterance(400, 1000, 800))
        stopped, _ = await client.until("input_audio_buffer.speech_stopped")
        response, audio_ms, seen = await client.response()
        started = next(e for e in client.events if e["type"] == "input_audio_buffer.speech_started")
        user_ms = stopped["audio_end_ms"] - started["audio_start_ms"]
        transcript = response["output"][0]["content"][0]["transcript"]
        text_in = math.ceil(len(instructions) / 4)
        usage = response["usage"]
        assert usage["input_token_details"]["text_tokens"] == text_in
        assert usage["input_token_details"]["audio_tokens"] == math.ceil(user_ms / 100)
        assert usage["output_token_details"]["audio_tokens"] == math.ceil(audio_ms / 50)
        assert usage["output_token_details"]["text_tokens"] == math.ceil(len(transcript) / 4)
        assert usage["input_tokens"] == text_in + math.ceil(user_ms / 100)
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
        assert usage["input_token_details"]["cached_tokens"] == 0
        # Truncate what the caller did not hear; the next response bills the conversation again.
        item_id = response["output"][0]["id"]
        await client.send(type="conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=700)
        await client.until("conversation.item.truncated")
        await client.send(type="conversation.item.create", item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "And again"}]})
        await client.send(type="response.create")
        second, second_ms, _ = await client.response()
        usage = second["usage"]
        assert usage["input_token_details"]["text_tokens"] == text_in + math.ceil(len("And again") / 4)
        assert usage["input_token_details"]["audio_tokens"] == math.ceil(user_ms / 100) + math.ceil(700 / 50)
        assert usage["output_token_details"]["audio_tokens"] == math.ceil(second_ms / 50)


# ------------------------------------------------------------------ manual turns, items, bad input


async def test_manual_commit_clear_items_and_response_instructions(server):
    ws, client = await open_client(server)
    async with ws:
        await client.configure("pcm16", audio_input={"turn_detection": None})
        await client.append(speech_like(60))
        await client.send(type="input_audio_buffer.commit", event_id="evt_m1")
        error, _ = await client.until("error")
        assert error["error"]["code"] == "input_audio_buffer_commit_empty" and error["error"]["event_id"] == "evt_m1"
        await client.append(speech_like(800))
        await client.send(type="input_audio_buffer.commit")
        committed, seen = await client.until("input_audio_buffer.committed")
        assert "input_audio_buffer.speech_started" not in types(seen)
        await client.until("conversation.item.done")
        await client.append(speech_like(300))
        await client.send(type="input_audio_buffer.clear")
        await client.until("input_audio_buffer.cleared")
        await client.send(type="input_audio_buffer.commit")
        error, _ = await client.until("error")
        assert error["error"]["code"] == "input_audio_buffer_commit_empty"
        await client.send(
            type="conversation.item.create",
            item={"type": "function_call_output", "call_id": "call_1", "output": '{"ok": true}'},
        )
        added, _ = await client.until("conversation.item.added")
        assert added["previous_item_id"] == committed["item_id"] and added["item"]["type"] == "function_call_output"
        await client.until("conversation.item.done")
        await client.send(type="response.create", response={"instructions": "Say it once more."})
        response, audio_ms, _ = await client.response()
        assert response["status"] == "completed" and abs(audio_ms - 800) <= 100  # echoes the last caller audio
        session = server.sessions[-1]
        assert [item.wire["type"] for item in session.items] == ["message", "function_call_output", "message"]


async def test_bad_input_gets_error_events_and_the_session_goes_on(server):
    ws, client = await open_client(server)
    async with ws:
        bad: list[tuple[str | bytes, str | None]] = [
            ("not json", None),
            (b"\x00\x01binary", None),
            ("[1, 2]", None),
            (json.dumps({"event_id": "evt_b1"}), "evt_b1"),
            (json.dumps({"type": "no.such.event", "event_id": "evt_b2"}), "evt_b2"),
            (json.dumps({"type": "conversation.item.truncate", "event_id": "evt_b3", "content_index": 0}), "evt_b3"),
            (json.dumps({"type": "input_audio_buffer.append", "event_id": "evt_b4", "audio": "%%%not base64"}), "evt_b4"),
            (json.dumps({"type": "input_audio_buffer.append", "event_id": "evt_b5"}), "evt_b5"),
            (json.dumps({"type": "session.update", "event_id": "evt_b6", "session": {"instructions": "x"}}), "evt_b6"),
            (json.dumps({"type": "session.update", "event_id": "evt_b7", "session": {"type": "realtime", "audio": {"input": {"format": {"type": "audio/wav"}}}}}), "evt_b7"),
            (json.dumps({"type": "conversation.item.create", "event_id": "evt_b8", "item": {"type": "message", "role": "robot", "content": []}}), "evt_b8"),
            (json.dumps({"type": "response.create", "event_id": "evt_b9", "response": "now"}), "evt_b9"),
        ]
        for message, event_id in bad:
            await client.ws.send(message)
            error, seen = await client.until("error")
            assert seen == []
            assert error["error"]["type"] == "invalid_request_error"
            assert error["error"]["event_id"] == event_id
            assert error["error"]["message"]
        errors = [e["error"] for e in client.events if e["type"] == "error"]
        assert errors[5]["param"] == "item_id" and errors[5]["code"] == "missing_required_parameter"
        assert errors[8]["param"] == "session.type"
        session = (await client.configure("pcmu"))["session"]  # a rejected update changed nothing
        assert session["instructions"] != "x"
        assert len(server.sessions[-1].errors) == len(bad)


# ------------------------------------------------------------------ schema conformance


async def test_every_event_of_a_full_conversation_matches_the_official_models(server):
    ws, client = await open_client(server)
    async with ws:
        await client.configure("pcm16", audio_input={"transcription": {"model": "gpt-4o-transcribe"}})
        await client.send(type="response.create")  # greeting
        greeting, _, _ = await client.response()
        await client.append(utterance(300, 900, 700))  # the caller speaks: echo
        echo, _, _ = await client.response()
        await client.send(type="conversation.item.truncate", item_id=echo["output"][0]["id"], content_index=0, audio_end_ms=300)
        await client.until("conversation.item.truncated")
        await client.send(type="conversation.item.create", item={"type": "message", "role": "system", "content": [{"type": "input_text", "text": "Be nice."}]})
        await client.until("conversation.item.done")
        await client.send(type="conversation.item.retrieve", item_id=greeting["output"][0]["id"])
        retrieved, _ = await client.until("conversation.item.retrieved")
        assert retrieved["item"]["content"][0]["audio"]
        await client.send(type="response.create")
        await client.until("response.output_audio.delta")
        await client.send(type="response.cancel")
        await client.response()
        await client.send(type="input_audio_buffer.clear")
        await client.until("input_audio_buffer.cleared")
        await client.send(type="conversation.item.delete", item_id=greeting["output"][0]["id"])
        await client.until("conversation.item.deleted")
        await client.send(type="response.cancel")
        await client.until("error")
        await client.send(type="conversation.item.truncate", item_id="nope", content_index=0, audio_end_ms=1)
        await client.until("error")
    kinds = set(types(client.events))
    expected = {
        "session.created", "session.updated", "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed", "input_audio_buffer.cleared", "conversation.item.added", "conversation.item.done",
        "conversation.item.input_audio_transcription.completed", "conversation.item.truncated", "conversation.item.retrieved",
        "conversation.item.deleted", "response.created", "response.output_item.added", "response.content_part.added",
        "response.output_audio.delta", "response.output_audio_transcript.delta", "response.output_audio.done",
        "response.output_audio_transcript.done", "response.content_part.done", "response.output_item.done",
        "response.done", "error",
    }
    assert expected <= kinds
    for event in client.events:
        model = SERVER_EVENTS.validate_python(event)
        assert model.type == event["type"]
        validate_server_event(event)  # strict: no coercion, no undeclared field
    assert server.validation_failures == []


def test_the_strict_validator_catches_what_a_lax_check_would_miss():
    good = {"type": "conversation.item.truncated", "event_id": "event_1", "item_id": "item_1", "content_index": 0, "audio_end_ms": 5}
    validate_server_event(good)
    SERVER_EVENTS.validate_python(dict(good, audio_end_ms="5"))  # pydantic alone coerces this...
    for bad in (
        dict(good, audio_end_ms="5"),  # ...strict mode does not
        dict(good, extra_field=1),  # undeclared field (the models allow extras)
        {k: v for k, v in good.items() if k != "item_id"},  # missing required field
        dict(good, type="conversation.item.truncatd"),  # unknown type
        {"type": "response.done", "event_id": "e", "response": {"status": "finished"}},  # bad literal
        {"type": "response.done", "event_id": "e", "response": {"usage": {"input_tokens": 1, "audio_seconds": 2}}},
    ):
        with pytest.raises(EventSchemaError):
            validate_server_event(bad)


class LookupAgent:
    """A scripted agent: calls a tool first, then speaks once the tool's output is in the conversation."""

    def reply(self, turn: CallerTurn) -> Reply:
        if turn.items and turn.items[-1]["type"] == "function_call_output":
            return Reply(speech_like(300), "Your order ships tomorrow.")
        return Reply(np.zeros(0, np.int16), function_call=FunctionCall("lookup_order", '{"order": 42}'))


def test_function_call_responses_on_the_pure_session():
    """The session without sockets: events in, events out, time passed in."""
    session = RealtimeSession(LookupAgent(), speed=10.0)
    events = session.open()
    events += session.receive(json.dumps({"type": "response.create"}), now_ms=0.0)
    assert types(events) == [
        "session.created",
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert (done["name"], done["arguments"]) == ("lookup_order", '{"order": 42}')
    output = {"type": "function_call_output", "call_id": done["call_id"], "output": '{"eta": "tomorrow"}'}
    events += session.receive(json.dumps({"type": "conversation.item.create", "item": output}), now_ms=1.0)
    events += session.receive(json.dumps({"type": "response.create"}), now_ms=2.0)
    assert session.next_deadline() == 2.0 + 100 / 10.0  # the first chunk went out at once, the next in 10 ms
    while session.next_deadline() is not None:
        events += session.tick(session.next_deadline())
    assert types(events).count("response.output_audio.delta") == 3
    assert [r["status"] for r in session.responses] == ["completed", "completed"]
    assert [i.wire["type"] for i in session.items] == ["function_call", "function_call_output", "message"]
    for event in events:
        validate_server_event(event)


# ------------------------------------------------------------------ lifetime


async def test_session_expiry_sends_session_expired_then_closes_1001():
    async with LocalRealtimeServer(speed=50.0, session_limit_s=0.2) as srv:
        ws, client = await open_client(srv)
        async with ws:
            error, _ = await client.until("error")
            assert error["error"]["code"] == "session_expired"
            with pytest.raises(ConnectionClosed) as closed:
                await client.recv()
            assert closed.value.rcvd.code == 1001


async def test_stop_closes_open_sessions():
    srv = LocalRealtimeServer(speed=50.0)
    await srv.start()
    ws, client = await open_client(srv)
    await srv.stop()
    with pytest.raises(ConnectionClosed):
        await client.recv()
    assert len(srv.sessions) == 1 and srv.sessions[0].events_sent == 1
