"""Session configuration of the local Realtime server: defaults, ``session.update`` merging, wire form.

A ``session.update`` is validated as a whole and then applied (a bad field changes nothing), the way
the real service answers either ``session.updated`` or an ``error``. Audio formats are named as in
``gateway.audio.convert``: ``"pcm16"`` (``audio/pcm`` at 24 kHz) and ``"pcmu"`` (G.711 mu-law at 8 kHz).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import ClientError, check_type, require

DEFAULT_INSTRUCTIONS = "You are the echo agent of a local test server: you say the caller's words back."
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
# semantic_vad has no silence setting; its eagerness maps to one.
EAGERNESS_SILENCE_MS = {"low": 1500, "medium": 800, "auto": 800, "high": 400}


@dataclass(slots=True, frozen=True)
class TurnDetection:
    type: str = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = None
    eagerness: str = "auto"

    @property
    def effective_silence_ms(self) -> int:
        if self.type == "semantic_vad":
            return EAGERNESS_SILENCE_MS[self.eagerness]
        return self.silence_duration_ms

    def wire(self) -> dict[str, Any]:
        if self.type == "semantic_vad":
            return {
                "type": "semantic_vad",
                "eagerness": self.eagerness,
                "create_response": self.create_response,
                "interrupt_response": self.interrupt_response,
            }
        return {
            "type": "server_vad",
            "threshold": self.threshold,
            "prefix_padding_ms": self.prefix_padding_ms,
            "silence_duration_ms": self.silence_duration_ms,
            "idle_timeout_ms": self.idle_timeout_ms,
            "create_response": self.create_response,
            "interrupt_response": self.interrupt_response,
        }


@dataclass(slots=True, frozen=True)
class SessionConfig:
    model: str = "gpt-realtime"
    instructions: str = DEFAULT_INSTRUCTIONS
    output_modalities: tuple[str, ...] = ("audio",)
    input_format: str = "pcm16"
    output_format: str = "pcm16"
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    transcription: dict[str, Any] | None = None
    noise_reduction: dict[str, Any] | None = None
    voice: str = "marin"
    speed: float = 1.0
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: Any = "auto"
    max_output_tokens: int | str = "inf"
    tracing: Any = None
    truncation: Any = "auto"
    prompt: Any = None
    include: Any = None

    def wire(self, session_id: str, expires_at: int) -> dict[str, Any]:
        """The full session object of ``session.created`` / ``session.updated``."""
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": session_id,
            "model": self.model,
            "output_modalities": list(self.output_modalities),
            "instructions": self.instructions,
            "tools": copy.deepcopy(list(self.tools)),
            "tool_choice": copy.deepcopy(self.tool_choice),
            "max_output_tokens": self.max_output_tokens,
            "tracing": copy.deepcopy(self.tracing),
            "truncation": copy.deepcopy(self.truncation),
            "prompt": copy.deepcopy(self.prompt),
            "expires_at": expires_at,
            "audio": {
                "input": {
                    "format": format_wire(self.input_format),
                    "transcription": copy.deepcopy(self.transcription),
                    "noise_reduction": copy.deepcopy(self.noise_reduction),
                    "turn_detection": self.turn_detection.wire() if self.turn_detection else None,
                },
                "output": {"format": format_wire(self.output_format), "voice": self.voice, "speed": self.speed},
            },
            "include": copy.deepcopy(self.include),
        }


def format_wire(name: str) -> dict[str, Any]:
    return {"type": "audio/pcm", "rate": 24000} if name == "pcm16" else {"type": "audio/pcmu"}


def parse_format(value: Any, param: str) -> str:
    check_type(value, dict, param)
    kind = value.get("type")
    if kind == "audio/pcm":
        if value.get("rate", 24000) != 24000:
            raise ClientError(f"Invalid value for '{param}.rate': only 24000 is supported.", "invalid_value", f"{param}.rate")
        return "pcm16"
    if kind == "audio/pcmu":
        return "pcmu"
    if kind == "audio/pcma":
        raise ClientError("audio/pcma is not supported by the local server.", "invalid_value", f"{param}.type")
    raise ClientError(
        f"Invalid value: '{kind}'. Supported values are: 'audio/pcm', 'audio/pcmu' and 'audio/pcma'.",
        "invalid_value",
        f"{param}.type",
    )


def parse_turn_detection(value: Any) -> TurnDetection | None:
    param = "session.audio.input.turn_detection"
    if value is None:
        return None
    check_type(value, dict, param)
    kind = require(value, "type", str, f"{param}.type")
    if kind not in ("server_vad", "semantic_vad"):
        raise ClientError(
            f"Invalid value: '{kind}'. Supported values are: 'server_vad' and 'semantic_vad'.", "invalid_value", f"{param}.type"
        )
    changes: dict[str, Any] = {"type": kind}
    for key, kinds in (
        ("threshold", (int, float)),
        ("prefix_padding_ms", int),
        ("silence_duration_ms", int),
        ("create_response", bool),
        ("interrupt_response", bool),
        ("idle_timeout_ms", int),
        ("eagerness", str),
    ):
        if value.get(key) is not None:
            check_type(value[key], kinds, f"{param}.{key}")
            changes[key] = value[key]
    if not 0.0 <= float(changes.get("threshold", 0.5)) <= 1.0:
        raise ClientError("Invalid 'threshold': must be between 0 and 1.", "invalid_value", f"{param}.threshold")
    if changes.get("eagerness", "auto") not in EAGERNESS_SILENCE_MS:
        raise ClientError("Invalid 'eagerness'.", "invalid_value", f"{param}.eagerness")
    for key in ("prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms"):
        if changes.get(key, 0) < 0:
            raise ClientError(f"Invalid '{key}': must not be negative.", "invalid_value", f"{param}.{key}")
    # Fields left out take the defaults (not the previous values), as the service does.
    return replace(TurnDetection(), **changes)


def apply_update(config: SessionConfig, session: Any, *, voice_locked: bool) -> SessionConfig:
    """The config after a ``session.update``'s ``session`` object, or a ClientError (config untouched)."""
    check_type(session, dict, "session")
    kind = require(session, "type", str, "session.type")
    if kind != "realtime":
        raise ClientError(
            f"Invalid value: '{kind}'. The local server only supports 'realtime' sessions.", "invalid_value", "session.type"
        )
    changes: dict[str, Any] = {}
    for key, kinds in (("model", str), ("instructions", str)):
        if session.get(key) is not None:
            check_type(session[key], kinds, f"session.{key}")
            changes[key] = session[key]
    if session.get("output_modalities") is not None:
        modalities = session["output_modalities"]
        check_type(modalities, list, "session.output_modalities")
        if not modalities or any(m not in ("audio", "text") for m in modalities) or len(modalities) > 1:
            raise ClientError(
                "Invalid 'output_modalities': use ['audio'] or ['text'].", "invalid_value", "session.output_modalities"
            )
        changes["output_modalities"] = tuple(modalities)
    if session.get("tools") is not None:
        changes["tools"] = tuple(_parse_tool(tool, i) for i, tool in enumerate(_list(session["tools"], "session.tools")))
    if "tool_choice" in session and session["tool_choice"] is not None:
        choice = session["tool_choice"]
        check_type(choice, (str, dict), "session.tool_choice")
        if isinstance(choice, str) and choice not in ("auto", "none", "required"):
            raise ClientError(f"Invalid value: '{choice}'.", "invalid_value", "session.tool_choice")
        changes["tool_choice"] = choice
    if session.get("max_output_tokens") is not None:
        tokens = session["max_output_tokens"]
        if tokens != "inf":
            check_type(tokens, int, "session.max_output_tokens")
        changes["max_output_tokens"] = tokens
    changes.update(_nullable(session, "session", tracing=(str, dict), truncation=(str, dict), prompt=dict,
                             include=list))
    audio = session.get("audio")
    if audio is not None:
        check_type(audio, dict, "session.audio")
        changes.update(_audio_changes(config, audio, voice_locked))
    return replace(config, **changes)


