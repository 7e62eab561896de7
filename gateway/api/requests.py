"""``POST /calls``: the request body, parsed once and strictly into :class:`OutboundCallSettings` or an ApiError;
``GET /calls``: the query string, parsed the same way into a :class:`CallQuery` (:func:`parse_call_query`).

Strict means: UTF-8 JSON object, no duplicate keys, no NaN/Infinity, no field the API does not know, every
field of the right type and size. The fields, their types and their bounds are one pydantic model,
:class:`CallRequest`: it validates the body, and the OpenAPI description (``gateway.api.openapi``) is generated from
it, so the two cannot disagree. What a schema cannot say is checked after it: the toll-fraud guard
(``gateway.twilio.numbers``) runs on ``to``, ``from`` must be one of the gateway's own caller IDs
(``TWILIO_FROM_NUMBER``), metadata keys hold no control characters and fit in ``MAX_METADATA_BYTES``.

Hostile bodies (nesting deep enough to exhaust the recursion limit, integers past Python's digit limit, lone
surrogates, NUL characters) are a 400, never a 500: whatever the body, the answer is an OutboundCallSettings or an
:class:`ApiError`, and every string in the error can be encoded as UTF-8 JSON.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Iterable, Literal, Sequence

import pydantic
from pydantic import ConfigDict, Field, StringConstraints

from gateway.api.errors import ApiError
from gateway.store import (
    CALL_STATUSES, DEFAULT_PAGE_SIZE, DIRECTION_FILTERS, MACHINE_DETECTION_CHOICES, MAX_PAGE_SIZE, CallQuery,
    OutboundCallSettings, decode_cursor,
)
from gateway.twilio.numbers import destination_refusal, is_e164

MAX_BODY_BYTES = 16 * 1024
MAX_INSTRUCTIONS_CHARS = 8000
MAX_GREETING_CHARS = 2000
MAX_METADATA_BYTES = 4096
MAX_METADATA_ENTRIES = 32
MAX_METADATA_KEY_CHARS = 64
E164_PATTERN = r"^\+[1-9][0-9]{6,14}$"  # gateway.twilio.numbers.is_e164, as a JSON Schema pattern
# C0 and C1 controls and DEL: a metadata key ends up in logs, CSV exports and dashboards.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Valid JSON (\ud800 and \u0000 escapes) but not storable: a lone surrogate cannot be encoded as UTF-8 (the error
# response itself would fail) and PostgreSQL's jsonb refuses U+0000.
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")

E164 = Annotated[str, StringConstraints(pattern=E164_PATTERN)]


class CallRequest(pydantic.BaseModel):
    """The body of `POST /calls`. A field sent as `null` counts as absent."""

    model_config = ConfigDict(extra="forbid", strict=True)

    to: E164 = Field(description="Destination (E.164). Must start with an OUTBOUND_ALLOWED_PREFIXES entry; "
                                 "premium-rate prefixes are always refused.", examples=["+14155550100"])
    from_: E164 | None = Field(None, alias="from", description="Caller ID: one of TWILIO_FROM_NUMBER. "
                                                               "Default: the first of them.")
    instructions: str | None = Field(None, max_length=MAX_INSTRUCTIONS_CHARS,
                                     description="Model instructions for this call. Default: INSTRUCTIONS.")
    voice: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,40}$")] | None = Field(
        None, description="Model voice for this call. Default: VOICE.")
    greeting: str | None = Field(None, max_length=MAX_GREETING_CHARS,
                                 description="What the agent says first, once the call is answered.")
    metadata: dict[Annotated[str, StringConstraints(min_length=1, max_length=MAX_METADATA_KEY_CHARS)], str] | None = (
        Field(None, max_length=MAX_METADATA_ENTRIES,
              description="Free key/value strings kept with the call: keys without control characters, at most "
                          f"{MAX_METADATA_BYTES} bytes serialized."))
    machine_detection: Literal[MACHINE_DETECTION_CHOICES] | None = Field(  # type: ignore[valid-type]
        None, description="If an answering machine picks up: `none` (the default: the agent talks), `hangup`, or "
                          "`voicemail` (after the beep, say VOICEMAIL_MESSAGE and hang up).")
    record: bool | None = Field(None, description="Record the call's audio (a stereo WAV: the callee left, the agent "
                                                  "right, `GET /calls/{sid}/recording`): the callee's consent. "
                                                  "Default: RECORD_AUDIO. `false` keeps no audio of the call at all. "
                                                  "`true` needs RECORD_CALLS_DIR.")


class TwilioStatusCallback(pydantic.BaseModel):
    """The parameters of Twilio's status and answering-machine callbacks that the gateway reads (form-encoded)."""

    model_config = ConfigDict(extra="allow")

    CallSid: str = Field(pattern=r"^CA[0-9a-fA-F]{32}$")
    CallStatus: Literal[CALL_STATUSES] | None = None  # type: ignore[valid-type]
    CallDuration: str | None = Field(None, description="Seconds, once the call has completed.")
    AnsweredBy: str | None = Field(None, description="human, machine_start, machine_end_beep, fax, unknown, ...")


