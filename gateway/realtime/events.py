"""The model side's GA Realtime protocol: build client events, parse server events at the edge.

Only the server events the call core acts on become typed values; every other known event is
returned as :class:`OtherEvent` (the core ignores it) and a malformed one raises
:class:`ModelEventError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import orjson

from gateway.audio.convert import MODEL_RATE, AudioBytes, Base64Audio, audio_base64


class ModelEventError(ValueError):
    """A frame from the model that is not a valid Realtime server event.

    ``reason`` is a fixed text chosen by the gateway (a metric label, a drop counter's key); ``detail`` is what the
    model sent that explains it (an event type, a field), made safe with ``ascii()`` and truncated, for the
    summarised drop log only: a model sending a new event type per frame must not grow the metrics' label values.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason} {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# ---- client events (gateway -> model) ---------------------------------------------------------


def audio_format_object(audio_format: str) -> dict[str, Any]:
    """The GA ``audio.*.format`` object for a gateway audio format."""
    if audio_format == "pcmu":
        return {"type": "audio/pcmu"}
    return {"type": "audio/pcm", "rate": MODEL_RATE}


def session_update(
    *,
    model: str,
    instructions: str,
    voice: str,
    audio_format: str,
    turn_detection: dict[str, Any] | None,
    transcription_model: str = "",
    tools: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    audio_input: dict[str, Any] = {"format": audio_format_object(audio_format), "turn_detection": turn_detection}
    if transcription_model:
        audio_input["transcription"] = {"model": transcription_model}
    session: dict[str, Any] = {
        "type": "realtime",
        "model": model,
        "instructions": instructions,
        "output_modalities": ["audio"],
        "audio": {"input": audio_input, "output": {"format": audio_format_object(audio_format), "voice": voice}},
    }
    if tools:
        session["tools"] = tools
        session["tool_choice"] = "auto"
    return {"type": "session.update", "session": session}


def input_audio_append(audio: AudioBytes) -> dict[str, Any]:
    """Caller audio for the model's buffer (a Base64Audio, in pass-through, goes as the text Twilio sent)."""
    return {"type": "input_audio_buffer.append", "audio": audio_base64(audio)}


def item_truncate(item_id: str, audio_end_ms: int) -> dict[str, Any]:
    return {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": audio_end_ms}


def response_create(instructions: str = "") -> dict[str, Any]:
    if instructions:
        return {"type": "response.create", "response": {"instructions": instructions}}
    return {"type": "response.create"}


def function_call_output(call_id: str, output: str) -> dict[str, Any]:
    return {"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": call_id, "output": output}}


def user_text(text: str) -> dict[str, Any]:
    """A user message made of text (e.g. what the caller keyed in)."""
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
    }


def system_text(text: str) -> dict[str, Any]:
    """A system message: a word to the agent from the operator, not from the caller."""
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "system", "content": [{"type": "input_text", "text": text}]},
    }


def instructions_update(instructions: str) -> dict[str, Any]:
    """A session.update that changes only the instructions."""
    return {"type": "session.update", "session": {"type": "realtime", "instructions": instructions}}


def text_item(role: str, text: str) -> dict[str, Any]:
    """A past turn re-created as text in a new session (``role`` is "user" or "assistant")."""
    content_type = "output_text" if role == "assistant" else "input_text"
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": role, "content": [{"type": content_type, "text": text}]},
    }


def response_cancel(response_id: str) -> dict[str, Any]:
    return {"type": "response.cancel", "response_id": response_id}


# ---- server events (model -> gateway) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    pass


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    audio_start_ms: int
    item_id: str


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    audio_end_ms: int
    item_id: str


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    response_id: str


@dataclass(frozen=True, slots=True)
class AudioDelta:
    response_id: str
    item_id: str
    audio: AudioBytes  # a Base64Audio as parsed: decoded only where the samples are needed (pcm16), never in pcmu