def _nullable(source: dict[str, Any], where: str, **kinds: type | tuple[type, ...]) -> dict[str, Any]:
    """The fields of ``source`` named in ``kinds`` that it sets, each of its type or null (null clears it)."""
    for key, kind in kinds.items():
        if source.get(key) is not None:
            check_type(source[key], kind, f"{where}.{key}")
    return {key: source[key] for key in kinds if key in source}


def _audio_changes(config: SessionConfig, audio: dict[str, Any], voice_locked: bool) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    audio_in = audio.get("input")
    if audio_in is not None:
        check_type(audio_in, dict, "session.audio.input")
        if audio_in.get("format") is not None:
            changes["input_format"] = parse_format(audio_in["format"], "session.audio.input.format")
        if "turn_detection" in audio_in:
            changes["turn_detection"] = parse_turn_detection(audio_in["turn_detection"])
        changes.update(_nullable(audio_in, "session.audio.input", transcription=dict, noise_reduction=dict))
    audio_out = audio.get("output")
    if audio_out is not None:
        check_type(audio_out, dict, "session.audio.output")
        if audio_out.get("format") is not None:
            changes["output_format"] = parse_format(audio_out["format"], "session.audio.output.format")
        if audio_out.get("voice") is not None:
            voice = audio_out["voice"]
            check_type(voice, str, "session.audio.output.voice")
            if voice not in VOICES:
                raise ClientError(f"Invalid value: '{voice}'. Supported values are: "
                                  + ", ".join(f"'{v}'" for v in VOICES) + ".", "invalid_value",
                                  "session.audio.output.voice")
            if voice != config.voice and voice_locked:
                raise ClientError(
                    "Cannot update a conversation's voice if assistant audio is present.",
                    "cannot_update_voice",
                    "session.audio.output.voice",
                )
            changes["voice"] = voice
        if audio_out.get("speed") is not None:
            check_type(audio_out["speed"], (int, float), "session.audio.output.speed")
            if not 0.25 <= audio_out["speed"] <= 1.5:
                raise ClientError("Invalid 'speed': must be between 0.25 and 1.5.", "invalid_value", "session.audio.output.speed")
            changes["speed"] = float(audio_out["speed"])
    return changes


def _list(value: Any, param: str) -> list[Any]:
    check_type(value, list, param)
    return value


def _parse_tool(tool: Any, index: int) -> dict[str, Any]:
    param = f"session.tools[{index}]"
    check_type(tool, dict, param)
    if tool.get("type", "function") != "function":
        raise ClientError("The local server only supports function tools.", "invalid_value", f"{param}.type")
    parsed: dict[str, Any] = {"type": "function", "name": require(tool, "name", str, f"{param}.name")}
    if tool.get("description") is not None:
        parsed["description"] = require(tool, "description", str, f"{param}.description")
    if tool.get("parameters") is not None:
        parsed["parameters"] = require(tool, "parameters", dict, f"{param}.parameters")
    return parsed
