"""The HTTP handlers of the outbound API and the Twilio status callback.

Order of checks on ``POST /calls``: API enabled (503) > bearer key (401) > Twilio configured (503) > rate limit
(429; 503 if the shared limiter is unreachable: fail closed) > content type (415) > body size (413) > JSON (400) > fields (422) > destination (403) > Twilio (502).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import secrets
from typing import Any, Coroutine

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api.auth import (
    ApiKeys, RateLimiter, RateLimiterUnavailable, RedisRateLimiter, TokenBucketRateLimiter, retry_after_header,
)
from gateway.api.errors import ApiError, error_response
from gateway.api.requests import MAX_BODY_BYTES, parse_call_request
from gateway.config import Settings
from gateway.store import CALL_STATUSES, FINAL_STATUSES, CallRecord, CallStore
from gateway.twilio.rest import TwilioError, TwilioNotConfigured, TwilioRest, voicemail_twiml
from gateway.twilio.twiml import MEDIA_STREAM_PATH, connect_stream_twiml, stream_url
from gateway.twilio.webhook import WebhookRejected, bounded_body, read_twilio_webhook

log = logging.getLogger("gateway.api")

CALL_STATUS_PATH = "/twilio/call-status"
CALL_PARAMETER = "gateway_call"  # the <Parameter> naming the per-call settings; also ?call= on status callbacks
MAX_CALLBACK_BODY_BYTES = 64 * 1024
_CALL_SID = re.compile(r"CA[0-9a-f]{32}")
_ANSWERED_BY = re.compile(r"[a-z_]{1,32}")
MACHINE_ANSWERS = frozenset({"machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other"})


class OutboundApi:
    """What the API handlers share: keys, the rate limiter, the store, the Twilio client, background actions."""

    def __init__(self, settings: Settings, store: CallStore, twilio: TwilioRest,
                 rate_limiter: RateLimiter | None = None) -> None:
        self.settings = settings
        self.store = store
        self.twilio = twilio
        self.keys = ApiKeys(settings.api_keys)
        self._owns_rate_limiter = rate_limiter is None
        self.rate_limiter: RateLimiter = rate_limiter or _default_rate_limiter(settings)
        self._tasks: set[asyncio.Task[None]] = set()

    def authenticate(self, request: Request) -> str:
        """The caller's key id; ApiError 503 when no key is configured (never open by default), 401 otherwise."""
        if not self.keys.enabled:
            raise ApiError(503, "outbound_disabled", "the HTTP API is disabled: set API_KEYS to enable it")
        identifier = self.keys.authenticate(request.headers.get("authorization"))
        if identifier is None:
            raise ApiError(401, "unauthorized", "missing or invalid bearer API key",
                           headers={"WWW-Authenticate": 'Bearer realm="gateway"'})
        return identifier

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a REST action after the webhook has been answered (Twilio waits at most 15 s for us)."""
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for task in tasks:
            task.cancel()
        if self._owns_rate_limiter:
            await self.rate_limiter.aclose()


def _default_rate_limiter(settings: Settings) -> RateLimiter:
    """Shared through Redis when REDIS_URL is set (several instances, one limit per key), else in-process."""
    per_minute = settings.outbound_rate_limit_per_minute
    if settings.redis_url:
        return RedisRateLimiter(settings.redis_url, per_minute)
    return TokenBucketRateLimiter(per_minute)


def _api(request: Request) -> OutboundApi:
    return request.app.state.gateway.outbound


def _twilio_failure(error: TwilioError) -> ApiError:
    if isinstance(error, TwilioNotConfigured):
        return ApiError(503, "twilio_not_configured", error.message)
    if error.status == 0:
        return ApiError(502, "twilio_unreachable", error.message)
    return ApiError(502, "twilio_error", error.message, twilio_code=error.code, twilio_status=error.status)


async def create_call(request: Request) -> Response:
    api = _api(request)
    settings = api.settings
    try:
        key = api.authenticate(request)
        if not api.twilio.configured:
            raise ApiError(503, "twilio_not_configured", "set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN to place calls")
        if not settings.public_url:
            raise ApiError(503, "public_url_not_configured",
                           "set PUBLIC_URL (https://host Twilio reaches) to place calls")
        try:
            wait = await api.rate_limiter.acquire(key)
        except RateLimiterUnavailable as error:
            # Fail closed: without its limiter the outbound API would be an unlimited dialer.
            log.error("rate limiter unavailable, refusing the call: key=%s error=%s", key, error)
            raise ApiError(503, "rate_limiter_unavailable",
                           "the rate limiter is unavailable; retry later", headers={"Retry-After": "5"}) from None
        if wait > 0:
            raise ApiError(429, "rate_limited", "too many calls for this API key; retry later",
                           headers={"Retry-After": retry_after_header(wait)})
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise ApiError(415, "unsupported_media_type", "the body must be JSON (Content-Type: application/json)")
        body = await bounded_body(request, MAX_BODY_BYTES)
        if body is None:
            raise ApiError(413, "body_too_large", f"the body must be at most {MAX_BODY_BYTES} bytes")
        call_settings = parse_call_request(
            body,
            default_from=settings.twilio_from_number,
            allowed_prefixes=settings.outbound_allowed_prefixes,
            voicemail_configured=bool(settings.voicemail_message),
        )
        call_settings = dataclasses.replace(call_settings, api_key_id=key)
        settings_key = secrets.token_urlsafe(18)
        await api.store.save_call_settings(settings_key, call_settings)
        base = settings.public_url
        twiml = connect_stream_twiml(stream_url(base, MEDIA_STREAM_PATH), {CALL_PARAMETER: settings_key})
        # The key also rides on the status callback URL, so a callback that beats calls.create's answer (it can)
        # still finds the call, and a callback for an unknown call needs a secret it cannot guess.
        status_callback = f"{base}{CALL_STATUS_PATH}?call={settings_key}"
        try:
            placed = await api.twilio.place_call(
                to=call_settings.to, from_=call_settings.from_, twiml=twiml, status_callback=status_callback,
                machine_detection=call_settings.machine_detection, time_limit_s=api.settings.outbound_time_limit_s,
            )
        except TwilioError as error:
            raise _twilio_failure(error) from None
        record = await api.store.create_call(_record_for(placed.call_sid, call_settings, placed.status, key))
        log.info("outbound call placed: call_sid=%s to=%s key=%s", record.call_sid, call_settings.to, key)
        return JSONResponse({"call_sid": record.call_sid, "status": record.status}, status_code=201,
                            headers={"Location": f"/calls/{record.call_sid}"})
    except ApiError as error:
        return error_response(error)


def _record_for(call_sid: str, call_settings: Any, status: str, key: str | None) -> CallRecord:
    return CallRecord(
        call_sid=call_sid, to=call_settings.to, from_=call_settings.from_,
        status=status if status in CALL_STATUSES else "queued",
        machine_detection=call_settings.machine_detection, metadata=dict(call_settings.metadata), api_key_id=key,
    )


async def _known_call(request: Request, api: OutboundApi, key_id: str) -> CallRecord:
    """The call, if the caller's key placed it: one team's key neither reads nor hangs up another's calls."""
    call_sid = request.path_params["sid"]
    record = await api.store.get_call(call_sid) if _CALL_SID.fullmatch(call_sid) else None
    if record is None or record.api_key_id != key_id:
        raise ApiError(404, "call_not_found", f"no call {call_sid[:40]!r} is known to this gateway")
    return record


