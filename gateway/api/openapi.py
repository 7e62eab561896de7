"""The OpenAPI 3.1 description served at ``GET /openapi.json``, generated.

* Paths and methods come from the app's route table: a route cannot be missing from the document.
* Bodies are the pydantic models the API validates requests with (``gateway.api.requests``) and answers with
  (``gateway.api.responses``): their JSON Schemas become ``components.schemas``, so a field, a type or a bound
  changes in one place.
* What each endpoint is, is one entry of :data:`OPERATIONS`: an :class:`Operation` naming its summary, body model,
  answers and whether it takes an API key or a Twilio signature. Adding an endpoint is adding its route and one
  entry. Path parameters (``{sid}``) are described from :data:`PATH_PARAMETERS`; a route with no entry still
  appears, with its path parameters and a minimal description.

An entry may also be a plain OpenAPI operation object (a dict), with schemas by hand in :data:`SCHEMAS`, for
answers that have no model yet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

import pydantic
from pydantic.json_schema import GenerateJsonSchema, models_json_schema
from starlette.applications import Starlette
from starlette.routing import Route

from gateway import __version__
from gateway.api.requests import E164_PATTERN, MAX_BODY_BYTES, CallRequest, SayRequest, TwilioStatusCallback
from gateway.api.responses import CALL_SID_PATTERN, CallCreated, ControlAccepted, Error
from gateway.config import Settings
from gateway.store import CALL_STATUSES, DIRECTION_FILTERS, MACHINE_DETECTION_CHOICES, MAX_PAGE_SIZE, DEFAULT_PAGE_SIZE


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json(_ref("Error"))}


@dataclass(frozen=True, slots=True)
class Answer:
    """One response of an operation: a description, and a body (a model, or just a media type)."""

    description: str
    model: type[pydantic.BaseModel] | None = None
    media_type: str | None = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)  # header name -> description (a string value)


def error(description: str, **headers: str) -> Answer:
    """An answer with the API's one error body (:class:`gateway.api.responses.Error`)."""
    return Answer(description, Error, headers=headers)


def text(description: str) -> Answer:
    """A short text/plain answer (what Twilio's webhooks get when they are refused)."""
    return Answer(description, media_type="text/plain")


AUTH_ANSWERS = {
    401: error("Missing or invalid bearer API key (`unauthorized`)."),
    429: error("An invalid key that failed too often from this address, alone or with other unknown keys "
               "(`too_many_auth_failures`); a valid key is never throttled.",
               **{"Retry-After": "Seconds."}),
    503: error("The API is disabled: no API_KEYS configured (`outbound_disabled`)."),
}
WEBHOOK_ANSWERS = {
    400: text("CallSid missing or malformed."),
    403: text("Bad X-Twilio-Signature."),
    408: text("The body did not arrive in time."),
    413: text("Body too large."),
}
PATH_PARAMETERS = {
    "sid": {"name": "sid", "in": "path", "required": True, "description": "The Twilio Call SID.",
            "schema": {"type": "string", "pattern": CALL_SID_PATTERN}},
}
_SIGNATURE = {"name": "X-Twilio-Signature", "in": "header", "required": False, "schema": {"type": "string"},
              "description": "Required when TWILIO_AUTH_TOKEN is set."}


@dataclass(frozen=True, slots=True)
class Operation:
    """What one route is: its summary, body and answers. ``api_key``: bearer auth, with the answers every keyed
    endpoint can give (:data:`AUTH_ANSWERS`); ``signed``: Twilio calls it, with ``X-Twilio-Signature``."""

    operation_id: str
    summary: str
    answers: Mapping[int, Answer]
    body: type[pydantic.BaseModel] | None = None
    body_media_type: str = "application/json"
    api_key: bool = False
    signed: bool = False

    def models(self) -> list[type[pydantic.BaseModel]]:
        return [m for m in (self.body, *(a.model for a in self.answers.values())) if m is not None]

    def render(self, path: str) -> dict[str, Any]:
        operation: dict[str, Any] = {"operationId": self.operation_id, "summary": self.summary}
        parameters = path_parameters(path) + ([_SIGNATURE] if self.signed else [])
        if parameters:
            operation["parameters"] = parameters
        if self.api_key:
            operation["security"] = _BEARER
        if self.body is not None:
            operation["requestBody"] = {"required": True,
                                        "content": {self.body_media_type: {"schema": _ref(self.body.__name__)}}}
        answers = {**(AUTH_ANSWERS if self.api_key else {}), **(WEBHOOK_ANSWERS if self.signed else {}),
                   **self.answers}
        operation["responses"] = {str(status): _render_answer(answers[status]) for status in sorted(answers)}
        return operation


