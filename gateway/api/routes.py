"""The HTTP handlers of the outbound API, Twilio's answer webhook for outbound calls and the status callback.

An outbound call is placed with ``url=`` the answer webhook (``/twilio/answer``), not inline TwiML: when the callee
picks up, Twilio asks that URL, signed, with the CallSid, and the gateway answers ``<Connect><Stream>`` with a stream
credential bound to that CallSid (:mod:`gateway.twilio.security`). The call's own settings (instructions, voice, greeting)
are saved under the CallSid Twilio returned and taken once by that call's media stream: nothing about them travels
in a URL, a TwiML parameter or a callback.

Order of checks on ``POST /calls``: API enabled (503) > too many failed authentications from this address (429) >
bearer key (401) > Twilio configured, PUBLIC_URL set (503) > rate limit (429; 503 if the shared limiter is
unreachable: fail closed) > MAX_CALLS (503) > content type (415) > body size and time (413, 408) > JSON (400) >
fields (422) > caller ID and destination (403) > Twilio (502).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from gateway.api.auth import RateLimiterUnavailable, retry_after_header
from gateway.api.control import control_call, control_endpoint, limit_control_rate
from gateway.api.errors import ApiError, error_response, json_body
from gateway.api.outbound import OutboundApi, known_call, outbound_api
from gateway.state.base import StateUnavailable
from gateway.api.requests import MAX_BODY_BYTES, parse_call_query, parse_call_request
from gateway.config import Settings
from gateway.recordings.wav import recording_file
from gateway.store import CALL_STATUSES, FINAL_STATUSES, CallRecord
from gateway.twilio.security import OUTBOUND
from gateway.twilio.rest import TwilioError, TwilioNotConfigured
from gateway.twilio.sids import is_call_sid
from gateway.twilio.twiml import say_and_hang_up_twiml
from gateway.twilio.webhook import WebhookRejected, read_call_webhook, stream_twiml

log = logging.getLogger("gateway.api")

CALL_STATUS_PATH = "/twilio/call-status"
ANSWER_PATH = "/twilio/answer"
MAX_CALLBACK_BODY_BYTES = 64 * 1024
# Twilio may call back (status, answer) before calls.create's answer has been stored: wait this long for the record.
RECORD_WAIT_S = 3.0
AT_CAPACITY_MESSAGE = "Sorry, all our lines are busy right now. Please call again later."
_ANSWERED_BY = re.compile(r"[a-z_]{1,32}")
MACHINE_ANSWERS = frozenset({"machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other"})


def _twilio_failure(error: TwilioError) -> ApiError:
    if isinstance(error, TwilioNotConfigured):
        return ApiError(503, "twilio_not_configured", error.message)
    if error.status == 0:
        return ApiError(502, "twilio_unreachable", error.message)
    return ApiError(502, "twilio_error", error.message, twilio_code=error.code, twilio_status=error.status)


async def create_call(request: Request) -> Response:
    api = outbound_api(request)
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
        if api.draining():
            raise ApiError(503, "draining", "this gateway is shutting down; retry (on another instance)",
                           headers={"Retry-After": "5"})
        if api.at_capacity():
            raise ApiError(503, "at_capacity", "this gateway is at MAX_CALLS concurrent calls; retry later",
                           headers={"Retry-After": "10"})
        try:
            exhausted = api.budget_exhausted is not None and await api.budget_exhausted()
        except StateUnavailable:  # the total cannot be read: refused (fail closed), but it is no reached budget
            raise ApiError(503, "budget_unavailable", "today's cost total cannot be read (the shared state does not "
                           "answer); retry later", headers={"Retry-After": "5"}) from None
        if exhausted:
            raise ApiError(429, "daily_budget_reached", "today's cost reached DAILY_BUDGET_USD; no new calls today",
                           headers={"Retry-After": "3600"})
        body = await json_body(request, MAX_BODY_BYTES)
        call_settings = parse_call_request(
            body,
            # TWILIO_FROM_NUMBER's caller IDs; Settings made with replace(twilio_from_number=...) have just that one.
            caller_ids=settings.twilio_caller_ids or tuple(filter(None, (settings.twilio_from_number,))),
            allowed_prefixes=settings.outbound_allowed_prefixes,
            voicemail_configured=bool(settings.voicemail_message),
            recording_configured=bool(settings.record_calls_dir),
        )
        call_settings = dataclasses.replace(call_settings, api_key_id=key)
        base = settings.public_url
        try:
            placed = await api.twilio.place_call(
                to=call_settings.to, from_=call_settings.from_, answer_url=f"{base}{ANSWER_PATH}",
                status_callback=f"{base}{CALL_STATUS_PATH}", machine_detection=call_settings.machine_detection,
                time_limit_s=api.settings.outbound_time_limit_s,
            )
        except TwilioError as error:
            raise _twilio_failure(error) from None
        # Settings first, then the record: whoever finds the record (the answer webhook) finds the settings too.
        await api.store.save_call_settings(placed.call_sid, call_settings)
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
        record_audio=call_settings.record,
    )


async def get_call(request: Request) -> Response:
    """A call's record, with its turns, tool calls and timeline: the calls the key placed; every call (inbound
    ones included) for an operator key."""
    api = outbound_api(request)
    try:
        key = api.authenticate(request)
        record = await known_call(request, api, key, operator=api.keys.is_operator(key))
        return JSONResponse(record.public_json())
    except ApiError as error:
        return error_response(error)


async def get_recording(request: Request) -> Response:
    """``GET /calls/{sid}/recording``: the call's stereo WAV (``gateway.recordings.wav``), scoped as ``GET /calls/{sid}``."""
    api = outbound_api(request)
    try:
        key = api.authenticate(request)
        record = await known_call(request, api, key, operator=api.keys.is_operator(key))
        path = recording_file(api.settings.record_calls_dir, record.recording)
        if path is None:
            raise ApiError(404, "recording_not_found", "this call has no recording")
        return FileResponse(path, media_type="audio/wav", filename=path.name, content_disposition_type="inline",
                            headers={"Cache-Control": "private, no-store"})
    except ApiError as error:
        return error_response(error)