async def get_call(request: Request) -> Response:
    api = _api(request)
    try:
        record = await _known_call(request, api, api.authenticate(request))
        return JSONResponse(record.public_json())
    except ApiError as error:
        return error_response(error)


async def hangup_call(request: Request) -> Response:
    api = _api(request)
    try:
        record = await _known_call(request, api, api.authenticate(request))
        if record.status in FINAL_STATUSES:
            raise ApiError(409, "call_already_ended", f"the call has already ended ({record.status})",
                           call_status=record.status)
        try:
            status = await api.twilio.hangup(record.call_sid)
        except TwilioError as error:
            raise _twilio_failure(error) from None
        updated = await api.store.update_status(record.call_sid, status if status in CALL_STATUSES else "completed")
        return JSONResponse({"call_sid": record.call_sid, "status": (updated or record).status}, status_code=202)
    except ApiError as error:
        return error_response(error)


async def call_status(request: Request) -> Response:
    """Twilio's status callbacks (and the async AMD callback, same URL): update the record, act on machines."""
    api = _api(request)
    try:
        params = await read_twilio_webhook(
            request, api.settings, request.app.state.gateway.validator, MAX_CALLBACK_BODY_BYTES
        )
    except WebhookRejected as rejected:
        return Response(rejected.message, status_code=rejected.status, media_type="text/plain")
    call_sid = params.get("CallSid", "")
    if not _CALL_SID.fullmatch(call_sid):
        return Response("CallSid missing or malformed", status_code=400, media_type="text/plain")

    record = await api.store.get_call(call_sid)
    if record is None:
        call_settings = await api.store.get_call_settings(request.query_params.get("call", ""))
        if call_settings is None:
            log.info("status callback for unknown call %s ignored", call_sid)
            return Response(status_code=204)
        record = await api.store.create_call(_record_for(call_sid, call_settings, "queued", call_settings.api_key_id))

    status = params.get("CallStatus", "")
    changes: dict[str, Any] = {}
    answered_by = params.get("AnsweredBy", "")
    if answered_by and _ANSWERED_BY.fullmatch(answered_by):
        changes["answered_by"] = answered_by
    duration = params.get("CallDuration", "")
    if duration.isdigit():
        changes["duration_s"] = int(duration)
    record = await api.store.update_status(call_sid, status if status in CALL_STATUSES else None, **changes) or record

    if "answered_by" in changes:
        action = _machine_action(record, changes["answered_by"], api.settings)
        if action is not None and await api.store.claim_machine_action(call_sid, action):
            api.spawn(_act_on_machine(api, call_sid, action))
    return Response(status_code=204)


