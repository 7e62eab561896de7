"""The Starlette application: routes and wiring, nothing else.

* ``GET|POST /incoming-call``: Twilio's voice webhook; answers ``<Connect><Stream>`` TwiML whose URL carries a
  stream credential for this CallSid (``gateway.twilio.security``), or a polite refusal when every line is busy.
* ``WS /media-stream/<credential>``: the Media Stream, bridged to a Realtime session (``gateway.media_stream``),
  admitted only with a valid credential (and signature, with ``TWILIO_AUTH_TOKEN``), once. ``WS /media-stream``
  without one is for the keyless demo and tests only (see :func:`gateway.twilio.security.unsigned_streams_allowed`).
* ``GET /healthz``: liveness, with the number of calls in progress and any insecure-mode warnings.
* ``/calls``, ``/calls/{sid}``, ``/calls/{sid}/recording``, ``/calls/{sid}/hangup``, ``/twilio/answer``,
  ``/twilio/call-status``, ``/openapi.json``: the HTTP API (``gateway.api``).
* ``/console``: the web console (``gateway.console``).

When no API key is configured the app starts the embedded Realtime-compatible server in-process and
points the model side at it (and says so, loudly, in the log). With a real model, the app refuses to start
without ``TWILIO_AUTH_TOKEN`` and ``PUBLIC_URL`` unless ``INSECURE_DEV_MODE`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from twilio.request_validator import RequestValidator
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from gateway import __version__
from gateway.api import OutboundApi
from gateway.api import routes as api_routes
from gateway.api.routes import AT_CAPACITY_MESSAGE
from gateway.config import ConfigError, Settings
from gateway.console import ConsoleSessions, LiveHub, console_routes
from gateway.observe.droplog import DropCounter
from gateway.media_stream import POLICY_VIOLATION, CallObserver, CallServices, MediaStreamSession
from gateway.twilio.security import (
    INBOUND, PEER_SCOPE_KEY, CredentialRejected, StreamCredentials, StreamGrant, insecure_warnings, startup_problems,
    stream_secret, unsigned_streams_allowed,
)
from gateway.api.control import serve_control
from gateway.server import metrics_listener
from gateway.server.connection_caps import ClientRequestCap, startup_warning as connection_caps_warning
from gateway.observe import metrics
from gateway.observe.budget import REACHED, UNAVAILABLE, DailyBudget
from gateway.observe.cost import load_price_table, prices_for
from gateway.observe.tracing import configure_tracing_once
from gateway.state import SharedState, StateDeadline, StateUnavailable, open_state
from gateway.tools.registry import ToolRegistry, end_call_tool, load_tools_module, transfer_call_tool
from gateway.store import CallStore, MemoryCallStore, open_store, run_retention
from gateway.store.records import CallRecords
from gateway.store.spool import RecordSpool
from gateway.twilio.rest import TwilioRest
from gateway.twilio.twiml import INCOMING_CALL_PATH, MEDIA_STREAM_PATH, say_and_hang_up_twiml, stream_url
from gateway.twilio.webhook import BodyTooLarge, WebhookRejected, read_call_webhook, signed_base, stream_twiml

log = logging.getLogger("gateway.server.app")

MAX_WEBHOOK_BODY_BYTES = 64 * 1024
CLOSE_TIMEOUT_S = 3.0
DRAINING_MESSAGE = "Sorry, we cannot take your call on this line right now. Please call again in a minute."
BUDGET_MESSAGE = "Sorry, we cannot take more calls today. Please call again tomorrow."
# The daily total cannot be read (the shared state does not answer): refused, but not for a budget it may not reach.
STATE_UNAVAILABLE_MESSAGE = "Sorry, we can't take your call right now. Please try again later."


class GatewayState:
    """What the routes share: settings (with the model URL resolved) and the calls in progress."""

    def __init__(self, settings: Settings, observer: CallObserver | None, local_server: Any = None,
                 store: CallStore | None = None, shared: SharedState | None = None) -> None:
        self.settings = settings
        self.observer = observer
        self.local_server = local_server  # the embedded LocalRealtimeServer, when no API key is set
        self.active_calls: set[MediaStreamSession] = set()
        self.validator = RequestValidator(settings.twilio_auth_token) if settings.twilio_auth_token else None
        self.credentials = StreamCredentials(stream_secret(settings), settings.stream_credential_ttl_s)
        self._shared: SharedState = shared if shared is not None else open_state(settings.redis_url,
                                                                                 settings.state_sqlite_path)
        self.warnings = insecure_warnings(settings)  # repeated by /healthz while they hold
        self.draining = False  # set on SIGTERM: no new calls, the live ones go on (runner.DrainingServer)
        self.refused_streams = DropCounter(
            log, "media stream upgrades", settings.drop_log_interval_s,
            counted=lambda reason, n: metrics.REFUSED_STREAMS.labels(metrics.label("refused", "reason", reason)).inc(n))
        self.budget = DailyBudget(self.shared, settings.daily_budget_usd)
        self.store: CallStore = store if store is not None else MemoryCallStore()  # records, per-call settings
        self.twilio = TwilioRest.from_settings(settings)  # Twilio REST: place, hang up, redirect calls
        self.outbound = OutboundApi(settings, self.store, self.twilio, credentials=self.credentials,
                                    at_capacity=self.at_capacity,
                                    draining=lambda: self.draining,
                                    budget_exhausted=lambda: self.budget.exhausted())  # what the HTTP API routes share
        prices = prices_for(settings.realtime_model, load_price_table(
            settings.price_table_file, settings.model_prices, settings.realtime_model,
            embedded=settings.uses_embedded_model))
        if prices is None and not settings.uses_embedded_model:
            log.warning("no price known for model %s: call cost is not counted (set PRICE_TABLE_FILE or MODEL_PRICES)",
                        settings.realtime_model)
        # The web console (/console): its logins, and the live view fed every event of every call here.
        self.console_sessions = ConsoleSessions(settings.console_session_ttl_s, shared=self.shared)
        self.console = LiveHub(owner_of=self.store.get_call, session_of=self.find_session,
                               full_numbers=settings.log_full_numbers, shared=self.shared,
                               instance=settings.instance_id)
        # Call records at each call's start and end; spooled to RECORD_SPOOL_DIR while the store does not take them.
        self.records = CallRecords(self.store, RecordSpool(settings.record_spool_dir, settings.record_spool_max_bytes),
                                   instance_id=settings.instance_id)
        self.services = CallServices(
            tools=build_tool_registry(settings, can_transfer=self.twilio.configured),
            store=self.store,
            records=self.records,
            twilio=self.twilio if self.twilio.configured else None,
            prices=prices,
            budget=self.budget,
            shared=self.shared,
            feed=self.console.feed,
        )

    @property
    def shared(self) -> SharedState:
        return self._shared

    @shared.setter
    def shared(self, shared: SharedState) -> None:
        # One shared state for the webhook path, the budget and the calls (tests put an unreachable one in).
        self._shared = self.budget.shared = self.services.shared = shared

    def find_session(self, call_sid: str) -> MediaStreamSession | None:
        """The live call of this CallSid held by this instance."""
        return next((session for session in self.active_calls if session.call.call_sid == call_sid), None)

    def live_call_sids(self) -> list[str]:
        """The calls this instance holds (their records are not lost)."""
        return [session.call.call_sid for session in self.active_calls if session.call.call_sid]

    def at_capacity(self) -> bool:
        return len(self.active_calls) >= self.settings.max_calls

    def start_drain(self) -> None:
        """Stop taking new calls (SIGTERM): the calls in progress go on to their end. Safe in a signal handler."""
        if not self.draining:
            self.draining = True
            metrics.DRAINING.set(1)
            log.warning("draining: no new calls; %d call(s) in progress go on (DRAIN_TIMEOUT_S=%d)",
                        len(self.active_calls), self.settings.drain_timeout_s)

    def drained(self) -> bool:
        return self.draining and not self.active_calls

    async def aclose(self) -> None:
        """Close what the app holds; each part within CLOSE_TIMEOUT_S (a stuck connection must not hold a
        shutdown, and with it a deploy)."""
        self.refused_streams.flush()
        for name, close in (("console", self.console.aclose), ("outbound API", self.outbound.aclose),
                            ("store", self.store.close), ("daily budget", self.budget.aclose),
                            ("shared state", self.shared.aclose)):
            try:
                await asyncio.wait_for(close(), CLOSE_TIMEOUT_S)
            except Exception as error:  # noqa: BLE001 - shutting down: log and go on
                log.warning("closing the %s failed or took over %g s: %s: %s", name, CLOSE_TIMEOUT_S,
                            type(error).__name__, error)
        self.twilio.close()


def build_tool_registry(settings: Settings, *, can_transfer: bool) -> ToolRegistry:
    """The agent's tools: ``end_call`` always; ``transfer_call`` when there is a number and a way to dial it;
    the user's own from ``TOOLS_MODULE``."""
    tools = [end_call_tool()]
    if settings.transfer_number and can_transfer:
        tools.append(transfer_call_tool())
    if settings.tools_module:
        tools.extend(load_tools_module(settings.tools_module))
    return ToolRegistry(tools, timeout_s=settings.tool_timeout_s, max_threads_per_call=settings.max_tools_per_call)


