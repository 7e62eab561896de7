"""The console's routes, all under ``/console`` (a Mount: they stay out of the API's OpenAPI description).

* ``GET|POST /console/login``: the login form; a valid API key starts a session (cookie ``gateway_console``:
  HttpOnly, SameSite=Strict, Path=/console, Max-Age ``CONSOLE_SESSION_TTL_S``, Secure over https or when
  PUBLIC_URL is https). Failed logins count with the API's (``API_AUTH_FAILURES_PER_MINUTE`` per client address).
* ``POST /console/logout``: ends the session and its live streams.
* ``GET /console/live``, ``/console/live/events``: the live calls of every instance, and their events as server-sent
  events (:mod:`.hub`).
* ``POST /console/live/calls/{sid}/hangup|transfer|say``: the live page's buttons; the API's control path
  (:mod:`gateway.api.control`), its scoping, and JSON answers (202, 400, 401, 403, 404, 409, 429, 503, 504).
* ``GET /console/calls``: past calls, with the filters and paging of ``GET /calls``, sortable (``sort``, ``order``:
  :mod:`.listing`); ``GET /console/calls.csv``: the same calls as CSV.
* ``GET /console/overview``: calls, latency, spend and barge-ins over the last 24 h, 7 d or 30 d (:mod:`.overview`).
* ``GET /console/calls/{sid}``, ``/console/calls/{sid}/recording``: a call's page, its recording.
* ``/console/static/*``: the style sheet and the script (the only script: no inline script anywhere).

CSRF: the cookie is SameSite=Strict, every POST must come from the console's own origin (``Origin``, else
``Referer``), and a signed-in POST carries the session's CSRF token. Every response has a strict
Content-Security-Policy and is never cached. Scoping is the API's: an operator key sees every call, another key the
calls it placed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.staticfiles import StaticFiles

from gateway.api.auth import retry_after_header
from gateway.api.control import MAX_SAY_CHARS, authorise_control, control_live_call, say_text
from gateway.api.errors import ApiError, error_response
from gateway.console import pages
from gateway.console.access import STATE_DOWN, SessionLookup, session_of, state_down
from gateway.console.listing import NOT_EXPORTED, csv_lines, next_page, parse_listing
from gateway.console.overview import DEFAULT_RANGE, RANGES, overview_page, overview_window
from gateway.console.session import COOKIE_NAME, COOKIE_PATH, ConsoleSession
from gateway.console.timeline import recording_envelopes, timeline_svg
from gateway.recordings.wav import recording_file
from gateway.state.base import StateUnavailable
from gateway.store import CallQuery, CallRecord
from gateway.twilio.sids import is_call_sid
from gateway.twilio.webhook import BodyTooLarge, WebhookRejected, bounded_body, parse_webhook_form

log = logging.getLogger("gateway.console")

MAX_FORM_BYTES = 4096
STREAM_MAX_S = 25.0  # an event stream ends after this and the browser reconnects: the session is checked again, and
KEEPALIVE_S = 10.0  # a shutdown never waits long for an open console
SESSION_CHECK_S = 5.0  # an open live stream's session is read again this often
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                 b"media-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                                 b"form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),  # no-referrer would make browsers send "Origin: null"
    (b"cache-control", b"no-store"),
]


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response of the wrapped app."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in SECURITY_HEADERS}
                kept = [(n, v) for n, v in message.get("headers", []) if n.lower() not in names]
                message = {**message, "headers": kept + SECURITY_HEADERS}
            await send(message)

        await self.app(scope, receive, with_headers)


def _state(request: Request) -> Any:
    return request.app.state.gateway


def _html(body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=headers)


def _session(request: Request) -> ConsoleSession | None:
    return session_of(request)  # looked up in the shared state by SessionLookup


def _to_login() -> Response:
    return RedirectResponse("/console/login", status_code=303)


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or _state(request).settings.public_url.startswith("https://")


def _same_origin(request: Request) -> bool:
    """A POST from a page of this console: its Origin (or, without one, its Referer's) is this server's own, or
    PUBLIC_URL's."""
    origin = request.headers.get("origin")
    if origin is None:
        referer = urlsplit(request.headers.get("referer", ""))
        origin = f"{referer.scheme}://{referer.netloc}" if referer.scheme and referer.netloc else ""
    if not origin or origin == "null":
        return False
    allowed = {f"{request.url.scheme}://{request.url.netloc}"}
    public = urlsplit(_state(request).settings.public_url)
    if public.scheme and public.netloc:
        allowed.add(f"{public.scheme}://{public.netloc}")
    return origin.lower() in {value.lower() for value in allowed}


async def _form(request: Request, limit: int = MAX_FORM_BYTES) -> dict[str, str] | None:
    """The form, None when unreadable; BodyTooLarge (413) past ``limit`` bytes."""
    try:
        body = await bounded_body(request, limit)
        if body is None:
            raise BodyTooLarge(limit)
        return parse_webhook_form(body)
    except (TimeoutError, WebhookRejected):
        return None


async def home(request: Request) -> Response:
    return RedirectResponse("/console/live" if _session(request) else "/console/login", status_code=303)


async def login(request: Request) -> Response:
    state = _state(request)
    api = state.outbound
    if request.method == "GET":
        return RedirectResponse("/console/live", status_code=303) if _session(request) else _html(pages.login_page())
    if not api.keys.enabled:
        return _html(pages.login_page("The console is disabled: set API_KEYS to enable it."), 503)
    if not _same_origin(request):
        return _html(pages.login_page("This form must be sent from the console's own page."), 403)
    client = request.client.host if request.client else None
    form = await _form(request)
    if form is None:
        return _html(pages.login_page("The form could not be read."), 400)
    key = form.get("api_key", "").strip()
    key_id = api.keys.authenticate(f"Bearer {key}") if key else None
    if key_id is None:
        # Throttled per address and key (the API's own limiter): a valid key always logs in, whoever else failed.
        wait = api.auth_failures.retry_after(client, key)
        if wait > 0:
            return _html(pages.login_page("Too many failed logins from this address: try again in a minute."), 429,
                         {"Retry-After": retry_after_header(wait)})
        api.auth_failures.record_failure(client, "console login: " + ("unknown API key" if key else "empty key"), key)
        return _html(pages.login_page("That is not a valid API key."), 401)
    try:
        session_id, session = await state.console_sessions.create(key_id, api.keys.is_operator(key_id))
    except StateUnavailable as error:
        log.error("console login refused: the shared state is unavailable: %s", error)
        return _html(pages.login_page(STATE_DOWN), 503, {"Retry-After": "5"})
    log.info("console login: key=%s operator=%s", key_id, session.operator)
    response = RedirectResponse("/console/live", status_code=303)
    response.set_cookie(COOKIE_NAME, session_id, max_age=int(state.console_sessions.ttl_s), path=COOKIE_PATH,
                        secure=_secure(request), httponly=True, samesite="strict")
    return response


async def logout(request: Request) -> Response:
    state = _state(request)
    session = _session(request)
    if session is None:  # unknown here (another process, or ended): the browser forgets it all the same
        response = _to_login()
        response.delete_cookie(COOKIE_NAME, path=COOKIE_PATH, secure=_secure(request), httponly=True,
                               samesite="strict")
        return response
    form = await _form(request) if _same_origin(request) else None
    if form is None or not session.csrf_ok(form.get("csrf")):
        log.warning("console: a logout without this session's CSRF token or from another origin was refused")
        return _html(pages.message_page("Refused", "This request did not come from the console.", session), 403)
    try:
        await state.console_sessions.end(request.cookies.get(COOKIE_NAME))
    except StateUnavailable as error:
        log.error("console logout failed: the shared state is unavailable: %s", error)
        return state_down(request.url.path)
    state.console.end_session(session.handle)
    log.info("console logout: key=%s", session.key_id)
    response = _to_login()
    response.delete_cookie(COOKIE_NAME, path=COOKIE_PATH, secure=_secure(request), httponly=True, samesite="strict")
    return response


async def live(request: Request) -> Response:
    session = _session(request)
    return _html(pages.live_page(session)) if session else _to_login()


async def live_events(request: Request) -> Response:
    state = _state(request)
    session = _session(request)
    if session is None:
        return Response("not signed in", status_code=401, media_type="text/plain")
    remote = await state.console.remote_calls()  # every other instance's live calls, from the shared registry
    subscriber = state.console.subscribe(session.key_id, session.operator, session.handle, remote)
    if subscriber is None:
        return Response("too many live streams", status_code=503, media_type="text/plain",
                        headers={"Retry-After": "10"})
    cookie = request.cookies.get(COOKIE_NAME)

    async def signed_in() -> bool:  # expired, or a logout the relay did not bring: the stream ends
        try:
            return await state.console_sessions.get(cookie) is not None
        except StateUnavailable:
            return False

    async def events() -> AsyncIterator[str]:
        deadline = time.monotonic() + STREAM_MAX_S
        checked = time.monotonic()
        try:
            yield "retry: 1000\n\n"
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or state.drained():
                    return
                # A logout ends the stream at once (LiveHub.end_session, on every instance); the shared state is
                # read again only every SESSION_CHECK_S, not for each of a busy call's events.
                if time.monotonic() - checked >= SESSION_CHECK_S:
                    if not await signed_in():
                        return
                    checked = time.monotonic()
                message = await subscriber.next(min(KEEPALIVE_S, left))
                if message is None:
                    return
                yield message or ": keep-alive\n\n"
        finally:
            state.console.unsubscribe(subscriber)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})