async def list_calls(request: Request) -> Response:
    """``GET /calls``: call records newest first, filtered and paged (``gateway.api.requests.parse_call_query``);
    a key lists the calls it placed, an operator key every call."""
    api = outbound_api(request)
    try:
        key = api.authenticate(request)
        query = parse_call_query(request.query_params.multi_items(),
                                 api_key_id=None if api.keys.is_operator(key) else key)
        page = await api.store.list_calls(query)
        return JSONResponse({"calls": [record.summary_json() for record in page.records],
                             "next_cursor": page.next_cursor})
    except ApiError as error:
        return error_response(error)


async def hangup_call(request: Request) -> Response:
    """A live call (its stream open on any instance) is hung up by the instance holding it
    (gateway.api.control); one still ringing, through Twilio's REST API."""
    api = outbound_api(request)
    try:
        key = api.authenticate(request)
        operator = api.keys.is_operator(key)
        call_sid = request.path_params["sid"]
        shared = request.app.state.gateway.shared
        if is_call_sid(call_sid) and await _is_live(shared, call_sid):
            if not operator:
                await known_call(request, api, key)
            await limit_control_rate(api, key)
            try:
                await control_call(shared, call_sid, "hangup")  # the holder hangs up at Twilio, closes the stream
                return JSONResponse({"call_sid": call_sid, "status": "completed"}, status_code=202)
            except ApiError as error:
                if error.status != 504 or not api.twilio.configured:
                    raise
                # The holder does not answer (crashed, cut off): end the call at Twilio, which ends its stream.
                log.warning("the instance holding %s did not answer; hanging up through Twilio", call_sid)
                try:
                    await api.twilio.hangup(call_sid)
                except TwilioError as twilio_error:
                    raise _twilio_failure(twilio_error) from None
                return JSONResponse({"call_sid": call_sid, "status": "completed"}, status_code=202)
        record = await known_call(request, api, key, operator=operator)
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


async def _is_live(shared: Any, call_sid: str) -> bool:
    try:
        return await shared.call_holder(call_sid) is not None
    except StateUnavailable:
        raise ApiError(503, "state_unavailable", "the shared state is unavailable; retry later",
                       headers={"Retry-After": "5"}) from None


async def call_status(request: Request) -> Response:
    """Twilio's status callbacks (and the async AMD callback, same URL): update the record, act on machines."""
    api = outbound_api(request)
    read = await _call_webhook(request, api)
    if isinstance(read, Response):
        return read
    params, call_sid, record = read
    if record is None:
        log.info("status callback for unknown call %s ignored", call_sid)
        return Response(status_code=204)

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


async def _call_webhook(request: Request, api: OutboundApi) -> Response | tuple[dict[str, str], str, CallRecord | None]:
    """Twilio's webhook about one of our calls: (its parameters, its CallSid, its record if known), or the refusal."""
    try:
        params, call_sid = await read_call_webhook(
            request, api.settings, request.app.state.gateway.validator, MAX_CALLBACK_BODY_BYTES
        )
    except WebhookRejected as rejected:
        return Response(rejected.message, status_code=rejected.status, media_type="text/plain")
    return params, call_sid, await _wait_for_record(api, call_sid)


async def _wait_for_record(api: OutboundApi, call_sid: str) -> CallRecord | None:
    """The call's record, waiting a moment for one Twilio calls back about before calls.create returned to us."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RECORD_WAIT_S
    while True:
        record = await api.store.get_call(call_sid)
        if record is not None or loop.time() >= deadline:
            return record
        await asyncio.sleep(0.1)


async def answer_outbound(request: Request) -> Response:
    """Twilio's request for the TwiML of an outbound call the callee just answered: a stream for this CallSid."""
    api = outbound_api(request)
    read = await _call_webhook(request, api)
    if isinstance(read, Response):
        return read
    _, call_sid, record = read
    if record is None or record.direction != "outbound-api" or api.credentials is None:
        log.warning("answer webhook for a call this gateway did not place: %s; hanging up", call_sid)
        return Response(say_and_hang_up_twiml(""), media_type="application/xml")
    if api.at_capacity():
        log.warning("at MAX_CALLS: the answered outbound call %s is told the lines are busy", call_sid)
        return Response(say_and_hang_up_twiml(AT_CAPACITY_MESSAGE), media_type="application/xml")
    twiml = stream_twiml(request, api.settings, api.credentials, call_sid, OUTBOUND, {})
    return Response(twiml, media_type="application/xml")


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
            await api.twilio.update_twiml(call_sid, say_and_hang_up_twiml(api.settings.voicemail_message))
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
    Route("/calls", list_calls, methods=["GET"]),
    Route("/calls/{sid}", get_call, methods=["GET"]),
    Route("/calls/{sid}/recording", get_recording, methods=["GET"]),
    Route("/calls/{sid}/hangup", hangup_call, methods=["POST"]),
    Route("/calls/{sid}/transfer", control_endpoint("transfer"), methods=["POST"]),
    Route("/calls/{sid}/say", control_endpoint("say"), methods=["POST"]),
    Route(CALL_STATUS_PATH, call_status, methods=["POST"]),
    Route(ANSWER_PATH, answer_outbound, methods=["POST"]),
    Route("/openapi.json", openapi_json, methods=["GET"]),
]
