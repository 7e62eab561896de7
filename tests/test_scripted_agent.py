"""The embedded server's scripted agent, over real sockets: replies from a TOML file, per response.

Every event a client reads is checked strictly against the official ``openai`` models (and the server
validates what it sends as well).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect

from gateway.audio.convert import mulaw_encode
from gateway.local import LocalRealtimeServer, RealtimeSession
from gateway.local import make_agent
from gateway.local.agents import speech_like
from gateway.local.schema import validate_server_event
from gateway.local.script import MISMATCH, ScriptError, ScriptedAgent, bundled_scripts, load_script, say_ms
from gateway.audio.wavio import load_sample

TIMEOUT = 5.0
PCMU = {"type": "audio/pcmu"}


class Client:
    """A GA Realtime client (mu-law both ways) that validates every server event it reads."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []

    async def send(self, **event: Any) -> None:
        await self.ws.send(json.dumps(event))

    async def recv(self) -> dict[str, Any]:
        event = json.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT))
        validate_server_event(event)
        self.events.append(event)
        return event

    async def until(self, kind: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        seen = []
        while (event := await self.recv())["type"] != kind:
            seen.append(event)
        return event, seen

    async def configure(self, vad: bool = False, **session: Any) -> None:
        audio = {"input": {"format": PCMU}, "output": {"format": PCMU}}
        if not vad:
            audio["input"]["turn_detection"] = None
        await self.send(type="session.update", session={"type": "realtime", "audio": audio, **session})
        await self.until("session.updated")

    async def respond(self, **response: Any) -> tuple[dict[str, Any], bytes, list[dict[str, Any]]]:
        """response.create; returns (the response.done response, the mu-law audio, the events from response.created on)."""
        await self.send(type="response.create", **({"response": response} if response else {}))
        return await self.response()

    async def response(self) -> tuple[dict[str, Any], bytes, list[dict[str, Any]]]:
        _, _ = await self.until("response.created")
        created = self.events[-1]
        done, seen = await self.until("response.done")
        audio = b"".join(base64.b64decode(e["delta"]) for e in seen if e["type"] == "response.output_audio.delta")
        return done["response"], audio, [created, *seen, done]

    async def say_text(self, text: str) -> None:
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
        await self.send(type="conversation.item.create", item=item)
        await self.until("conversation.item.done")

    async def tool_result(self, call_id: str, output: str = '{"ok": true}') -> None:
        await self.send(type="conversation.item.create", item={"type": "function_call_output", "call_id": call_id, "output": output})
        await self.until("conversation.item.done")


def transcript_of(response: dict[str, Any]) -> str:
    return response["output"][0]["content"][0]["transcript"]


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def write(tmp_path: Path, text: str, name: str = "script.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


async def start(path: Path | str) -> LocalRealtimeServer:
    server = LocalRealtimeServer(agent=f"scripted:{path}", speed=100.0, validate_events=True)
    await server.start()
    return server


async def open_client(server: LocalRealtimeServer, vad: bool = False, **session: Any) -> tuple[ClientConnection, Client]:
    ws = await connect(server.url + "?model=gpt-realtime", compression=None)
    client = Client(ws)
    assert (await client.recv())["type"] == "session.created"
    await client.configure(vad, **session)
    return ws, client


@pytest.fixture
async def scripted(tmp_path):
    """``await scripted(toml_text)`` -> (server, client); everything is closed and checked afterwards."""
    opened: list[tuple[LocalRealtimeServer, ClientConnection]] = []

    async def make(text: str, vad: bool = False, **session: Any) -> tuple[LocalRealtimeServer, Client]:
        server = await start(write(tmp_path, text, f"script{len(opened)}.toml"))
        ws, client = await open_client(server, vad, **session)
        opened.append((server, ws))
        return server, client

    yield make
    for server, ws in opened:
        await ws.close()
        await server.stop()
        assert server.validation_failures == []


# ------------------------------------------------------------------ replies in order


async def test_replies_come_in_order_whatever_triggers_the_response(scripted):
    server, client = await scripted(
        """
        [[replies]]
        say = "Hello! This is Acme calling about your appointment."
        [[replies]]
        say = "Hi."
        [[replies]]
        say = "Tuesday at ten."
        audio_ms = 1000
        """,
        vad=True,
    )
    first, audio, events = await client.respond()  # manual
    assert transcript_of(first) == "Hello! This is Acme calling about your appointment."
    assert len(audio) == say_ms("Hello! This is Acme calling about your appointment.") * 8 == 51 * 65 * 8
    assert next(e for e in events if e["type"] == "response.output_audio_transcript.done")["transcript"] == transcript_of(first)
    # The caller speaks: server VAD commits the turn and starts the response itself.
    frames = np.concatenate([np.zeros(2400, np.int16), speech_like(700), np.zeros(6400, np.int16)])
    for start_at in range(0, len(frames), 160):
        await client.send(type="input_audio_buffer.append", audio=base64.b64encode(mulaw_encode(frames[start_at : start_at + 160])).decode())
    second, audio, _ = await client.response()
    assert transcript_of(second) == "Hi." and len(audio) == 600 * 8  # the 0.6 s minimum
    third, audio, _ = await client.respond()
    assert transcript_of(third) == "Tuesday at ten." and len(audio) == 1000 * 8
    agent = server.sessions[-1].agent
    assert isinstance(agent, ScriptedAgent) and agent.used == [0, 1, 2]
    assert all(r["status"] == "completed" and len(r["output"]) == 1 for r in (first, second, third))


async def test_each_session_plays_the_script_from_the_start(tmp_path):
    server = await start(write(tmp_path, '[[replies]]\nsay = "One."\n[[replies]]\nsay = "Two."\n'))
    try:
        for _ in range(2):
            ws, client = await open_client(server)
            async with ws:
                response, _, _ = await client.respond()
                assert transcript_of(response) == "One."
        assert server.validation_failures == []
    finally:
        await server.stop()


# ------------------------------------------------------------------ speech and a function call in one response


async def test_say_and_function_call_in_one_response_with_the_exact_event_order(scripted):
    server, client = await scripted(
        """
        [[replies]]
        say = "Goodbye!"
        function_call = { name = "end_call", arguments = { reason = "done" } }
        """
    )
    response, audio, events = await client.respond()
    deltas = len(audio) // 800  # 100 ms of mu-law per delta
    assert deltas == 6
    message_id, call_id_item = response["output"][0]["id"], response["output"][1]["id"]
    assert types(events) == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        *["response.output_audio.delta"] * (deltas - 1),
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.output_item.added",
        "conversation.item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    response_id = response["id"]
    message_events = events[1 : types(events).index("conversation.item.done") + 1]
    assert all(e.get("response_id", response_id) == response_id for e in events[1:-1])
    assert {e["output_index"] for e in message_events if "output_index" in e} == {0}
    call_added, call_conv_added, args_delta, args_done, call_done, call_conv_done = events[-7:-1]
    assert call_added["output_index"] == 1 and call_added["item"]["type"] == "function_call"
    assert call_added["item"]["status"] == "in_progress" and call_added["item"]["arguments"] == ""
    assert call_conv_added["previous_item_id"] == message_id
    call_id = args_done["call_id"]
    assert re.fullmatch(r"call_[0-9a-f]{16}", call_id)
    expected = {"call_id": call_id, "item_id": call_id_item, "output_index": 1, "response_id": response_id}
    assert {k: args_delta[k] for k in expected} == expected and args_delta["delta"] == '{"reason": "done"}'
    assert {k: args_done[k] for k in expected} == expected
    assert (args_done["name"], args_done["arguments"]) == ("end_call", '{"reason": "done"}')
    assert call_done["item"] == call_conv_done["item"] == response["output"][1]
    assert response["output"][1] == {
        "id": call_id_item,
        "type": "function_call",
        "object": "realtime.item",
        "status": "completed",
        "name": "end_call",
        "call_id": call_id,
        "arguments": '{"reason": "done"}',
    }
    assert response["output"][0]["type"] == "message" and transcript_of(response) == "Goodbye!"
    assert response["status"] == "completed"
    # Output tokens: the transcript and the call as text, the audio at 50 ms a token.
    usage = response["usage"]["output_token_details"]
    assert usage == {"text_tokens": math.ceil(len("Goodbye!") / 4) + math.ceil(len('end_call{"reason": "done"}') / 4), "audio_tokens": 600 // 50}
    session = server.sessions[-1]
    assert [i.wire["type"] for i in session.items] == ["message", "function_call"]


async def test_a_function_call_alone_and_the_when_function_output_reply(scripted):
    server, client = await scripted(
        """
        [[replies]]
        function_call = { name = "lookup_order", arguments = '{"order": 42}' }
        [[replies]]
        say = "Anything else?"
        [[replies]]
        when_function_output = true
        say = "Your order ships tomorrow."
        [[replies]]
        say = "Bye."
        """
    )
    response, audio, events = await client.respond()
    assert audio == b"" and [o["type"] for o in response["output"]] == ["function_call"]
    assert "response.content_part.added" not in types(events)
    call_id = response["output"][0]["call_id"]
    assert response["output"][0]["arguments"] == '{"order": 42}'
    await client.tool_result(call_id)
    after_tool, _, _ = await client.respond()
    assert transcript_of(after_tool) == "Your order ships tomorrow."  # the marked reply, ahead of "Anything else?"
    ordinary, _, _ = await client.respond()
    assert transcript_of(ordinary) == "Anything else?"
    await client.tool_result(call_id, '{"again": true}')  # no marked reply left: the next ordinary one
    last, _, _ = await client.respond()
    assert transcript_of(last) == "Bye."
    assert server.sessions[-1].agent.used == [0, 2, 1, 3]


# ------------------------------------------------------------------ audio sources


async def test_sample_audio_is_the_bundled_sample(scripted):
    _, client = await scripted('[[replies]]\nsample = "greeting"\n[[replies]]\nsample = "caller_hello"\nsay = "Hi!"\n')
    greeting = load_sample("greeting")
    response, audio, _ = await client.respond()
    assert audio == greeting and transcript_of(response) == ""
    response, audio, _ = await client.respond()
    assert audio == load_sample("caller_hello") and transcript_of(response) == "Hi!"


async def test_echo_reply_says_the_caller_back(scripted):
    _, client = await scripted('[[replies]]\necho = true\n[[replies]]\necho = true\nsay = "(echo)"\n')
    await client.say_text("Is Tuesday free?")
    response, audio, _ = await client.respond()
    assert transcript_of(response) == "Is Tuesday free?" and len(audio) > 0
    await client.say_text("And Wednesday?")
    response, _, _ = await client.respond()
    assert transcript_of(response) == "(echo)"


# ------------------------------------------------------------------ when the replies run out


@pytest.mark.parametrize("mode", ["silence", "repeat", "echo"])
async def test_exhaustion_modes(scripted, mode):
    server, client = await scripted(
        f"""
        on_exhausted = "{mode}"
        [[replies]]
        say = "See you."
        function_call = {{ name = "end_call" }}
        """
    )
    first, first_audio, _ = await client.respond()
    assert [o["type"] for o in first["output"]] == ["message", "function_call"]
    assert first["output"][1]["arguments"] == "{}"
    await client.say_text("Hello?")
    for _ in range(2):
        response, audio, events = await client.respond()
        assert response["status"] == "completed"
        assert [o["type"] for o in response["output"]] == ["message"]  # a tool call is never repeated
        if mode == "silence":
            assert audio == b"" and transcript_of(response) == ""
            assert "response.output_audio.delta" not in types(events)
        elif mode == "repeat":
            assert audio == first_audio and transcript_of(response) == "See you."
        else:
            assert transcript_of(response) == "Hello?" and len(audio) > 0
    assert server.sessions[-1].agent.used == [0, -1, -1]


async def test_an_empty_script_is_all_fallback(scripted):
    _, client = await scripted('replies = []\non_exhausted = "repeat"\n')
    response, audio, _ = await client.respond()
    assert audio == b"" and transcript_of(response) == ""  # nothing to repeat yet: silence


# ------------------------------------------------------------------ instructions


async def test_instructions_are_checked_and_recorded_per_response(scripted):
    server, client = await scripted(
        """
        [[replies]]
        say = "Hello Dana."
        expect_instructions_contain = "Dana"
        [[replies]]
        say = "About order 42."
        expect_instructions_contain = "order 42"
        function_call = { name = "lookup_order" }
        [[replies]]
        say = "Override seen."
        expect_instructions_contain = "Speak French."
        """,
        instructions="You are calling Dana.",
    )
    ok, _, _ = await client.respond()
    assert transcript_of(ok) == "Hello Dana."
    mismatch, audio, _ = await client.respond()
    assert transcript_of(mismatch).startswith(MISMATCH) and "order 42" in transcript_of(mismatch)
    assert [o["type"] for o in mismatch["output"]] == ["message"] and len(audio) > 0  # the call is dropped too
    override, _, _ = await client.respond(instructions="Speak French.")
    assert transcript_of(override) == "Override seen."
    session = server.sessions[-1]
    assert [session.response_instructions[r["id"]] for r in session.responses] == [
        "You are calling Dana.",
        "You are calling Dana.",
        "Speak French.",
    ]
    assert session.agent.mismatches == [(1, "order 42", "You are calling Dana.")]


# ------------------------------------------------------------------ cancellation (pure session)


def test_a_response_cancelled_during_its_audio_never_calls_the_function(tmp_path):
    path = write(tmp_path, '[[replies]]\nsay = "Goodbye, see you soon."\nfunction_call = { name = "end_call" }\n')
    agent = make_agent(f"scripted:{path}")
    session = RealtimeSession(agent, speed=1.0)
    events = session.open()
    events += session.receive(json.dumps({"type": "response.create"}), now_ms=0.0)
    events += session.receive(json.dumps({"type": "response.cancel"}), now_ms=1.0)
    for event in events:
        validate_server_event(event)
    assert not any(e["type"].startswith("response.function_call") for e in events)
    (done,) = session.responses
    assert done["status"] == "cancelled" and [o["type"] for o in done["output"]] == ["message"]
    assert [i.wire["type"] for i in session.items] == ["message"]


def test_out_of_band_response_keeps_both_items_out_of_the_conversation(tmp_path):
    path = write(tmp_path, '[[replies]]\nsay = "Hi"\nfunction_call = { name = "note" }\n')
    agent = make_agent(f"scripted:{path}")
    session = RealtimeSession(agent, speed=1000.0)
    events = session.open()
    events += session.receive(json.dumps({"type": "response.create", "response": {"conversation": "none"}}), now_ms=0.0)
    while session.next_deadline() is not None:
        events += session.tick(session.next_deadline())
    for event in events:
        validate_server_event(event)
    assert "conversation.item.added" not in [e["type"] for e in events]
    assert [o["type"] for o in session.responses[0]["output"]] == ["message", "function_call"]
    assert session.items == []


# ------------------------------------------------------------------ bundled scripts and bad scripts


@pytest.mark.parametrize("name", bundled_scripts())
def test_bundled_scripts_load_by_name(name):
    script = load_script(name)
    assert script.replies and isinstance(make_agent(f"scripted:{name}"), ScriptedAgent)
    LocalRealtimeServer(agent=f"scripted:{name}")


def test_bundled_examples_exist():
    assert {"appointment", "lookup", "transfer"} <= set(bundled_scripts())


BAD_SCRIPTS = [
    ('[[replies]\nsay = "x"\n', "invalid TOML"),
    ('on_exhausted = "silence"\n', "replies: missing"),
    ('replies = "hello"\n', "replies: must be an array of tables"),
    ('[[replies]]\nsya = "typo"\n', "replies[0].sya: unknown field"),
    ('[[replies]]\nsay = "ok"\n[[replies]]\nsay = 5\n', "replies[1].say: must be a string"),
    ('[[replies]]\nwhen_function_output = true\n', "replies[0]: says nothing"),
    ('[[replies]]\nsample = "no_such_sample"\n', "replies[0].sample: no bundled sample 'no_such_sample'"),
    ('[[replies]]\nsample = "greeting"\necho = true\n', "replies[0].sample: a reply takes its audio from sample or echo"),
    ('[[replies]]\nsay = "x"\naudio_ms = -1\n', "replies[0].audio_ms: must be between"),
    ('[[replies]]\nsay = "x"\naudio_ms = true\n', "replies[0].audio_ms: must be an integer"),
    ('[[replies]]\nfunction_call = { arguments = {} }\n', "replies[0].function_call.name"),
    ('[[replies]]\nfunction_call = "end_call"\n', "replies[0].function_call: must be a table"),
    ('[[replies]]\nfunction_call = { name = "f", arguments = "{not json" }\n', "replies[0].function_call.arguments: is not JSON"),
    ('[[replies]]\nfunction_call = { name = "f", arguments = "[1]" }\n', "replies[0].function_call.arguments: must be a JSON object"),
    ('[[replies]]\nfunction_call = { name = "f", args = {} }\n', "replies[0].function_call.args: unknown field"),
    ('on_exhausted = "loop"\n[[replies]]\nsay = "x"\n', "on_exhausted: must be one of"),
    ('reply = []\n', "reply: unknown field"),
]


@pytest.mark.parametrize("text, message", BAD_SCRIPTS)
def test_a_bad_script_fails_at_server_creation_naming_file_and_field(tmp_path, text, message):
    path = write(tmp_path, text, "bad.toml")
    with pytest.raises(ScriptError) as error:
        LocalRealtimeServer(agent=f"scripted:{path}")
    assert str(error.value).startswith(f"{path.resolve()}: ")
    assert message in str(error.value)


def test_missing_script_unknown_bundled_name_and_unknown_agent(tmp_path):
    with pytest.raises(ValueError, match="cannot read the script"):
        LocalRealtimeServer(agent=f"scripted:{tmp_path / 'nope.toml'}")
    with pytest.raises(ValueError, match="no bundled script 'nope'"):
        make_agent("scripted:nope")
    with pytest.raises(ValueError, match="needs a script"):
        make_agent("scripted:")
    with pytest.raises(ValueError, match="unknown local agent"):
        make_agent("parrot")
    assert type(make_agent("echo")).__name__ == "EchoAgent"


def test_an_edited_script_is_read_again(tmp_path):
    path = write(tmp_path, '[[replies]]\nsay = "Old."\n')
    assert load_script(path).replies[0].say == "Old."
    path.write_text('[[replies]]\nsay = "New and longer."\n')
    assert load_script(path).replies[0].say == "New and longer."
