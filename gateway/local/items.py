"""Conversation items of the local Realtime server: storage, client-item parsing, audio codecs, billing.

Every item keeps its wire form (what ``conversation.item.*`` events show: never the audio data) and,
for audio messages, its audio as 8 kHz int16 plus how much of it the item holds (``audio_samples``:
for an assistant item, what has been sent so far, or the truncation point).
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from gateway.audio.convert import Downsampler, Upsampler, mulaw_decode, mulaw_encode, pcm16_from_bytes

from .errors import ClientError, check_type, require

SAMPLES_PER_MS = 8
USER_AUDIO_MS_PER_TOKEN = 100
ASSISTANT_AUDIO_MS_PER_TOKEN = 50
CHARS_PER_TEXT_TOKEN = 4


@dataclass(slots=True)
class Item:
    wire: dict[str, Any]
    audio: np.ndarray | None = None  # 8 kHz int16
    audio_samples: int = 0

    @property
    def id(self) -> str:
        return self.wire["id"]

    @property
    def audio_ms(self) -> int:
        return self.audio_samples // SAMPLES_PER_MS

    def held_audio(self) -> np.ndarray:
        return self.audio[: self.audio_samples] if self.audio is not None else np.zeros(0, np.int16)


def decode_b64(data: Any, param: str) -> bytes:
    check_type(data, str, param)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError(f"Invalid '{param}': expected base64-encoded audio.", "invalid_value", param) from None


def decode_audio(raw: bytes, audio_format: str) -> np.ndarray:
    """Whole (non-streaming) audio in a session format -> 8 kHz int16."""
    if audio_format == "pcmu":
        return mulaw_decode(raw)
    return Downsampler().process(pcm16_from_bytes(raw))


def encode_audio(samples: np.ndarray, audio_format: str) -> bytes:
    """Whole (non-streaming) 8 kHz int16 audio -> bytes in a session format."""
    if audio_format == "pcmu":
        return mulaw_encode(samples)
    return Upsampler().process(samples).astype("<i2", copy=False).tobytes()


def text_tokens(text: str | None) -> int:
    return math.ceil(len(text) / CHARS_PER_TEXT_TOKEN) if text else 0


def audio_tokens(samples: int, ms_per_token: int) -> int:
    """A started token bills as a whole one."""
    return math.ceil(samples / (ms_per_token * SAMPLES_PER_MS))


def item_tokens(item: Item) -> tuple[int, int]:
    """(text, audio) tokens an item adds to a response's input."""
    wire = item.wire
    kind = wire["type"]
    if kind == "function_call":
        return text_tokens(wire.get("name", "") + wire.get("arguments", "")), 0
    if kind == "function_call_output":
        return text_tokens(wire.get("output", "")), 0
    text = sum(text_tokens(part.get("text")) for part in wire.get("content", ()))
    audio = 0
    if item.audio is not None:
        per = ASSISTANT_AUDIO_MS_PER_TOKEN if wire.get("role") == "assistant" else USER_AUDIO_MS_PER_TOKEN
        audio = audio_tokens(item.audio_samples, per)
    return text, audio


def usage(input_text: int, input_audio: int, output_text: int, output_audio: int) -> dict[str, Any]:
    """``response.done.response.usage`` (no prompt caching in the local server)."""
    input_tokens = input_text + input_audio
    output_tokens = output_text + output_audio
    return {
        "total_tokens": input_tokens + output_tokens,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "input_token_details": {
            "text_tokens": input_text,
            "audio_tokens": input_audio,
            "image_tokens": 0,
            "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": output_text, "audio_tokens": output_audio},
    }


def parse_client_item(item: Any, new_id: Callable[[], str], input_format: str, output_format: str) -> Item:
    """A ``conversation.item.create`` item -> :class:`Item` (or a ClientError)."""
    check_type(item, dict, "item")
    kind = require(item, "type", str, "item.type")
    item_id = item.get("id")
    if item_id is not None:
        check_type(item_id, str, "item.id")
    wire: dict[str, Any] = {"id": item_id or new_id(), "type": kind, "object": "realtime.item", "status": "completed"}
    audio = None
    if kind == "message":
        role = require(item, "role", str, "item.role")
        if role not in ("user", "assistant", "system"):
            raise ClientError(
                f"Invalid value: '{role}'. Supported values are: 'user', 'assistant' and 'system'.", "invalid_value", "item.role"
            )
        content = require(item, "content", list, "item.content")
        wire["role"] = role
        wire["content"] = []
        for index, part in enumerate(content):
            parsed, part_audio = _parse_part(part, role, f"item.content[{index}]", input_format, output_format)
            wire["content"].append(parsed)
            if part_audio is not None and audio is None:
                audio = part_audio
    elif kind == "function_call":
        wire["name"] = require(item, "name", str, "item.name")
        wire["arguments"] = require(item, "arguments", str, "item.arguments")
        wire["call_id"] = item["call_id"] if isinstance(item.get("call_id"), str) else "call_" + wire["id"][-16:]
    elif kind == "function_call_output":
        wire["call_id"] = require(item, "call_id", str, "item.call_id")
        wire["output"] = require(item, "output", str, "item.output")
    else:
        raise ClientError(
            f"Invalid value: '{kind}'. Supported values are: 'message', 'function_call' and 'function_call_output'.",
            "invalid_value",
            "item.type",
        )
    return Item(wire, audio, len(audio) if audio is not None else 0)


_PART_TYPES = {
    "user": ("input_text", "input_audio", "input_image"),
    "system": ("input_text",),
    "assistant": ("output_text", "output_audio"),
}


def _parse_part(
    part: Any, role: str, param: str, input_format: str, output_format: str
) -> tuple[dict[str, Any], np.ndarray | None]:
    check_type(part, dict, param)
    kind = require(part, "type", str, f"{param}.type")
    allowed = _PART_TYPES[role]
    if kind not in allowed:
        raise ClientError(
            f"Invalid value: '{kind}'. Supported values for a {role} message are: {', '.join(allowed)}.",
            "invalid_value",
            f"{param}.type",
        )
    if kind in ("input_text", "output_text"):
        return {"type": kind, "text": require(part, "text", str, f"{param}.text")}, None
    if kind == "input_image":
        parsed = {"type": kind, "image_url": require(part, "image_url", str, f"{param}.image_url")}
        if part.get("detail") in ("auto", "low", "high"):
            parsed["detail"] = part["detail"]
        return parsed, None
    raw = decode_b64(require(part, "audio", str, f"{param}.audio"), f"{param}.audio")
    samples = decode_audio(raw, input_format if kind == "input_audio" else output_format)
    transcript = part.get("transcript") if isinstance(part.get("transcript"), str) else None
    return {"type": kind, "transcript": transcript}, samples
