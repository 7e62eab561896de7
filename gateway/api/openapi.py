"""The OpenAPI 3.1 description served at ``GET /openapi.json``.

Paths and methods come from the app's route table, so a route cannot be missing from the document; what each
operation takes and returns is written here, by hand, beside the limits it quotes (``gateway.api.requests``).
A route without an entry in :data:`OPERATIONS` still appears, with a minimal description.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.routing import Route

from gateway import __version__
from gateway.api.requests import MAX_BODY_BYTES, MAX_GREETING_CHARS, MAX_INSTRUCTIONS_CHARS, MAX_METADATA_BYTES
from gateway.config import Settings
from gateway.store import CALL_STATUSES, MACHINE_DETECTION_CHOICES

E164_PATTERN = r"^\+[1-9][0-9]{6,14}$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json(_ref("Error"))}


_SID_PARAMETER = {
    "name": "sid", "in": "path", "required": True, "description": "The Twilio Call SID.",
    "schema": {"type": "string", "pattern": "^CA[0-9a-f]{32}$"},
}
_BEARER = [{"bearerAuth": []}]
_AUTH_ERRORS = {
    "401": _error("Missing or invalid bearer API key (`unauthorized`)."),
    "503": _error("The API is disabled: no API_KEYS configured (`outbound_disabled`)."),
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "examples": ["invalid_field", "twilio_error"]},
                    "message": {"type": "string"},
                    "field": {"type": "string", "description": "The request field at fault, when there is one."},
                    "fields": {"type": "array", "items": {"type": "string"}},
                    "twilio_code": {"type": ["integer", "null"], "description": "Twilio's error code (502 only)."},
                    "twilio_status": {"type": "integer", "description": "Twilio's HTTP status (502 only)."},
                    "call_status": {"type": "string", "description": "The call's status (409 only)."},
                },
            }
        },
    },
    "CallRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["to"],
        "properties": {
            "to": {"type": "string", "pattern": E164_PATTERN, "description":
                   "Destination (E.164). Must start with an OUTBOUND_ALLOWED_PREFIXES entry; premium-rate "
                   "prefixes are always refused.", "examples": ["+14155550100"]},
            "from": {"type": "string", "pattern": E164_PATTERN,
                     "description": "Caller ID (a Twilio number of the account). Default: TWILIO_FROM_NUMBER."},
            "instructions": {"type": "string", "maxLength": MAX_INSTRUCTIONS_CHARS,
                             "description": "Model instructions for this call. Default: INSTRUCTIONS."},
            "voice": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]{1,40}$",
                      "description": "Model voice for this call. Default: VOICE."},
            "greeting": {"type": "string", "maxLength": MAX_GREETING_CHARS,
                         "description": "What the agent says first, once the call is answered."},
            "metadata": {"type": "object", "additionalProperties": {"type": "string"},
                         "description": f"Free key/value strings kept with the call (at most {MAX_METADATA_BYTES} "
                                        "bytes serialized)."},
            "machine_detection": {"type": "string", "enum": list(MACHINE_DETECTION_CHOICES), "default": "none",
                                  "description": "If an answering machine picks up: `none` (the agent talks), "
                                                 "`hangup`, or `voicemail` (after the beep, say VOICEMAIL_MESSAGE "
                                                 "and hang up)."},
        },
    },
    "CallCreated": {
        "type": "object",
        "required": ["call_sid", "status"],
        "properties": {"call_sid": {"type": "string"}, "status": {"type": "string", "enum": list(CALL_STATUSES)}},
    },
    "Call": {
        "type": "object",
        "required": ["call_sid", "status", "direction", "to", "from", "created_at", "updated_at"],
        "properties": {
            "call_sid": {"type": "string"},
            "status": {"type": "string", "enum": list(CALL_STATUSES)},
            "direction": {"type": "string"},
            "to": {"type": "string"},
            "from": {"type": "string"},
            "answered_by": {"type": ["string", "null"], "description": "Twilio's AMD result: human, "
                            "machine_start, machine_end_beep, fax, unknown, ..."},
            "duration": {"type": ["integer", "null"], "description": "Seconds, once the call has completed."},
            "machine_detection": {"type": "string", "enum": list(MACHINE_DETECTION_CHOICES)},
            "machine_action": {"type": ["string", "null"], "enum": ["voicemail", "hangup", None]},
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
        },
    },
    "TwilioStatusCallback": {
        "type": "object",
        "description": "Twilio's status callback / async AMD callback parameters (only those the gateway reads).",
        "required": ["CallSid"],
        "properties": {
            "CallSid": {"type": "string"},
            "CallStatus": {"type": "string", "enum": list(CALL_STATUSES)},
            "CallDuration": {"type": "string"},
            "AnsweredBy": {"type": "string"},
        },
    },
}

OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("/calls", "post"): {
        "operationId": "createCall",
        "summary": "Place an outbound call with an AI agent on it",
        "security": _BEARER,
        "requestBody": {"required": True, "content": _json(_ref("CallRequest"))},
        "responses": {
            "201": {"description": "Twilio accepted the call.", "content": _json(_ref("CallCreated")),
                    "headers": {"Location": {"schema": {"type": "string"}}}},
            "400": _error("Not JSON, not an object, or an unknown field (`invalid_json`, `invalid_body`, "
                          "`unknown_field`)."),
            "401": _AUTH_ERRORS["401"],
            "403": _error("Destination refused (`destination_not_allowed`, `destination_premium_rate`), or `from` "
                          "is not a configured caller ID (`caller_id_not_allowed`)."),
            "408": _error("The body did not arrive in time (`body_timeout`)."),
            "413": _error(f"Body over {MAX_BODY_BYTES} bytes (`body_too_large`)."),
            "415": _error("Content-Type is not application/json (`unsupported_media_type`)."),
            "422": _error("A field is missing or invalid (`missing_field`, `invalid_field`)."),
            "429": {**_error("Per-key rate limit (`rate_limited`), or too many failed authentications from this "
                             "address (`too_many_auth_failures`)."),
                    "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds."}}},
            "502": _error("Twilio refused or could not be reached (`twilio_error` with `twilio_code`, "
                          "`twilio_unreachable`)."),
            "503": _error("Disabled or not configured (`outbound_disabled`, `twilio_not_configured`, "
                          "`public_url_not_configured`), at MAX_CALLS (`at_capacity`), or the shared rate limiter "
                          "(Redis) is unreachable (`rate_limiter_unavailable`: closed, never unlimited)."),
        },
    },
    ("/calls/{sid}", "get"): {
        "operationId": "getCall",
        "summary": "A call's record, kept up to date by Twilio's status callbacks",
        "security": _BEARER,
        "parameters": [_SID_PARAMETER],
        "responses": {
            "200": {"description": "The call.", "content": _json(_ref("Call"))},
            "404": _error("Unknown call (`call_not_found`)."),
            **_AUTH_ERRORS,
        },
    },
    ("/calls/{sid}/hangup", "post"): {
        "operationId": "hangupCall",
        "summary": "End a call (cancels it if it is still queued or ringing)",
        "security": _BEARER,
        "parameters": [_SID_PARAMETER],
        "responses": {
            "202": {"description": "Twilio is ending the call.", "content": _json(_ref("CallCreated"))},
            "404": _error("Unknown call (`call_not_found`)."),
            "409": _error("The call has already ended (`call_already_ended`)."),
            "502": _error("Twilio refused (`twilio_error`) or could not be reached (`twilio_unreachable`)."),
            **_AUTH_ERRORS,
        },
    },
    ("/twilio/call-status", "post"): {
        "operationId": "twilioCallStatus",
        "summary": "Twilio status and answering-machine callbacks (signed with X-Twilio-Signature)",
        "parameters": [{"name": "X-Twilio-Signature", "in": "header", "required": False,
                        "schema": {"type": "string"}, "description": "Required when TWILIO_AUTH_TOKEN is set."}],
        "requestBody": {"required": True, "content": {
            "application/x-www-form-urlencoded": {"schema": _ref("TwilioStatusCallback")}}},
        "responses": {
            "204": {"description": "Recorded."},
            "400": {"description": "CallSid missing or malformed."},
            "403": {"description": "Bad X-Twilio-Signature."},
            "413": {"description": "Body too large."},
        },
    },
    ("/twilio/answer", "post"): {
        "operationId": "twilioAnswer",
        "summary": "Twilio asks for an answered outbound call's TwiML: <Connect><Stream> with a stream credential "
                   "bound to the CallSid (signed with X-Twilio-Signature)",
        "parameters": [{"name": "X-Twilio-Signature", "in": "header", "required": False,
                        "schema": {"type": "string"}, "description": "Required when TWILIO_AUTH_TOKEN is set."}],
        "requestBody": {"required": True, "content": {
            "application/x-www-form-urlencoded": {"schema": _ref("TwilioStatusCallback")}}},
        "responses": {
            "200": {"description": "TwiML: the stream, a busy message at MAX_CALLS, or a hang-up for a call this "
                                   "gateway did not place.", "content": {"application/xml": {}}},
            "400": {"description": "CallSid missing or malformed."},
            "403": {"description": "Bad X-Twilio-Signature."},
            "413": {"description": "Body too large."},
        },
    },
    ("/openapi.json", "get"): {
        "operationId": "openapi",
        "summary": "This document",
        "responses": {"200": {"description": "OpenAPI 3.1 document.", "content": {"application/json": {}}}},
    },
    ("/incoming-call", "get"): {
        "operationId": "incomingCallGet",
        "summary": "Twilio voice webhook for inbound calls: answers <Connect><Stream> TwiML",
        "responses": {"200": {"description": "TwiML.", "content": {"application/xml": {}}},
                      "403": {"description": "Bad X-Twilio-Signature."}},
    },
    ("/incoming-call", "post"): {
        "operationId": "incomingCall",
        "summary": "Twilio voice webhook for inbound calls: answers <Connect><Stream> TwiML",
        "requestBody": {"content": {"application/x-www-form-urlencoded": {"schema": {"type": "object"}}}},
        "responses": {"200": {"description": "TwiML.", "content": {"application/xml": {}}},
                      "403": {"description": "Bad X-Twilio-Signature."},
                      "413": {"description": "Body too large."}},
    },
    ("/readyz", "get"): {
        "operationId": "readyz",
        "summary": "Readiness for a load balancer: 503 while draining (after SIGTERM) or at MAX_CALLS",
        "responses": {"200": {"description": "Taking calls.", "content": {"application/json": {}}},
                      "503": {"description": "Not taking new calls (`reason`: draining, at MAX_CALLS).",
                              "content": {"application/json": {}}}},
    },
    ("/healthz", "get"): {
        "operationId": "healthz",
        "summary": "Liveness, with the number of calls in progress",
        "responses": {"200": {"description": "OK.", "content": {"application/json": {"schema": {"type": "object"}}}}},
    },
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


def openapi_document(app: Starlette, settings: Settings) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for path, method in http_routes(app):
        operation = OPERATIONS.get((path, method)) or {
            "summary": f"{method.upper()} {path}", "responses": {"default": {"description": "See the README."}},
        }
        paths.setdefault(path, {})[method] = operation
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "gateway",
            "version": __version__,
            "description": "Twilio Media Streams <-> OpenAI Realtime phone gateway: outbound calls and call "
                           "control. Errors are `{\"error\": {\"code\", \"message\"}}`.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "One of API_KEYS."}},
        },
    }
    if settings.public_url:
        document["servers"] = [{"url": settings.public_url}]
    return document