@dataclass(frozen=True, slots=True)
class ResponseDone:
    response_id: str
    status: str
    usage: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Transcript:
    role: str  # "assistant" or "user"
    item_id: str
    text: str


@dataclass(frozen=True, slots=True)
class FunctionCallRequested:
    response_id: str
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ModelError:
    code: str
    message: str
    error_type: str


@dataclass(frozen=True, slots=True)
class OtherEvent:
    type: str


ModelEvent = Union[
    SessionUpdated,
    SpeechStarted,
    SpeechStopped,
    ResponseCreated,
    AudioDelta,
    ResponseDone,
    Transcript,
    FunctionCallRequested,
    ModelError,
    OtherEvent,
]

KNOWN_SERVER_EVENTS = frozenset(
    {
        "session.created",
        "session.updated",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "input_audio_buffer.cleared",
        "input_audio_buffer.timeout_triggered",
        "conversation.created",
        "conversation.item.created",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.retrieved",
        "conversation.item.deleted",
        "conversation.item.truncated",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
        "conversation.item.input_audio_transcription.failed",
        "conversation.item.input_audio_transcription.segment",
        "response.created",
        "response.done",
        "response.output_item.added",
        "response.output_item.done",
        "response.content_part.added",
        "response.content_part.done",
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.delta",
        "response.output_audio_transcript.done",
        "response.output_text.delta",
        "response.output_text.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "output_audio_buffer.started",
        "output_audio_buffer.stopped",
        "output_audio_buffer.cleared",
        "rate_limits.updated",
        "error",
    }
)


def _field(event: dict[str, Any], key: str, kind: type = str) -> Any:
    value = event.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ModelEventError("malformed event", ascii(f"{str(event.get('type'))[:40]}: {key} must be {kind.__name__}"))
    return value


def parse_model_event(text: str | bytes) -> ModelEvent:
    """Parse one frame from the model. Raises :class:`ModelEventError` for garbage or unknown types."""
    try:
        event = orjson.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError (invalid UTF-8, NaN, nesting past 1024 included)
        raise ModelEventError("frame is not JSON") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ModelEventError("frame is not an event object")
    kind = event["type"]
    if kind == "response.output_audio.delta":
        try:
            audio = Base64Audio.parse(_field(event, "delta"))
        except ValueError:
            raise ModelEventError("response.output_audio.delta: delta is not base64") from None
        return AudioDelta(_field(event, "response_id"), _field(event, "item_id"), audio)
    if kind == "input_audio_buffer.speech_started":
        return SpeechStarted(_field(event, "audio_start_ms", int), _field(event, "item_id"))
    if kind == "input_audio_buffer.speech_stopped":
        return SpeechStopped(_field(event, "audio_end_ms", int), _field(event, "item_id"))
    if kind == "response.created":
        return ResponseCreated(_field(_field(event, "response", dict), "id"))
    if kind == "response.done":
        response = _field(event, "response", dict)
        usage = response.get("usage") if isinstance(response.get("usage"), dict) else {}
        return ResponseDone(_field(response, "id"), str(response.get("status", "")), usage)
    if kind == "response.output_audio_transcript.done":
        return Transcript("assistant", _field(event, "item_id"), _field(event, "transcript"))
    if kind == "conversation.item.input_audio_transcription.completed":
        return Transcript("user", _field(event, "item_id"), _field(event, "transcript"))
    if kind == "response.function_call_arguments.done":
        return FunctionCallRequested(
            _field(event, "response_id"), _field(event, "call_id"), _field(event, "name"), _field(event, "arguments")
        )
    if kind == "session.updated":
        return SessionUpdated()
    if kind == "error":
        error = _field(event, "error", dict)
        return ModelError(str(error.get("code") or ""), str(error.get("message") or ""), str(error.get("type") or ""))
    if kind in KNOWN_SERVER_EVENTS:
        return OtherEvent(kind)
    raise ModelEventError("unknown_event", ascii(kind[:40]))