def _render_answer(answer: Answer) -> dict[str, Any]:
    rendered: dict[str, Any] = {"description": answer.description}
    if answer.media_type is not None:
        rendered["content"] = {answer.media_type: {"schema": _ref(answer.model.__name__)} if answer.model else {}}
    if answer.headers:
        rendered["headers"] = {name: {"description": about, "schema": {"type": "string"}}
                               for name, about in answer.headers.items()}
    return rendered


def path_parameters(path: str) -> list[dict[str, Any]]:
    """The parameters of a path's ``{name}`` segments (a name without an entry: any string)."""
    return [PATH_PARAMETERS.get(name) or {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)(?::\w+)?}", path)]


_SID_PARAMETER = PATH_PARAMETERS["sid"]
_BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]
_AUTH_ERRORS = {str(status): _render_answer(answer) for status, answer in AUTH_ANSWERS.items() if status != 429}

_CALL_SUMMARY_PROPERTIES: dict[str, Any] = {
    "call_sid": {"type": "string"},
    "stream_sid": {"type": ["string", "null"]},
    "status": {"type": "string", "enum": list(CALL_STATUSES),
               "description": "Twilio's status of the call; `lost` when the instance holding it stopped before "
                              "its end was written (the record keeps what was known)."},
    "direction": {"type": "string", "examples": ["outbound-api", "inbound"]},
    "to": {"type": "string"},
    "from": {"type": "string"},
    "answered_by": {"type": ["string", "null"], "description": "Twilio's AMD result: human, "
                    "machine_start, machine_end_beep, fax, unknown, ..."},
    "duration": {"type": ["integer", "null"], "description": "Seconds, once the call has completed."},
    "machine_detection": {"type": "string", "enum": list(MACHINE_DETECTION_CHOICES)},
    "machine_action": {"type": ["string", "null"], "enum": ["voicemail", "hangup", None]},
    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
    "api_key_id": {"type": ["string", "null"], "description": "Id (a hash prefix) of the key that placed the call."},
    "created_at": {"type": "string", "format": "date-time",
                   "description": "When the call was placed (outbound) or its stream started (inbound)."},
    "updated_at": {"type": "string", "format": "date-time"},
    "started_at": {"type": ["string", "null"], "format": "date-time", "description": "The media stream's start."},
    "ended_at": {"type": ["string", "null"], "format": "date-time"},
    "outcome": {"type": ["string", "null"], "examples": ["completed", "error", "voicemail"]},
    "ended_by": {"type": ["string", "null"],
                 "examples": ["caller", "agent", "api", "error", "budget", "drain", "time_limit"]},
    "end_reason": {"type": ["string", "null"], "description": "The gateway's words for why the call ended."},
    "model": {"type": ["string", "null"], "description": "The Realtime model that answered."},
    "turn_count": {"type": "integer", "description": "Turns, including any past the record's bound."},
    "barge_ins": {"type": "integer"},
    "tool_call_count": {"type": "integer"},
    "reconnects": _ref("SessionChanges"),
    "rollovers": _ref("SessionChanges"),
    "usage": {"type": "object", "additionalProperties": {"type": "integer"},
              "description": "Tokens by kind (input_audio, input_text, input_cached_audio, output_audio, ...)."},
    "cost_usd": {"type": ["number", "null"]},
    "recording": {"type": "boolean", "description": "The call was recorded."},
    "holder": {"type": ["string", "null"],
               "description": "The instance (INSTANCE_ID) that held the live call, once its stream started."},
}