FIELDS = tuple(field.alias or name for name, field in CallRequest.model_fields.items())
# What a client is told when a field does not fit (pydantic's own words name patterns, not numbers).
_FIELD_RULES = {
    "to": "must be an E.164 number: + then 7 to 15 digits, e.g. +14155550100",
    "from": "must be an E.164 number: + then 7 to 15 digits",
    "instructions": f"must be a string of at most {MAX_INSTRUCTIONS_CHARS} characters",
    "voice": "must be a voice name: 1 to 40 letters, digits, '_', '-' or '.'",
    "greeting": f"must be a string of at most {MAX_GREETING_CHARS} characters",
    "metadata": f"must be an object of at most {MAX_METADATA_ENTRIES} entries whose keys are 1 to "
                f"{MAX_METADATA_KEY_CHARS} characters and whose values are strings",
    "machine_detection": f"must be one of {', '.join(MACHINE_DETECTION_CHOICES)}",
    "record": "must be true or false",
}


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


def _field_error(errors: list[Any]) -> ApiError:
    """The 422 for the first field (in the model's order) pydantic refused."""
    by_field = {str(error["loc"][0]): error for error in reversed(errors) if error["loc"]}
    field = next((name for name in FIELDS if name in by_field), FIELDS[0])
    if by_field.get(field, {}).get("type") == "missing":
        return ApiError(422, "missing_field", f"{field}: required (E.164, e.g. +14155550100)", field=field)
    return _invalid(field, _FIELD_RULES[field])


def parse_call_request(body: bytes, *, caller_ids: Sequence[str], allowed_prefixes: Iterable[str],
                       voicemail_configured: bool, recording_configured: bool = False) -> OutboundCallSettings:
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
    try:
        request = CallRequest.model_validate({name: value for name, value in data.items() if value is not None})
    except pydantic.ValidationError as error:
        raise _field_error(error.errors(include_url=False)) from None

    metadata = request.metadata or {}
    for name in metadata:
        # Keys come back in GET /calls/{sid}, logs and exports: free of control characters.
        if _CONTROL.search(name):
            raise _invalid("metadata", f"keys must be 1 to {MAX_METADATA_KEY_CHARS} characters without control "
                                       f"characters, got {_shown(name)}")
    size = len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise _invalid("metadata", f"must be at most {MAX_METADATA_BYTES} bytes serialized, got {size}")
    machine_detection = request.machine_detection or "none"
    if machine_detection == "voicemail" and not voicemail_configured:
        raise _invalid("machine_detection", "voicemail needs VOICEMAIL_MESSAGE to be configured")
    if request.record and not recording_configured:
        raise _invalid("record", "recording needs RECORD_CALLS_DIR to be configured")

    from_ = request.from_
    if from_ is None:
        if not caller_ids:
            raise ApiError(422, "missing_field", "from: required when TWILIO_FROM_NUMBER is not set", field="from")
        from_ = caller_ids[0]
    if from_ not in caller_ids:
        raise ApiError(403, "caller_id_not_allowed",
                       f"from: {from_} is not one of this gateway's caller IDs (TWILIO_FROM_NUMBER); "
                       "omit from to use the default caller ID", field="from")

    refusal = destination_refusal(request.to, allowed_prefixes)
    if refusal is not None:
        code, message = refusal
        raise ApiError(403, code, message, field="to")

    def text(value: str | None) -> str | None:
        return value if value and value.strip() else None

    return OutboundCallSettings(
        to=request.to, from_=from_, instructions=text(request.instructions), voice=request.voice,
        greeting=text(request.greeting), metadata=dict(metadata), machine_detection=machine_detection,
        record=request.record,
    )


# ---- GET /calls: the query string, parsed once and strictly into a CallQuery or an ApiError 400

