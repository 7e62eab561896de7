"""Responses of the local Realtime server: the event sequences of one response (audio, function call, or both).

A :class:`ResponseStream` streams an assistant audio item as ``response.output_audio.delta`` events,
``CHUNK_MS`` of audio each, the first at once and then every ``CHUNK_MS / speed`` ms, and closes it
(completed or cancelled) with the service's closing sequence. A stream may carry a function call
(:class:`PendingCall`): once the audio is complete the call item follows at ``output_index`` 1, and
``response.done`` lists both items; a response cancelled during its audio never gets to the call.
:func:`function_call_response` is the response that only calls a function. Events go out through
``emit(type, **fields)``, which the session provides (it adds ``event_id``).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from gateway.audio.convert import Upsampler, mulaw_encode

from .agents import FunctionCall
from .items import ASSISTANT_AUDIO_MS_PER_TOKEN, SAMPLES_PER_MS, Item, audio_tokens, text_tokens, usage

Emit = Callable[..., None]

CHUNK_MS = 100  # audio per response.output_audio.delta
CHUNK_SAMPLES = CHUNK_MS * SAMPLES_PER_MS


def copy_json(value: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a small JSON-like dict (events must not share mutable state with items)."""
    return json.loads(json.dumps(value))


@dataclass(slots=True, frozen=True)
class PendingCall:
    """The function call that ends an audio response; ``add_to_conversation`` (None when the response is
    out of band) appends its item to the conversation and returns the id of the item before it."""

    call: FunctionCall
    item_id: str
    call_id: str
    add_to_conversation: Callable[[Item], str | None] | None