_TIME_FORMAT = "ISO 8601 (`2025-01-31T09:00:00Z`; no offset: UTC) or seconds since the epoch"
_LIST_PARAMETERS = [
    {"name": "since", "in": "query", "schema": {"type": "string", "maxLength": 256},
     "description": f"Calls created at or after this time: {_TIME_FORMAT}."},
    {"name": "until", "in": "query", "schema": {"type": "string", "maxLength": 256},
     "description": f"Calls created before this time: {_TIME_FORMAT}."},
    {"name": "direction", "in": "query", "schema": {"type": "string", "enum": list(DIRECTION_FILTERS)}},
    {"name": "outcome", "in": "query", "schema": {"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,31}$"}},
    {"name": "number", "in": "query", "schema": {"type": "string", "pattern": E164_PATTERN},
     "description": "Calls from or to this number (E.164; `+` written `%2B`)."},
    {"name": "limit", "in": "query",
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": DEFAULT_PAGE_SIZE}},
    {"name": "cursor", "in": "query", "schema": {"type": "string", "maxLength": 256},
     "description": "The `next_cursor` of the previous page."},
]

# Schemas written by hand, for answers that have no model yet (the models' schemas are added to these).
SCHEMAS: dict[str, Any] = {
    "Call": {
        "type": "object",
        "description": "A call record with its turns, tool calls and timeline (`GET /calls/{sid}`).",
        "required": ["call_sid", "status", "direction", "to", "from", "created_at", "updated_at"],
        "properties": {
            **_CALL_SUMMARY_PROPERTIES,
            "turns": {"type": "array", "items": _ref("Turn")},
            "tool_calls": {"type": "array", "items": _ref("ToolRun")},
            "timeline": {"type": "array", "items": _ref("TimelineEntry"),
                         "description": "Turns, tool calls, reconnects and rollovers, by time since the call "
                                        "started."},
        },
    },
    "CallSummary": {
        "type": "object",
        "description": "A call record as `GET /calls` lists it: no turns, tool calls or timeline.",
        "required": ["call_sid", "status", "direction", "to", "from", "created_at", "updated_at"],
        "properties": _CALL_SUMMARY_PROPERTIES,
    },
    "CallList": {
        "type": "object",
        "required": ["calls", "next_cursor"],
        "properties": {
            "calls": {"type": "array", "items": _ref("CallSummary"), "maxItems": MAX_PAGE_SIZE},
            "next_cursor": {"type": ["string", "null"],
                            "description": "Pass as `cursor` for the next page; null on the last page."},
        },
    },
    "Turn": {
        "type": "object",
        "properties": {
            "caller_transcript": {"type": ["string", "null"],
                                  "description": "What the caller said (null when transcription is off)."},
            "agent_transcript": {"type": "string",
                                 "description": "What the agent said, cut to what the caller heard."},
            "latency_ms": {"type": ["integer", "null"],
                           "description": "Caller stopped speaking -> first agent audio sent to Twilio."},
            "model_ttfa_ms": {"type": ["integer", "null"], "description": "The model's time to first audio."},
            "barged_in": {"type": "boolean", "description": "The caller spoke over the agent, which was cut."},
            "t_ms": {"type": ["integer", "null"], "description": "When the turn began, ms since the call started."},
            "heard_ms": {"type": ["integer", "null"], "description": "Agent audio the caller heard, ms."},
            "response_id": {"type": ["string", "null"]},
        },
    },
    "ToolRun": {
        "type": "object",
        "required": ["name", "outcome"],
        "properties": {
            "name": {"type": "string"},
            "outcome": {"type": "string", "examples": ["ok", "error", "timeout", "cancelled"]},
            "duration_ms": {"type": ["integer", "null"]},
            "t_ms": {"type": ["integer", "null"]},
            "arguments": {"type": ["string", "null"],
                          "description": "The model's arguments (JSON text), at most 2000 characters (a cut one ends "
                                         "with \u2026)."},
            "result": {"type": ["string", "null"],
                       "description": "What the tool returned to the model, at most 2000 characters."},
        },
    },
    "SessionChanges": {
        "type": "object",
        "description": "Model sessions replaced during the call: how many, by cause, and when.",
        "required": ["count", "causes", "events"],
        "properties": {
            "count": {"type": "integer"},
            "causes": {"type": "object", "additionalProperties": {"type": "integer"}},
            "events": {"type": "array", "items": {"type": "object", "properties": {
                "cause": {"type": "string"}, "t_ms": {"type": ["integer", "null"]}}}},
        },
    },
    "TimelineEntry": {
        "type": "object",
        "required": ["t_ms", "kind"],
        "properties": {
            "t_ms": {"type": "integer"},
            "kind": {"type": "string", "enum": ["turn", "tool_call", "reconnect", "rollover"]},
        },
    },
}

_CONTROL_FAILURES = {
    503: error("The shared state is unavailable (`state_unavailable`).", **{"Retry-After": "Seconds to wait."}),
    504: error("The instance holding the live call did not answer in time (`holder_not_answering`)."),
}

OPERATIONS: dict[tuple[str, str], Union[Operation, dict[str, Any]]] = {
    ("/calls", "post"): Operation(
        "createCall", "Place an outbound call with an AI agent on it", body=CallRequest, api_key=True, answers={
            201: Answer("Twilio accepted the call.", CallCreated, headers={"Location": "The call's record."}),
            400: error("Not JSON, not an object, or an unknown field (`invalid_json`, `invalid_body`, "
                       "`unknown_field`)."),
            403: error("Destination refused (`destination_not_allowed`, `destination_premium_rate`), or `from` is "
                       "not a configured caller ID (`caller_id_not_allowed`)."),
            408: error("The body did not arrive in time (`body_timeout`)."),
            413: error(f"Body over {MAX_BODY_BYTES} bytes (`body_too_large`)."),
            415: error("Content-Type is not application/json (`unsupported_media_type`)."),
            422: error("A field is missing or invalid (`missing_field`, `invalid_field`, with `field`)."),
            429: error("Per-key rate limit (`rate_limited`), an invalid key that failed too often from this "
                       "address (`too_many_auth_failures`), or the day's budget is spent (`daily_budget_reached`).",
                       **{"Retry-After": "Seconds."}),
            502: error("Twilio refused or could not be reached (`twilio_error` with `twilio_code`, "
                       "`twilio_unreachable`)."),
            503: error("Disabled or not configured (`outbound_disabled`, `twilio_not_configured`, "
                       "`public_url_not_configured`), draining (`draining`), at MAX_CALLS (`at_capacity`), the "
                       "shared rate limiter (Redis) is unreachable (`rate_limiter_unavailable`: closed, never "
                       "unlimited), or today's cost total cannot be read (`budget_unavailable`: closed)."),
        }),
    ("/calls", "get"): {
        "operationId": "listCalls",
        "summary": "Call records, newest first: the outbound calls this key placed; every call (inbound included) "
                   "for an operator key (OPERATOR_API_KEYS, or the only key configured)",
        "security": _BEARER,
        "parameters": _LIST_PARAMETERS,
        "responses": {
            "200": {"description": "One page of calls.", "content": _json(_ref("CallList"))},
            "400": _error("A query parameter is unknown (`unknown_parameter`) or invalid (`invalid_parameter`, "
                          "with `field`)."),
            **_AUTH_ERRORS,
        },
    },
    ("/calls/{sid}", "get"): {
        "operationId": "getCall",
        "summary": "A call's record, with its turns, tool calls and timeline (a key sees the calls it placed, an "
                   "operator key every call)",
        "security": _BEARER,
        "parameters": [_SID_PARAMETER],
        "responses": {
            "200": {"description": "The call.", "content": _json(_ref("Call"))},
            "404": _error("Unknown call (`call_not_found`)."),
            **_AUTH_ERRORS,
        },
    },
    ("/calls/{sid}/hangup", "post"): Operation(
        "hangupCall", "End a call: a live one through the instance holding it (any instance takes the request); "
                      "one still queued or ringing, through Twilio", api_key=True, answers={
            202: Answer("Ending it: a live call is `completed` (its holder hangs up); one still ringing, Twilio's "
                        "status for it.", CallCreated),
            404: error("Unknown call (`call_not_found`)."),
            409: error("The call has already ended (`call_already_ended`)."),
            502: error("Twilio refused (`twilio_error`) or could not be reached (`twilio_unreachable`)."),
            **_CONTROL_FAILURES,
        }),
    ("/calls/{sid}/transfer", "post"): Operation(
        "transferCall", "Transfer a live call to TRANSFER_NUMBER (the agent announces it first), from any instance",
        api_key=True, answers={
            202: Answer("The instance holding the call accepted.", ControlAccepted),
            404: error("The call is not in progress on any instance (`call_not_live`, `call_not_found`)."),
            409: error("One transfer per call: one is under way (`transfer_in_progress`) or Twilio refused it "
                       "(`transfer_already_failed`); or no TRANSFER_NUMBER is configured (`transfer_not_configured`)."),
            **_CONTROL_FAILURES,
        }),
    ("/calls/{sid}/say", "post"): Operation(
        "sayToCall", "Give the agent of a live call a message, or new instructions, from any instance",
        api_key=True, body=SayRequest, answers={
            202: Answer("The instance holding the call accepted.", ControlAccepted),
            400: error("Invalid body (`invalid_text`, `invalid_as`, `invalid_request`, `invalid_json`)."),
            404: error("The call is not in progress on any instance (`call_not_live`, `call_not_found`)."),
            408: error("The body did not arrive in time (`body_timeout`)."),
            413: error("Body over 8192 bytes (`body_too_large`)."),
            415: error("The body is not JSON (`unsupported_media_type`)."),
            **_CONTROL_FAILURES,
        }),
    ("/twilio/call-status", "post"): Operation(
        "twilioCallStatus", "Twilio's status and answering-machine callbacks", signed=True,
        body=TwilioStatusCallback, body_media_type="application/x-www-form-urlencoded",
        answers={204: Answer("Recorded.", media_type=None)}),
    ("/twilio/answer", "post"): Operation(
        "twilioAnswer", "Twilio asks for an answered outbound call's TwiML: <Connect><Stream> with a stream "
                        "credential bound to the CallSid", signed=True,
        body=TwilioStatusCallback, body_media_type="application/x-www-form-urlencoded",
        answers={200: Answer("TwiML: the stream, a busy message at MAX_CALLS, or a hang-up for a call this gateway "
                             "did not place.", media_type="application/xml")}),
    ("/openapi.json", "get"): Operation("openapi", "This document", answers={
        200: Answer("OpenAPI 3.1 document.")}),
    ("/incoming-call", "get"): Operation(
        "incomingCallGet", "Twilio voice webhook for inbound calls: answers <Connect><Stream> TwiML", signed=True,
        answers={200: Answer("TwiML.", media_type="application/xml")}),
    ("/incoming-call", "post"): Operation(
        "incomingCall", "Twilio voice webhook for inbound calls: answers <Connect><Stream> TwiML", signed=True,
        body=TwilioStatusCallback, body_media_type="application/x-www-form-urlencoded",
        answers={200: Answer("TwiML.", media_type="application/xml")}),
    ("/readyz", "get"): Operation(
        "readyz", "Readiness for a load balancer: 503 while draining (after SIGTERM), at MAX_CALLS, or while the "
                  "shared state does not answer", answers={
            200: Answer("Taking calls."),
            503: Answer("Not taking new calls (`reason`: draining, at MAX_CALLS, shared state unavailable; "
                        "`shared_state` says more)."),
        }),
    ("/healthz", "get"): Operation("healthz", "Liveness, with the number of calls in progress and the shared "
                                   "state's health (`shared_state`: 200 whatever it says)", answers={
        200: Answer("OK.")}),
}


def http_routes(app: Starlette) -> list[tuple[str, str]]:
    """(path, method) of every HTTP route (WebSocket routes have no OpenAPI description); HEAD omitted."""
    result = []
    for route in app.routes:
        if isinstance(route, Route):
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    result.append((route.path, method.lower()))
    return result


class _Schemas(GenerateJsonSchema):
    """JSON Schema without pydantic's generated titles: a component's name is its title."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def model_schemas(models: list[type[pydantic.BaseModel]]) -> dict[str, Any]:
    """``components.schemas`` for these models and every model they use, keyed by class name."""
    _, top = models_json_schema([(model, "validation") for model in dict.fromkeys(models)],
                                ref_template="#/components/schemas/{model}", schema_generator=_Schemas)
    schemas = top.get("$defs", {})
    for schema in schemas.values():
        schema.pop("title", None)
    return schemas


def openapi_document(app: Starlette, settings: Settings) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    models: list[type[pydantic.BaseModel]] = [Error]
    for path, method in http_routes(app):
        entry = OPERATIONS.get((path, method))
        if isinstance(entry, Operation):
            models.extend(entry.models())
            operation = entry.render(path)
        else:
            operation = entry or {"summary": f"{method.upper()} {path}", "parameters": path_parameters(path),
                                  "responses": {"default": {"description": "See the README."}}}
        paths.setdefault(path, {})[method] = operation
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "gateway",
            "version": __version__,
            "description": "Twilio Media Streams <-> OpenAI Realtime phone gateway: outbound calls, call "
                           "control and call records. Errors are `{\"error\": {\"code\", \"message\"}}`.",
        },
        "paths": paths,
        "components": {
            "schemas": {**SCHEMAS, **model_schemas(models)},
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "One of API_KEYS."}},
        },
    }
    if settings.public_url:
        document["servers"] = [{"url": settings.public_url}]
    return document