QUERY_PARAMETERS = ("since", "until", "direction", "outcome", "number", "limit", "cursor")
MAX_QUERY_VALUE_CHARS = 256
_OUTCOME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_EPOCH = re.compile(r"[0-9]{1,11}(?:\.[0-9]{1,9})?")


def _bad_parameter(name: str, message: str) -> ApiError:
    return ApiError(400, "invalid_parameter", f"{name}: {message}", field=name)


def _parse_time(name: str, value: str) -> float:
    """ISO 8601 (``2025-01-31T09:00:00Z``; without an offset: UTC) or seconds since the epoch."""
    from datetime import UTC, datetime

    if _EPOCH.fullmatch(value):
        return float(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _bad_parameter(name, "must be an ISO 8601 time (2025-01-31T09:00:00Z) or seconds since the epoch, "
                                   f"got {_shown(value)}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.timestamp()
    except (OverflowError, ValueError):
        raise _bad_parameter(name, f"out of range, got {_shown(value)}") from None


def parse_call_query(items: Iterable[tuple[str, str]], *, api_key_id: str | None) -> CallQuery:
    """``GET /calls``'s query parameters as a CallQuery scoped to ``api_key_id`` (None: an operator key, every
    call), or ApiError 400 (``unknown_parameter``, ``invalid_parameter`` with the parameter in ``field``)."""
    values: dict[str, str] = {}
    unknown: list[str] = []
    for name, value in items:
        if name not in QUERY_PARAMETERS:
            unknown.append(name)
            continue
        if name in values:
            raise _bad_parameter(name, "given more than once")
        if len(value) > MAX_QUERY_VALUE_CHARS or _UNSTORABLE.search(value) or _CONTROL.search(value):
            raise _bad_parameter(name, f"must be at most {MAX_QUERY_VALUE_CHARS} printable characters")
        values[name] = value
    if unknown:
        shown = ", ".join(_shown(name) for name in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        raise ApiError(400, "unknown_parameter", f"unknown query parameter(s): {shown}; known: "
                       f"{', '.join(QUERY_PARAMETERS)}", fields=[name[:40] for name in unknown[:10]])

    since = _parse_time("since", values["since"]) if "since" in values else None
    until = _parse_time("until", values["until"]) if "until" in values else None
    if since is not None and until is not None and since >= until:
        raise _bad_parameter("until", "must be later than since")
    direction = values.get("direction")
    if direction is not None and direction not in DIRECTION_FILTERS:
        raise _bad_parameter("direction", f"must be one of {', '.join(DIRECTION_FILTERS)}, got {_shown(direction)}")
    outcome = values.get("outcome")
    if outcome is not None and not _OUTCOME.fullmatch(outcome):
        raise _bad_parameter("outcome", "must be an outcome word: a lowercase letter, then up to 31 lowercase "
                                        f"letters, digits, '_' or '-', got {_shown(outcome)}")
    number = values.get("number")
    if number is not None and number.startswith(" "):
        number = "+" + number[1:]  # ?number=+1415... unescaped: the form decoding made the + a space
    if number is not None and not is_e164(number):
        raise _bad_parameter("number", "must be an E.164 number (+ then 7 to 15 digits; write + as %2B in a URL), "
                                       f"got {_shown(number)}")
    limit = DEFAULT_PAGE_SIZE
    if "limit" in values:
        raw = values["limit"]
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 4 and 1 <= int(raw) <= MAX_PAGE_SIZE):
            raise _bad_parameter("limit", f"must be a whole number from 1 to {MAX_PAGE_SIZE}, got {_shown(raw)}")
        limit = int(raw)
    after = None
    if "cursor" in values:
        try:
            after = decode_cursor(values["cursor"])
        except ValueError:
            raise _bad_parameter("cursor", "not a cursor this API returned (next_cursor)") from None
    return CallQuery(since=since, until=until, direction=direction, outcome=outcome, number=number,
                     api_key_id=api_key_id, after=after, limit=limit)


class SayRequest(pydantic.BaseModel):
    """``POST /calls/{sid}/say``: a message for the agent of a live call, or new instructions for the rest of it."""

    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True)

    text: str = pydantic.Field(min_length=1, max_length=2000, description="What the agent is told.")
    as_: Literal["message", "instructions"] = pydantic.Field(
        "message", alias="as", description="`message`: a word from the operator, answered at the next pause; "
                                            "`instructions`: replaces the session's instructions.")
