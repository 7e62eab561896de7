"""The Starlette application: routes and wiring, nothing else.

* ``GET|POST /incoming-call``: Twilio's voice webhook; answers ``<Connect><Stream>`` TwiML.
* ``WS /media-stream``: the Media Stream, bridged to a Realtime session (``gateway.media_stream``).
* ``GET /healthz``: liveness, with the number of calls in progress.
* ``/calls``, ``/calls/{sid}``, ``/calls/{sid}/hangup``, ``/twilio/call-status``, ``/openapi.json``: the HTTP API
  (``gateway.api``).

When no API key is configured the app starts the embedded Realtime-compatible server in-process and
points the model side at it (and says so, loudly, in the log).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from twilio.request_validator import RequestValidator

from gateway import __version__
from gateway.api import OutboundApi
from gateway.api import routes as api_routes
from gateway.config import Settings
from gateway.media_stream import POLICY_VIOLATION, CallObserver, CallServices, MediaStreamSession
from gateway.tools import ToolRegistry, end_call_tool, load_tools_module, transfer_call_tool
from gateway.store import CallStore, MemoryCallStore, open_store
from gateway.twilio.rest import TwilioRest
from gateway.twilio.twiml import MEDIA_STREAM_PATH, connect_stream_twiml, stream_url
from gateway.twilio.webhook import WebhookRejected, public_base, read_twilio_webhook

log = logging.getLogger("gateway.app")

MAX_WEBHOOK_BODY_BYTES = 64 * 1024


class GatewayState:
    """What the routes share: settings (with the model URL resolved) and the calls in progress."""

    def __init__(self, settings: Settings, observer: CallObserver | None, local_server: Any = None,
                 store: CallStore | None = None) -> None:
        self.settings = settings
        self.observer = observer
        self.local_server = local_server  # the embedded LocalRealtimeServer, when no API key is set
        self.active_calls: set[MediaStreamSession] = set()
        self.validator = RequestValidator(settings.twilio_auth_token) if settings.twilio_auth_token else None
        self.store: CallStore = store if store is not None else MemoryCallStore()  # records, per-call settings
        self.twilio = TwilioRest.from_settings(settings)  # Twilio REST: place, hang up, redirect calls
        self.outbound = OutboundApi(settings, self.store, self.twilio)  # what the HTTP API routes share
        self.services = CallServices(
            tools=build_tool_registry(settings, can_transfer=self.twilio.configured),
            store=self.store,
            twilio=self.twilio if self.twilio.configured else None,
        )

    async def aclose(self) -> None:
        await self.outbound.aclose()
        await self.store.close()
        self.twilio.close()


def build_tool_registry(settings: Settings, *, can_transfer: bool) -> ToolRegistry:
    """The agent's tools: ``end_call`` always; ``transfer_call`` when there is a number and a way to dial it;
    the user's own from ``TOOLS_MODULE``."""
    tools = [end_call_tool()]
    if settings.transfer_number and can_transfer:
        tools.append(transfer_call_tool())
    if settings.tools_module:
        tools.extend(load_tools_module(settings.tools_module))
    return ToolRegistry(tools, timeout_s=settings.tool_timeout_s)


async def incoming_call(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    try:
        params = await read_twilio_webhook(request, state.settings, state.validator, MAX_WEBHOOK_BODY_BYTES)
    except WebhookRejected as rejected:
        return PlainTextResponse(rejected.message, status_code=rejected.status)
    base = public_base(request, state.settings)
    stream_parameters = {name: params.get(name, "") for name in ("CallSid", "From", "To")}
    twiml = connect_stream_twiml(stream_url(base, MEDIA_STREAM_PATH), stream_parameters)
    return Response(twiml, media_type="application/xml")


async def media_stream(websocket: WebSocket) -> None:
    state: GatewayState = websocket.app.state.gateway
    if state.validator is not None:
        # Twilio signs the upgrade against the exact wss:// URL with no parameters (PROTOCOL.md 1).
        url = stream_url(public_base(websocket, state.settings), websocket.url.path)
        if not state.validator.validate(url, {}, websocket.headers.get("x-twilio-signature", "")):
            log.warning("rejected media stream with a bad X-Twilio-Signature")
            # Closing before accept() would be an HTTP 403 handshake refusal; the protocol says close 1008.
            await websocket.accept()
            await websocket.close(code=POLICY_VIOLATION)
            return
    await websocket.accept()
    session = MediaStreamSession(websocket, state.settings, state.observer, state.services)
    state.active_calls.add(session)
    try:
        await session.run()
    finally:
        state.active_calls.discard(session)


async def healthz(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    return JSONResponse(
        {
            "status": "ok",
            "version": __version__,
            "active_calls": len(state.active_calls),
            "model": "embedded" if state.settings.uses_embedded_model else state.settings.realtime_model,
        }
    )


def create_app(settings: Settings | None = None, *, observer: CallObserver | None = None) -> Starlette:
    """Build the app. With no API key, the lifespan starts the embedded Realtime server first."""
    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        local_server = None
        resolved = settings
        if settings.uses_embedded_model:
            from gateway.local import LocalRealtimeServer

            local_server = LocalRealtimeServer("127.0.0.1", settings.local_realtime_port, agent=settings.local_agent)
            await local_server.start()
            resolved = settings.with_model_url(local_server.url)
            log.warning(
                "NO API KEY CONFIGURED: calls go to the EMBEDDED Realtime server at %s (an echo agent), not OpenAI. "
                "Set OPENAI_API_KEY (or REALTIME_API_KEY / AZURE_OPENAI_API_KEY) for a real model.",
                local_server.url,
            )
        elif not settings.twilio_auth_token:
            log.warning(
                "TWILIO_AUTH_TOKEN is not set: webhooks and media streams are NOT signature-checked, so anyone who "
                "finds this host can open model sessions billed to your API key. Set it in production."
            )
        app.state.gateway = GatewayState(resolved, observer, local_server, open_store(settings.store_url))
        try:
            yield
        finally:
            await app.state.gateway.aclose()
            if local_server is not None:
                await local_server.stop()

    routes = [
        Route("/incoming-call", incoming_call, methods=["GET", "POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        WebSocketRoute(MEDIA_STREAM_PATH, media_stream),
        *api_routes,
    ]
    return Starlette(routes=routes, lifespan=lifespan)