LIVE_ACTIONS = ("hangup", "transfer", "say")
MAX_ACTION_FORM_BYTES = 12 * MAX_SAY_CHARS + 1024  # a say's text URL-encoded (up to 4 UTF-8 bytes a character, 3 each)


async def live_action(request: Request) -> Response:
    """A live page's button: hang up, transfer, or say (form field ``text``) on a live call of any instance. The
    same checks as a logout (origin, the session's CSRF token in the form's ``csrf``), then the API's own control
    path and scoping (:func:`gateway.api.control.authorise_control`, :func:`~gateway.api.control.control_live_call`):
    JSON answers, 202 once the holding instance accepted."""
    session = _session(request)
    call_sid, action = request.path_params["sid"], request.path_params["action"]
    try:
        if session is None:
            raise ApiError(401, "not_signed_in", "not signed in to the console")
        if action not in LIVE_ACTIONS:
            raise ApiError(404, "unknown_action", f"the actions are {', '.join(LIVE_ACTIONS)}")
        if not _same_origin(request):
            raise ApiError(403, "foreign_origin", "this request did not come from the console's own page")
        try:
            form = await _form(request, MAX_ACTION_FORM_BYTES)
        except BodyTooLarge as error:
            raise ApiError(413, "body_too_large", str(error)) from None
        if form is None:
            raise ApiError(400, "invalid_form", "the form could not be read")
        if not session.csrf_ok(form.get("csrf")):
            raise ApiError(403, "csrf_token_mismatch", "this request did not carry the session's CSRF token")
        text = say_text(form.get("text", "")) if action == "say" else ""
        await authorise_control(request, session.key_id, session.operator, call_sid)
        result = await control_live_call(request, call_sid, action, text)
    except ApiError as error:
        if error.status == 403:
            log.warning("console: a %s refused (%s)", action if action in LIVE_ACTIONS else "live action", error.code)
        return error_response(error)
    log.info("console: %s on %s by key=%s", action, call_sid, session.key_id)
    return JSONResponse(result, status_code=202)


