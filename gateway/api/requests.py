"""``POST /calls``: the request body, parsed once and strictly into :class:`OutboundCallSettings` or an ApiError.

Strict means: UTF-8 JSON object, no duplicate keys, no NaN/Infinity, no field the API does not know, every
field of the right type and size. The toll-fraud guard (``gateway.twilio.numbers``) runs on ``to``, and ``from`` must
be one of the gateway's own caller IDs (``TWILIO_FROM_NUMBER``).

Hostile bodies (nesting deep enough to exhaust the recursion limit, integers past Python's digit limit, lone
surrogates, NUL characters) are a 400, never a 500: whatever the body, the answer is an OutboundCallSettings or an
:class:`ApiError`, and every string in the error can be encoded as UTF-8 JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Sequence

from gateway.api.errors import ApiError
from gateway.store import MACHINE_DETECTION_CHOICES, OutboundCallSettings
from gateway.twilio.numbers import destination_refusal, is_e164

MAX_BODY_BYTES = 16 * 1024
MAX_INSTRUCTIONS_CHARS = 8000
MAX_GREETING_CHARS = 2000
MAX_METADATA_BYTES = 4096
MAX_METADATA_ENTRIES = 32
MAX_METADATA_KEY_CHARS = 64
_VOICE = re.compile(r"[A-Za-z0-9_.-]{1,40}")
# C0 and C1 controls and DEL: a metadata key ends up in logs, CSV exports and dashboards.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Valid JSON (\ud800 and \u0000 escapes) but not storable: a lone surrogate cannot be encoded as UTF-8 (the error
# response itself would fail) and PostgreSQL's jsonb refuses U+0000.
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
FIELDS = ("to", "from", "instructions", "voice", "greeting", "metadata", "machine_detection")


def _shown(text: str, limit: int = 40) -> str:
    """A client-supplied string as it may appear in an error message: bounded and escaped."""
    return ascii(text[:limit]) + ("..." if len(text) > limit else "")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise ApiError(400, "invalid_json", f"duplicate key {_shown(name)} in the JSON body")
        result[name] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ApiError(400, "invalid_json", f"{name} is not valid JSON")


def _reject_unstorable(value: Any) -> None:
    """Walk the parsed document (iteratively: it may be nested as deep as the parser allowed) for bad strings."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str) and _UNSTORABLE.search(item):
            raise ApiError(400, "invalid_json", "strings must not contain lone surrogates (\\ud800-\\udfff) or U+0000")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; ApiError 400 for anything else, however malformed or hostile."""
    try:
        text = body.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except RecursionError:
        # json.loads recurses once per nesting level: "[" * 100000 exhausts the interpreter's recursion limit.
        raise ApiError(400, "invalid_json", "the JSON body is nested too deeply") from None
    except ValueError as error:
        # UnicodeDecodeError and JSONDecodeError are ValueErrors, and so is an integer past Python's digit limit
        # (sys.get_int_max_str_digits): all of them are the client's malformed body. The message names the error
        # in the parser's own words, never a piece of the body.
        if isinstance(error, UnicodeDecodeError):
            reason = f"not UTF-8 (byte {error.start})"
        elif isinstance(error, json.JSONDecodeError):
            reason = f"{error.msg} at line {error.lineno} column {error.colno}"
        else:
            reason = str(error).split(":")[0][:120]
        raise ApiError(400, "invalid_json", f"the body is not valid UTF-8 JSON: {reason}") from None
    _reject_unstorable(value)
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


def parse_call_request(body: bytes, *, caller_ids: Sequence[str], allowed_prefixes: Iterable[str],
                       voicemail_configured: bool) -> OutboundCallSettings:
    """The call ``body`` asks for, or ApiError 400/403/413/422.

    ``caller_ids`` are the gateway's own numbers (TWILIO_FROM_NUMBER, first = default): ``from`` must be one of
    them, so an API key cannot present any number the Twilio account happens to own or have verified (another
    team's line, a support number) to the people it calls.
    """
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, "body_too_large", f"the body must be at most {MAX_BODY_BYTES} bytes")
    data = parse_json_object(body)
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        shown = ", ".join(_shown(name) for name in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        raise ApiError(400, "unknown_field", f"unknown field(s): {shown}; known: {', '.join(FIELDS)}",
                       fields=[name[:40] for name in unknown[:10]])

    to = data.get("to")
    if to is None:
        raise ApiError(422, "missing_field", "to: required (E.164, e.g. +14155550100)", field="to")
    if not isinstance(to, str) or not is_e164(to):
        raise _invalid("to", "must be an E.164 number: + then 7 to 15 digits, e.g. +14155550100")

    from_ = data.get("from")
    if from_ is None:
        if not caller_ids:
            raise ApiError(422, "missing_field", "from: required when TWILIO_FROM_NUMBER is not set", field="from")
        from_ = caller_ids[0]
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
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise _invalid("metadata", f"must have at most {MAX_METADATA_ENTRIES} entries, got {len(metadata)}")
    for name in metadata:
        # Keys come back in GET /calls/{sid}, logs and exports: short, and free of control characters.
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_METADATA_KEY_CHARS or _CONTROL.search(name):
            raise _invalid("metadata", f"keys must be 1 to {MAX_METADATA_KEY_CHARS} characters without control "
                                       f"characters, got {_shown(str(name))}")
    size = len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise _invalid("metadata", f"must be at most {MAX_METADATA_BYTES} bytes serialized, got {size}")

    machine_detection = data.get("machine_detection")
    if machine_detection is None:
        machine_detection = "none"
    if not isinstance(machine_detection, str) or machine_detection not in MACHINE_DETECTION_CHOICES:
        raise _invalid("machine_detection", f"must be one of {', '.join(MACHINE_DETECTION_CHOICES)}")
    if machine_detection == "voicemail" and not voicemail_configured:
        raise _invalid("machine_detection", "voicemail needs VOICEMAIL_MESSAGE to be configured")

    if from_ not in caller_ids:
        raise ApiError(403, "caller_id_not_allowed",
                       f"from: {from_} is not one of this gateway's caller IDs (TWILIO_FROM_NUMBER); "
                       "omit from to use the default caller ID", field="from")

    refusal = destination_refusal(to, allowed_prefixes)
    if refusal is not None:
        code, message = refusal
        raise ApiError(403, code, message, field="to")

    return OutboundCallSettings(
        to=to, from_=from_, instructions=instructions, voice=voice, greeting=greeting,
        metadata=dict(metadata), machine_detection=machine_detection,
    )
