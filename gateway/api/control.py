"""Control a live call from any instance: ``POST /calls/{sid}/hangup``, ``/transfer`` and ``/say``.

A call's media stream lives on one instance; the request may land on any. The live-call registry in the shared
state (:mod:`gateway.state`: in-process, or Redis with ``REDIS_URL``) says which instance holds the call; the
request is queued for that instance, which acts on the call and replies. Answers: 202 once the holding instance
accepted, 404 for a call that is not live anywhere, 504 when the holder does not answer within
``CONTROL_REPLY_TIMEOUT_S`` (it crashed or is cut off), 503 when the shared state cannot be reached, 409 for a
transfer while one is under way (one transfer per call).

Who may: an operator key any call; another key only the outbound calls it placed.
:func:`serve_control` is the loop each instance runs to take the requests addressed to it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any, Callable

import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api.errors import ApiError, error_response, json_body
from gateway.api.outbound import known_call, outbound_api
from gateway.api.requests import SayRequest
from gateway.call.control import TRANSFER_FAILED, TRANSFER_UNDER_WAY
from gateway.state.base import SharedState, StateUnavailable
from gateway.twilio.sids import is_call_sid

log = logging.getLogger("gateway.api.control")

CONTROL_REPLY_TIMEOUT_S = 3.0
MAX_SAY_CHARS = 2000
MAX_CONTROL_BODY_BYTES = 8 * 1024
ACTIONS = ("hangup", "transfer", "say", "instruct")
# What a holder may answer instead of acting (gateway.call.control's transfer refusals) -> the API's message. The
# reply comes through the shared state: only these codes become a 409.
REFUSALS = {
    TRANSFER_UNDER_WAY: "a transfer is already under way for this call (one transfer per call)",
    TRANSFER_FAILED: "this call's transfer was already tried and failed; it is not tried again (one per call)",
}


async def _authorised(request: Request, call_sid: str) -> None:
    api = outbound_api(request)
    key = api.authenticate(request)
    await authorise_control(request, key, api.keys.is_operator(key), call_sid)


async def authorise_control(request: Request, key: str, operator: bool, call_sid: str) -> None:
    """May the key ``key`` (already authenticated: a bearer key, or a console session's) act on ``call_sid``?
    Rate-limited per key; an operator key any call, another key only the calls it placed (404 otherwise)."""
    api = outbound_api(request)
    await limit_control_rate(api, key)
    if not is_call_sid(call_sid):
        raise ApiError(404, "call_not_found", f"no call {call_sid[:40]!r} is known to this gateway")
    if not operator:
        await known_call(request, api, key)  # 404 unless this key placed the call


async def limit_control_rate(api: Any, key: str) -> None:
    """Every control request costs the holder work, and a say costs a model response: per key, at the rate
    OUTBOUND_RATE_LIMIT_PER_MINUTE allows, in a bucket of its own. 429 beyond; 503 when the limiter cannot tell."""
    from gateway.api.auth import RateLimiterUnavailable, retry_after_header

    try:
        wait = await api.rate_limiter.acquire(f"control:{key}")
    except RateLimiterUnavailable:
        raise ApiError(503, "rate_limiter_unavailable", "the rate limiter is unavailable; retry later",
                       headers={"Retry-After": "5"}) from None
    if wait > 0:
        raise ApiError(429, "rate_limited", "too many control requests for this API key; retry later",
                       headers={"Retry-After": retry_after_header(wait)})


async def _say_body(request: Request) -> tuple[str, str]:
    """``{"text": "...", "as": "message" | "instructions"}`` (:class:`gateway.api.requests.SayRequest`) ->
    (action, text)."""
    body = await json_body(request, MAX_CONTROL_BODY_BYTES)
    try:
        say = SayRequest.model_validate_json(body)
    except pydantic.ValidationError as error:
        problem = error.errors(include_url=False)[0]
        where = str(problem["loc"][0]) if problem.get("loc") else ""
        if problem["type"] == "json_invalid":
            raise ApiError(400, "invalid_json", "the body is not JSON") from None
        code = {"text": "invalid_text", "as": "invalid_as"}.get(where, "invalid_request")
        field: dict[str, Any] = {"field": where} if where else {}  # Any: never taken for ApiError's headers
        raise ApiError(400, code, f'expected {{"text": "1 to {MAX_SAY_CHARS} characters", '
                                  f'"as": "message" | "instructions"}} ({where or "body"}: {problem["msg"]})',
                       **field) from None
    return ("say" if say.as_ == "message" else "instruct"), say_text(say.text)


def say_text(text: str) -> str:
    """What the agent is told (the API's say, the console's): 1 to MAX_SAY_CHARS characters, not blank; else 400."""
    if not text.strip():
        raise ApiError(400, "invalid_text", "text must not be blank", field="text")
    if len(text) > MAX_SAY_CHARS:
        raise ApiError(400, "invalid_text", f"text must be at most {MAX_SAY_CHARS} characters", field="text")
    return text


async def control_call(shared: SharedState, call_sid: str, action: str, text: str = "") -> dict[str, Any]:
    """Ask the instance holding ``call_sid`` to act; its reply, or ApiError 404/503/504."""
    try:
        holder = await shared.call_holder(call_sid)
        if holder is None:
            raise ApiError(404, "call_not_live", f"call {call_sid} is not in progress on any instance")
        request_id = secrets.token_hex(16)
        await shared.send_control(holder, {"id": request_id, "call_sid": call_sid, "action": action, "text": text})
        reply = await shared.wait_reply(request_id, CONTROL_REPLY_TIMEOUT_S)
    except StateUnavailable as error:
        log.error("shared state unavailable for %s on %s: %s", action, call_sid, error)
        raise ApiError(503, "state_unavailable", "the shared state is unavailable; retry later",
                       headers={"Retry-After": "5"}) from None
    if reply is None:
        raise ApiError(504, "holder_not_answering",
                       f"the instance holding the call did not answer within {CONTROL_REPLY_TIMEOUT_S:g} s")
    refused = reply.get("refused")
    if refused in REFUSALS:
        # The holder refused the action on a live call (one transfer per call): a conflict, not a missing call.
        raise ApiError(409, refused, REFUSALS[refused])
    if not reply.get("ok"):
        raise ApiError(404, "call_not_live", f"call {call_sid} is no longer in progress")
    return {"call_sid": call_sid, "action": action, "accepted": True, "instance": holder}


async def control_live_call(request: Request, call_sid: str, action: str, text: str = "") -> dict[str, Any]:
    """An authorised action (:func:`authorise_control`) on a live call, from the API or the console: a transfer
    needs a TRANSFER_NUMBER (409), then the holder acts (:func:`control_call`)."""
    if action == "transfer" and not request.app.state.gateway.settings.transfer_number:
        raise ApiError(409, "transfer_not_configured", "no TRANSFER_NUMBER is configured to transfer to")
    return await control_call(request.app.state.gateway.shared, call_sid, action, text)


def control_endpoint(action: str) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        call_sid = request.path_params["sid"]
        try:
            await _authorised(request, call_sid)
            kind, text = await _say_body(request) if action == "say" else (action, "")
            return JSONResponse(await control_live_call(request, call_sid, kind, text), status_code=202)
        except ApiError as error:
            return error_response(error)

    endpoint.__name__ = f"{action}_live_call"
    return endpoint


async def serve_control(shared: SharedState, instance: str, find_session: Callable[[str], Any]) -> None:
    """Take the control requests addressed to this instance, act on the call, reply. Runs for the app's life. An
    outage of the shared state is logged once when it starts and once when it ends, never once a second."""
    failing = False
    while True:
        try:
            message = await shared.next_control(instance, 1.0)
        except StateUnavailable as error:
            if not failing:
                log.warning("control requests unavailable (%s); retrying every second, quietly until they are back",
                            error)
            failing = True
            await asyncio.sleep(1.0)
            continue
        except Exception:  # never let the loop die: this instance's calls would be uncontrollable until a restart
            if not failing:
                log.exception("control requests: unexpected failure; retrying every second, quietly until back")
            failing = True
            await asyncio.sleep(1.0)
            continue
        if failing:
            log.info("control requests: the shared state answers again")
            failing = False
        if not message or not isinstance(message.get("id"), str):
            continue
        action, text = message.get("action"), message.get("text") or ""
        session = find_session(str(message.get("call_sid", "")))
        answer: dict[str, Any] = {"ok": False}
        refusal = session.call.transfer_refusal() if session is not None and action == "transfer" else None
        if refusal is not None:
            log.info("transfer through the API refused: %s", refusal[1])
            answer["refused"] = refusal[0]
        elif session is not None and action in ACTIONS and isinstance(text, str):
            try:
                answer["ok"] = await session.control(action, text[:MAX_SAY_CHARS])
            except Exception:
                log.exception("control %s failed", action)
        try:
            await shared.reply(message["id"][:64], answer)
        except Exception as error:  # noqa: BLE001 - the asker times out with a 504; the loop goes on
            log.warning("control reply not sent (%s: %s)", type(error).__name__, error)