def _visible(record: CallRecord | None, session: ConsoleSession) -> bool:
    return record is not None and (session.operator or record.api_key_id == session.key_id)


async def _call(request: Request, session: ConsoleSession) -> CallRecord | None:
    call_sid = request.path_params["sid"]
    record = await _state(request).store.get_call(call_sid) if is_call_sid(call_sid) else None
    return record if _visible(record, session) else None


def _filters(request: Request) -> dict[str, str]:
    return {name: value.strip() for name, value in request.query_params.multi_items() if value.strip()}


async def calls(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _to_login()
    filters = _filters(request)
    try:
        query = parse_listing(filters, None if session.operator else session.key_id)
    except ApiError as error:
        return _html(pages.calls_page(session, [], filters, CallQuery(), None, error.message), 400)
    page = await _state(request).store.list_calls(query)
    return _html(pages.calls_page(session, page.records, filters, query, next_page(filters, page)))


async def calls_csv(request: Request) -> Response:
    """The calls of the listing's filter and sort as CSV (gateway.console.listing), scoped like the listing."""
    session = _session(request)
    if session is None:
        return Response("not signed in", status_code=401, media_type="text/plain")
    try:
        filters = {name: value for name, value in _filters(request).items() if name not in NOT_EXPORTED}
        query = parse_listing(filters, None if session.operator else session.key_id)
    except ApiError as error:
        return Response(error.message, status_code=400, media_type="text/plain")
    name = time.strftime("calls-%Y%m%dT%H%M%SZ.csv", time.gmtime())
    return StreamingResponse(csv_lines(_state(request).store, query), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})


async def overview(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _to_login()
    range_name = request.query_params.get("range", DEFAULT_RANGE)
    if range_name not in RANGES:
        return _html(pages.message_page("Overview", "range must be one of: " + ", ".join(RANGES), session), 400)
    since, until, bucket_s = overview_window(range_name)
    figures = await _state(request).store.overview(since, until, None if session.operator else session.key_id,
                                                   bucket_s)
    return _html(overview_page(session, figures, range_name))


async def call(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _to_login()
    record = await _call(request, session)
    if record is None:
        return _html(pages.message_page("Not found", "No such call is known to this gateway.", session), 404)
    path = recording_file(_state(request).settings.record_calls_dir, record.recording)
    try:
        waves = await asyncio.to_thread(recording_envelopes, path)
    except (OSError, ValueError) as error:
        log.warning("console: the recording %s could not be drawn: %s", record.recording, error)
        waves = None
    return _html(pages.call_page(session, record, timeline_svg(record, waves), path is not None))


async def recording(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return Response("not signed in", status_code=401, media_type="text/plain")
    record = await _call(request, session)
    path = recording_file(_state(request).settings.record_calls_dir, record.recording) if record else None
    if path is None:
        return Response("no recording", status_code=404, media_type="text/plain")
    return FileResponse(path, media_type="audio/wav", filename=path.name, content_disposition_type="inline")


console_routes: list[BaseRoute] = [
    Mount("/console", app=SecurityHeaders(SessionLookup(Router(routes=[
        Route("/", home, methods=["GET"]),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/live", live, methods=["GET"]),
        Route("/live/events", live_events, methods=["GET"]),
        Route("/live/calls/{sid}/{action}", live_action, methods=["POST"]),
        Route("/calls", calls, methods=["GET"]),
        Route("/calls.csv", calls_csv, methods=["GET"]),
        Route("/overview", overview, methods=["GET"]),
        Route("/calls/{sid}", call, methods=["GET"]),
        Route("/calls/{sid}/recording", recording, methods=["GET"]),
        Mount("/static", app=StaticFiles(packages=[("gateway.console", "static")]), name="static"),
    ])))),
]
