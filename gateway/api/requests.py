"""``POST /calls``: the request body, parsed once and strictly into :class:`OutboundCallSettings` or an ApiError.

Strict means: UTF-8 JSON object, no duplicate keys, no NaN/Infinity, no field the API does not know, every
field of the right type and size. The toll-fraud guard (``gateway.twilio.numbers``) runs on ``to``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable

from gateway.api.errors import ApiError
from gateway.store import MACHINE_DETECTION_CHOICES, OutboundCallSettings
from gateway.twilio.numbers import destination_refusal, is_e164

MAX_BODY_BYTES = 16 * 1024
MAX_INSTRUCTIONS_CHARS = 8000
MAX_GREETING_CHARS = 2000
MAX_METADATA_BYTES = 4096
_VOICE = re.compile(r"[A-Za-z0-9_.-]{1,40}")
FIELDS = ("to", "from", "instructions", "voice", "greeting", "metadata", "machine_detection")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise ApiError(400, "invalid_json", f"duplicate key {name!r} in the JSON body")
        result[name] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ApiError(400, "invalid_json", f"{name} is not valid JSON")


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as error:
        raise ApiError(400, "invalid_json", f"the body is not valid UTF-8 JSON: {error}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    return value


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_field", f"{field}: {message}", field=field)


def _optional_text(data: dict[str, Any], field: str, limit: int) -> str | None:
    value = data.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(field, "must be a string")
    if len(value) > limit:
        raise _invalid(field, f"must be at most {limit} characters, got {len(value)}")
    return value if value.strip() else None


def parse_call_request(body: bytes, *, default_from: str, allowed_prefixes: Iterable[str],
                       voicemail_configured: bool) -> OutboundCallSettings:
    data = parse_json_object(body)
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field(s): {', '.join(unknown)}; known: {', '.join(FIELDS)}",
                       fields=unknown)

    to = data.get("to")
    if to is None:
        raise ApiError(422, "missing_field", "to: required (E.164, e.g. +14155550100)", field="to")
    if not isinstance(to, str) or not is_e164(to):
        raise _invalid("to", "must be an E.164 number: + then 7 to 15 digits, e.g. +14155550100")

    from_ = data.get("from")
    if from_ is None:
        if not default_from:
            raise ApiError(422, "missing_field", "from: required when TWILIO_FROM_NUMBER is not set", field="from")
        from_ = default_from
    elif not isinstance(from_, str) or not is_e164(from_):
        raise _invalid("from", "must be an E.164 number: + then 7 to 15 digits")

    instructions = _optional_text(data, "instructions", MAX_INSTRUCTIONS_CHARS)
    greeting = _optional_text(data, "greeting", MAX_GREETING_CHARS)

    voice = data.get("voice")
    if voice is not None and (not isinstance(voice, str) or _VOICE.fullmatch(voice) is None):
        raise _invalid("voice", "must be a voice name: 1 to 40 letters, digits, '_', '-' or '.'")

    metadata = data.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _invalid("metadata", "must be an object whose values are strings")
    size = len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise _invalid("metadata", f"must be at most {MAX_METADATA_BYTES} bytes serialized, got {size}")

    machine_detection = data.get("machine_detection")
    if machine_detection is None:
        machine_detection = "none"
    if machine_detection not in MACHINE_DETECTION_CHOICES:
        raise _invalid("machine_detection", f"must be one of {', '.join(MACHINE_DETECTION_CHOICES)}")
    if machine_detection == "voicemail" and not voicemail_configured:
        raise _invalid("machine_detection", "voicemail needs VOICEMAIL_MESSAGE to be configured")

    refusal = destination_refusal(to, allowed_prefixes)
    if refusal is not None:
        code, message = refusal
        raise ApiError(403, code, message, field="to")

    return OutboundCallSettings(
        to=to, from_=from_, instructions=instructions, voice=voice, greeting=greeting,
        metadata=dict(metadata), machine_detection=machine_detection,
    )