def _machine_action(record: CallRecord, answered_by: str, settings: Settings) -> str | None:
    """"voicemail", "hangup" or None, for a call whose AMD result just arrived."""
    if record.machine_detection == "none" or record.status in FINAL_STATUSES:
        return None
    if answered_by == "fax":
        return "hangup"  # nobody to talk to, nothing to leave a message on
    if answered_by not in MACHINE_ANSWERS:
        return None  # human or unknown: the agent carries on
    if record.machine_detection == "voicemail" and settings.voicemail_message:
        return "voicemail"
    return "hangup"


async def _act_on_machine(api: OutboundApi, call_sid: str, action: str) -> None:
    try:
        if action == "voicemail":
            await api.twilio.update_twiml(call_sid, voicemail_twiml(api.settings.voicemail_message))
            log.info("machine answered %s: leaving the voicemail message", call_sid)
        else:
            status = await api.twilio.hangup(call_sid)
            await api.store.update_status(call_sid, status if status in CALL_STATUSES else "completed")
            log.info("machine answered %s: hung up", call_sid)
    except TwilioError:
        pass  # logged by TwilioRest; the call ends on its own (the record says which action was attempted)


async def openapi_json(request: Request) -> Response:
    from gateway.api.openapi import openapi_document

    return JSONResponse(openapi_document(request.app, request.app.state.gateway.settings))


routes = [
    Route("/calls", create_call, methods=["POST"]),
    Route("/calls/{sid}", get_call, methods=["GET"]),
    Route("/calls/{sid}/hangup", hangup_call, methods=["POST"]),
    Route(CALL_STATUS_PATH, call_status, methods=["POST"]),
    Route("/openapi.json", openapi_json, methods=["GET"]),
]