@dataclass(slots=True)
class ResponseStream:
    """The active response: an assistant audio item being streamed."""

    id: str
    wire: dict[str, Any]  # the response object as response.created showed it
    item: Item  # audio = everything the agent will say; audio_samples = what has been sent
    in_conversation: bool
    previous_item_id: str | None
    transcript: str
    started_ms: float
    interval_ms: float
    input_tokens: tuple[int, int]  # (text, audio), billed when the response started
    upsampler: Upsampler | None  # pcm16 output; None for pcmu
    next_chunk: int = 0
    pending_call: PendingCall | None = None  # said once the audio is complete

    @property
    def audio(self) -> np.ndarray:
        """Everything the agent will say (a response's item is always made with its audio; none reads as silence)."""
        return self.item.audio if self.item.audio is not None else np.zeros(0, dtype=np.int16)

    @property
    def total_chunks(self) -> int:
        return -(-len(self.audio) // CHUNK_SAMPLES)

    @property
    def next_deadline(self) -> float:
        return self.started_ms + self.next_chunk * self.interval_ms

    def begin(self, emit: Emit) -> None:
        emit("response.output_item.added", response_id=self.id, output_index=0, item=copy_json(self.item.wire))
        if self.in_conversation:
            emit("conversation.item.added", previous_item_id=self.previous_item_id, item=copy_json(self.item.wire))
        emit("response.content_part.added", **self._ref(), part={"type": "audio", "transcript": ""})

    def pump(self, now_ms: float, emit: Emit) -> bool:
        """Send the chunks due by ``now_ms``; True once all the audio is out."""
        # The epsilon makes a tick at exactly next_deadline send its chunk despite float rounding ((5 * 0.1) // 0.1 == 4.0).
        due = min(self.total_chunks, int((now_ms - self.started_ms) / self.interval_ms + 1e-6) + 1)
        audio = self.audio
        while self.next_chunk < due:
            chunk = audio[self.next_chunk * CHUNK_SAMPLES : (self.next_chunk + 1) * CHUNK_SAMPLES]
            if self.upsampler is not None:
                payload = self.upsampler.process(chunk).astype("<i2", copy=False).tobytes()
            else:
                payload = mulaw_encode(chunk)
            emit("response.output_audio.delta", **self._ref(), delta=base64.b64encode(payload).decode("ascii"))
            if self.next_chunk == 0 and self.transcript:
                emit("response.output_audio_transcript.delta", **self._ref(), delta=self.transcript)
            self.item.audio_samples += len(chunk)
            self.next_chunk += 1
        return self.next_chunk >= self.total_chunks

    def finish(self, status: str, reason: str | None, emit: Emit) -> dict[str, Any]:
        """Close the item and the response; returns the ``response`` object of ``response.done``."""
        item = self.item
        transcript = self.transcript if self.next_chunk else ""
        item.wire["content"] = [{"type": "output_audio", "transcript": transcript}]
        item.wire["status"] = "completed" if status == "completed" else "incomplete"
        emit("response.output_audio.done", **self._ref())
        emit("response.output_audio_transcript.done", **self._ref(), transcript=transcript)
        emit("response.content_part.done", **self._ref(), part={"type": "audio", "transcript": transcript})
        emit("response.output_item.done", response_id=self.id, output_index=0, item=copy_json(item.wire))
        if self.in_conversation:
            emit("conversation.item.done", previous_item_id=self.previous_item_id, item=copy_json(item.wire))
        output = [item.wire]
        output_text = text_tokens(transcript)
        pending = self.pending_call
        if pending is not None and status == "completed":
            call_item = Item(function_call_wire(pending.call, pending.item_id, pending.call_id))
            previous = pending.add_to_conversation(call_item) if pending.add_to_conversation is not None else None
            emit_function_call(self.id, 1, call_item.wire, pending.call, previous, pending.add_to_conversation is not None, emit)
            output.append(call_item.wire)
            output_text += text_tokens(pending.call.name + pending.call.arguments)
        output_tokens = (output_text, audio_tokens(item.audio_samples, ASSISTANT_AUDIO_MS_PER_TOKEN))
        return response_done(self.wire, status, reason, output, self.input_tokens, output_tokens, emit)

    def _ref(self) -> dict[str, Any]:
        return {"response_id": self.id, "item_id": self.item.id, "output_index": 0, "content_index": 0}


def function_call_wire(call: FunctionCall, item_id: str, call_id: str) -> dict[str, Any]:
    """The wire form of a function call item, as ``response.output_item.added`` shows it (in progress)."""
    return {
        "id": item_id,
        "type": "function_call",
        "object": "realtime.item",
        "status": "in_progress",
        "name": call.name,
        "call_id": call_id,
        "arguments": "",
    }


def emit_function_call(
    response_id: str,
    output_index: int,
    item_wire: dict[str, Any],
    call: FunctionCall,
    previous: str | None,
    in_conversation: bool,
    emit: Emit,
) -> None:
    """The events of one function call item, from ``output_item.added`` to ``output_item.done``; completes ``item_wire``."""
    item_id, call_id = item_wire["id"], item_wire["call_id"]
    emit("response.output_item.added", response_id=response_id, output_index=output_index, item=copy_json(item_wire))
    if in_conversation:
        emit("conversation.item.added", previous_item_id=previous, item=copy_json(item_wire))
    ref = {"response_id": response_id, "item_id": item_id, "output_index": output_index, "call_id": call_id}
    emit("response.function_call_arguments.delta", **ref, delta=call.arguments)
    emit("response.function_call_arguments.done", **ref, name=call.name, arguments=call.arguments)
    item_wire.update(status="completed", arguments=call.arguments)
    emit("response.output_item.done", response_id=response_id, output_index=output_index, item=copy_json(item_wire))
    if in_conversation:
        emit("conversation.item.done", previous_item_id=previous, item=copy_json(item_wire))


def function_call_response(
    wire: dict[str, Any],
    call: FunctionCall,
    item_id: str,
    call_id: str,
    previous: str | None,
    in_conversation: bool,
    input_tokens: tuple[int, int],
    emit: Emit,
) -> tuple[Item, dict[str, Any]]:
    """The whole event sequence of a response that only calls a function; returns (its item, response object)."""
    item_wire = function_call_wire(call, item_id, call_id)
    emit_function_call(wire["id"], 0, item_wire, call, previous, in_conversation, emit)
    output_tokens = (text_tokens(call.name + call.arguments), 0)
    return Item(item_wire), response_done(wire, "completed", None, [item_wire], input_tokens, output_tokens, emit)


def response_done(
    wire: dict[str, Any],
    status: str,
    reason: str | None,
    output: list[dict[str, Any]],
    input_tokens: tuple[int, int],
    output_tokens: tuple[int, int],
    emit: Emit,
) -> dict[str, Any]:
    response = copy_json(wire)
    response["status"] = status
    response["status_details"] = {"type": status, "reason": reason} if reason else None
    response["output"] = [copy_json(o) for o in output]
    response["usage"] = usage(input_tokens[0], input_tokens[1], output_tokens[0], output_tokens[1])
    emit("response.done", response=response)
    return response