async def incoming_call(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    try:
        params, call_sid = await read_call_webhook(request, state.settings, state.validator, MAX_WEBHOOK_BODY_BYTES)
    except WebhookRejected as rejected:
        return PlainTextResponse(rejected.message, status_code=rejected.status)
    if state.draining:
        log.warning("draining: incoming call %s told to call again", call_sid)
        return Response(say_and_hang_up_twiml(DRAINING_MESSAGE), media_type="application/xml")
    if state.at_capacity():
        log.warning("at MAX_CALLS (%d): incoming call %s told the lines are busy", state.settings.max_calls, call_sid)
        metrics.REFUSED_CALLS.labels("at_capacity").inc()
        return Response(say_and_hang_up_twiml(AT_CAPACITY_MESSAGE), media_type="application/xml")
    budget = await state.budget.check()  # within 300 ms: a hung Redis never holds Twilio's webhook
    if budget == UNAVAILABLE:
        log.error("daily cost total unreadable (the shared state does not answer): incoming call %s refused, told "
                  "to try again later", call_sid)
        metrics.REFUSED_CALLS.labels("budget_unavailable").inc()
        return Response(say_and_hang_up_twiml(STATE_UNAVAILABLE_MESSAGE), media_type="application/xml")
    if budget == REACHED:
        log.warning("daily budget reached: incoming call %s told to call later", call_sid)
        metrics.REFUSED_CALLS.labels("daily_budget").inc()
        metrics.BUDGET_STOPS.labels("daily").inc()
        return Response(say_and_hang_up_twiml(BUDGET_MESSAGE), media_type="application/xml")
    stream_parameters = {name: params.get(name, "") for name in ("CallSid", "From", "To")}
    twiml = stream_twiml(request, state.settings, state.credentials, call_sid, INBOUND, stream_parameters)
    return Response(twiml, media_type="application/xml")


class StreamRefused(Exception):
    """A media stream that must not open; the message is the reason (fixed text, safe to log)."""


async def admit_stream(websocket: WebSocket, state: GatewayState) -> StreamGrant | None:
    """The grant of a stream that may open (None: an unsigned stream of the keyless demo); StreamRefused otherwise.

    The order matters: the signature is checked before the credential is claimed, so that someone holding a
    captured credential without Twilio's signature over it cannot use it up before Twilio connects."""
    settings = state.settings
    if state.at_capacity():
        raise StreamRefused("at MAX_CALLS")
    credential = websocket.path_params.get("credential")
    if credential is None:
        if not unsigned_streams_allowed(settings):
            raise StreamRefused("no stream credential in the URL")
        return None
    try:
        grant = state.credentials.verify(credential)
    except CredentialRejected as rejected:
        raise StreamRefused(str(rejected)) from None
    if state.validator is not None:
        base = signed_base(websocket, settings)
        if base is None:
            raise StreamRefused("signature cannot be checked without PUBLIC_URL")
        # Twilio signs the upgrade over the exact wss:// URL, credential included, with no parameters.
        url = stream_url(base, websocket.url.path)
        if not state.validator.validate(url, {}, websocket.headers.get("x-twilio-signature", "")):
            raise StreamRefused("bad X-Twilio-Signature")
    try:
        # Remembered a whole TTL past the credential's expiry: clocks of instances (and Redis) may disagree.
        remember_s = grant.expires_at - time.time() + settings.stream_credential_ttl_s
        first = await StateDeadline().run(state.shared.claim_once(f"stream:{grant.nonce}", remember_s))
    except StateUnavailable as error:
        log.error("shared state unavailable, refusing a media stream: %s", error)
        raise StreamRefused("shared state unavailable") from None
    if not first:
        raise StreamRefused("stream credential already used")
    return grant


async def media_stream(websocket: WebSocket, receive: Receive, send: Send) -> None:
    state: GatewayState = websocket.app.state.gateway
    try:
        grant = await admit_stream(websocket, state)
        if state.at_capacity():
            # Checked again with no await before the call is counted: admissions that waited on the shared
            # state (Redis) at the same time cannot all pass the first check.
            raise StreamRefused("at MAX_CALLS")
    except StreamRefused as refused:
        state.refused_streams.drop(f"refused: {refused}")
        # Closing before accept() would be an HTTP 403 handshake refusal; the protocol says close 1008.
        await websocket.accept()
        await websocket.close(code=POLICY_VIOLATION)
        return
    session = MediaStreamSession(websocket, state.settings, state.observer, state.services, grant=grant,
                                 receive=receive, send=send)
    state.active_calls.add(session)
    try:
        await websocket.accept()
        await session.run()
    finally:
        state.active_calls.discard(session)
        state.console.call_ended(session.call.call_sid)


class MediaStreamEndpoint:
    """The media-stream route as a plain ASGI app: Starlette's WebSocket serves the handshake and a refusal, and a
    call's hot path uses the server's own receive and send (no wrapper per message)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await media_stream(WebSocket(scope, receive, send), receive, send)


async def shared_state_health(state: GatewayState) -> dict[str, Any]:
    """The shared state as the webhook path sees it (read within 300 ms, at most once a second): for both probes."""
    settings = state.settings
    backend = "redis" if settings.redis_url else "sqlite" if settings.state_sqlite_path else "memory"
    return {"backend": backend, **await state.budget.health()}


async def healthz(request: Request) -> Response:
    """Liveness: 200 while the process serves, whatever the shared state says (it is reported, not judged)."""
    state: GatewayState = request.app.state.gateway
    shared = await shared_state_health(state)
    return JSONResponse(
        {
            "status": "ok",
            "version": __version__,
            "active_calls": len(state.active_calls),
            "model": "embedded" if state.settings.uses_embedded_model else state.settings.realtime_model,
            "max_calls": state.settings.max_calls,
            "signatures": state.validator is not None,
            "warnings": state.warnings,
            "draining": state.draining,
            "shared_state": shared,
            "tasks": len(asyncio.all_tasks()),  # for soaks: back to its resting number once calls are over
        }
    )


async def readyz(request: Request) -> Response:
    """Readiness for a load balancer: 503 while draining (SIGTERM), at MAX_CALLS, or while the shared state the
    webhook path needs (the daily cost total, stream credentials) does not answer, so new calls go elsewhere."""
    state: GatewayState = request.app.state.gateway
    shared = await shared_state_health(state)
    reason = ("draining" if state.draining else "at MAX_CALLS" if state.at_capacity()
              else "shared state unavailable" if not shared["available"] else "")
    body = {"ready": not reason, "active_calls": len(state.active_calls), **({"reason": reason} if reason else {}),
            "shared_state": shared}
    return JSONResponse(body, status_code=503 if reason else 200)


async def body_too_large(request: Request, error: Exception) -> Response:
    """413 for a body past its route's limit (routes without a refusal format of their own raise BodyTooLarge)."""
    return PlainTextResponse(f"{error}\n", status_code=413)


class PeerAddressMiddleware:
    """Keeps the TCP peer's address in the scope before X-Forwarded-For replaces the client: only the peer can say
    whether a request came through a trusted proxy (``gateway.twilio.security.signature_base``)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            client = scope.get("client")
            scope[PEER_SCOPE_KEY] = client[0] if client else None
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None, *, observer: CallObserver | None = None,
               metrics_port: bool = True) -> Starlette:
    """Build the app. With no API key, the lifespan starts the embedded Realtime server first. With
    ``METRICS_PORT``, the lifespan also serves ``/metrics`` there (unless ``metrics_port`` is False: a worker,
    whose parent serves it; gateway.server.metrics_listener).

    Raises ConfigError when a real model is configured without what secures it (see ``startup_problems``)."""
    settings = settings or Settings.from_env()
    problems = startup_problems(settings)
    if problems and not settings.insecure_dev_mode:
        raise ConfigError("refusing to take calls with a real model while it is open to anyone:\n  - "
                          + "\n  - ".join(problems)
                          + "\n(for development only, INSECURE_DEV_MODE=true or `gateway serve --insecure-dev` "
                            "starts anyway)")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        metrics_server = contextlib.AsyncExitStack()
        if metrics_port:  # first: a port in use stops the start before anything else is opened
            await metrics_server.enter_async_context(metrics_listener.serving(settings))
        local_server = None
        resolved = settings
        if settings.uses_embedded_model:
            from gateway.local import LocalRealtimeServer

            local_server = LocalRealtimeServer("127.0.0.1", settings.local_realtime_port, agent=settings.local_agent,
                                               session_limit_s=settings.local_session_limit_s)
            await local_server.start()
            resolved = settings.with_model_url(local_server.url)
            log.warning(
                "NO API KEY CONFIGURED: calls go to the EMBEDDED Realtime server at %s (an echo agent), not OpenAI. "
                "Set OPENAI_API_KEY (or REALTIME_API_KEY / AZURE_OPENAI_API_KEY) for a real model.",
                local_server.url,
            )
        for warning in insecure_warnings(settings):
            log.warning("%s (repeated in /healthz)", warning)
        configure_tracing_once()
        for notice in (metrics_listener.startup_notice(settings), connection_caps_warning(settings)):
            if notice:
                log.warning("%s", notice)
        app.state.gateway = GatewayState(resolved, observer, local_server, open_store(settings.store_url))
        # RECORD_RETENTION_DAYS: old call records and recordings pruned now (a PostgreSQL store migrates its schema
        # on this first use), then every hour.
        retention = asyncio.create_task(run_retention(
            app.state.gateway.store, retention_days=settings.record_retention_days,
            recording_dirs=[settings.record_calls_dir]))
        state = app.state.gateway
        if state.console.relay is not None:
            state.console.relay.start()  # this instance's live calls, published for the other instances' consoles
        # Control requests (hang up, transfer, say) for the calls this instance holds, from any instance.
        control = asyncio.create_task(serve_control(state.shared, settings.instance_id, state.find_session))
        # Spooled records written when the store is back; calls of a stopped instance marked lost.
        records = asyncio.create_task(state.records.run(state.shared, state.live_call_sids))
        try:
            yield
        finally:
            for task in (retention, control, records):
                task.cancel()
            await asyncio.gather(retention, control, records, return_exceptions=True)
            await app.state.gateway.aclose()
            if local_server is not None:
                await local_server.stop()
            await metrics_server.aclose()

    routes = [
        Route(INCOMING_CALL_PATH, incoming_call, methods=["GET", "POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        # /metrics on this port only for the keyless demo or behind METRICS_API_KEY (gateway.server.metrics_listener)
        *([Route("/metrics", metrics.metrics_endpoint(settings.metrics_api_key), methods=["GET"])]
          if metrics_listener.public_metrics(settings) else []),
        WebSocketRoute(MEDIA_STREAM_PATH, MediaStreamEndpoint()),
        WebSocketRoute(MEDIA_STREAM_PATH + "/{credential}", MediaStreamEndpoint()),
        *api_routes,
        *console_routes,
    ]
    middleware = [Middleware(PeerAddressMiddleware)]
    if settings.trusted_proxy_ips:
        # X-Forwarded-For/Proto from a trusted proxy give the client's address and scheme (rate limits, logs).
        middleware.append(Middleware(ProxyHeadersMiddleware, trusted_hosts=list(settings.trusted_proxy_ips)))
        # The proxy's sockets are exempt from the per-address caps: the client it names is capped per request.
        middleware.append(Middleware(ClientRequestCap, settings=settings))
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware,
                    exception_handlers={BodyTooLarge: body_too_large})
    app.state.settings = settings  # the server limits gateway.server.runner gives uvicorn
    return app
