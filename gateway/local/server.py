"""The local Realtime server's I/O shell: a ``websockets`` listener, one session loop per connection.

Each connection runs two tasks around one :class:`~gateway.local.session.RealtimeSession`: the
reader (client message in -> events out) and the pacer (at the session's next deadline, ``tick``).
Both compute and send under one lock, so events leave in exactly the order the session made them.

:class:`Faults` (``server.faults``) injects what a real model service does on a bad day, for the tests of the
gateway's recovery: refused connects (any HTTP status: 401, 429, 503; the first N, or all for T seconds; with a
``Retry-After`` header, in seconds or as an HTTP-date), a socket cut without a close frame, a
session that goes silent without closing (it stops reading, so pings go unanswered), a delayed first answer, and
the session limit (``session_limit_s``: ``session_expired``, then close 1001, as OpenAI does).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Collection, Protocol
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from gateway.call.clock import now_ms

from .agents import AGENTS, Agent
from .errors import ClientError
from .script import ScriptedAgent, load_script
from .session import SESSION_LIMIT_S, RealtimeSession

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1 << 20
PATHS = ("/v1/realtime", "/openai/v1/realtime")
RECENT_SESSIONS = 100
REFUSED_CLOSE_CODE = 3000  # a wrong key: the service closes with 3000 "invalid_request_error.invalid_api_key"


SCRIPTED_PREFIX = "scripted:"


def make_agent(name: str) -> Agent:
    """A fresh agent for one session: a name of :data:`~gateway.local.agents.AGENTS` (``"echo"``) or
    ``"scripted:PATH"`` (a bad script raises :class:`~gateway.local.script.ScriptError`, a ``ValueError`` naming
    the file and the field)."""
    if name.startswith(SCRIPTED_PREFIX):
        return ScriptedAgent(load_script(name[len(SCRIPTED_PREFIX) :]))
    try:
        return AGENTS[name]()
    except KeyError:
        raise ValueError(
            f"unknown local agent {name!r}; expected one of {sorted(AGENTS)} or '{SCRIPTED_PREFIX}/path/to/script.toml'"
        ) from None


class AudioProbe(Protocol):
    """An opt-in observer of caller audio arriving (``server.probe = ...``; e.g. ``replay.load.ForwardingProbe``).

    Called once per ``input_audio_buffer.append`` that added audio, off the session's lock, with the
    monotonic time the message was read from the socket and the session's input-audio clock after it.
    """

    def audio_appended(self, session_id: str, arrived_ms: float, audio_end_ms: float) -> None: ...

    def session_closed(self, session_id: str) -> None: ...


@dataclass
class Faults:
    """Faults to inject; each applies to the next connection(s) only, then resets itself (refusals last until
    their count or their time is used up)."""

    refuse_connects: int = 0  # the next N connection attempts are refused ...
    refuse_for_s: float = 0.0  # ... or every attempt for this long from the first one refused ...
    refuse_status: int = 503  # ... with this HTTP status (401: bad key, 429: rate limited, 503: down) ...
    retry_after: str | None = None  # ... and this Retry-After header, as sent: "2", or an HTTP-date
    drop_after_s: float | None = None  # the next session's socket is cut, no close frame, this long after it opens
    silent_after_s: float | None = None  # the next session stops reading and sending (pings too), socket left open
    first_delta_delay_s: float = 0.0  # the next session waits this long before it starts sending anything
    refusing_since_ms: float | None = None  # set by the server: when refuse_for_s began

    def refuses(self, at_ms: float) -> bool:
        """Whether an attempt at ``at_ms`` is refused (and counts it)."""
        if self.refuse_connects > 0:
            self.refuse_connects -= 1
            return True
        if self.refuse_for_s > 0:
            if self.refusing_since_ms is None:
                self.refusing_since_ms = at_ms
            return at_ms - self.refusing_since_ms < self.refuse_for_s * 1000
        return False

    def refusals(self) -> Faults:
        """What of these faults outlives the session they let through: the refusals left."""
        return Faults(refuse_connects=self.refuse_connects, refuse_for_s=self.refuse_for_s,
                      refuse_status=self.refuse_status, retry_after=self.retry_after,
                      refusing_since_ms=self.refusing_since_ms)


class LocalRealtimeServer:
    """An OpenAI-Realtime-compatible (GA) server on 127.0.0.1, backed by a local agent.

    ``speed`` paces response audio at that many times real time. With ``validate_events`` every
    outgoing event is checked against the official ``openai`` models (needs the test extra);
    mismatches are logged at ERROR and collected in :attr:`validation_failures`.
    ``session_limit_s`` is the session's maximum duration (the service's is 60 minutes). With ``api_keys``, a
    connection must carry one of them (``Authorization: Bearer`` or ``api-key``); with ``models``, it must ask for
    one of them (``?model=``). Otherwise it gets an ``error`` event (``invalid_api_key``, ``model_not_found``) and
    a close, as the service answers a wrong key: the handshake itself succeeds.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        agent: str = "echo",
        validate_events: bool = False,
        speed: float = 8.0,
        session_limit_s: float = SESSION_LIMIT_S,
        api_keys: Collection[str] = (),
        models: Collection[str] = (),
    ) -> None:
        make_agent(agent)  # fail now on an unknown agent name
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.host = host
        self.port = port
        self.agent = agent
        self.validate_events = validate_events
        self.speed = speed
        self.session_limit_s = session_limit_s
        self.api_keys = frozenset(api_keys)  # empty: any key (or none) is accepted
        self.models = frozenset(models)  # empty: any model is accepted
        # The most recent sessions, for tests and debugging; bounded so a long-running server does not grow.
        self.sessions: deque[RealtimeSession] = deque(maxlen=RECENT_SESSIONS)
        self.validation_failures: list[str] = []
        # Opt-in instrumentation (None: no cost beyond one attribute read per client message).
        self.probe: AudioProbe | None = None
        self.faults = Faults()
        self.refused_connects = 0
        # When each upgrade request arrived (now_ms), refused or not; bounded like the sessions.
        self.connect_attempts: deque[float] = deque(maxlen=RECENT_SESSIONS)
        self._silent: set[ServerConnection] = set()  # sockets a fault made silent: cut, not closed, on stop
        self._server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/realtime"

    async def start(self) -> None:
        if self.validate_events:
            from .schema import validate_server_event  # noqa: F401  (fail now if openai is missing)
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            compression=None,
            max_size=MAX_MESSAGE_BYTES,
            process_request=self._process_request,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for ws in list(self._silent):  # they read nothing, so a close handshake would wait for its timeout
            ws.transport.abort()
        self._silent.clear()
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> LocalRealtimeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if not path.startswith(PATHS):
            return connection.respond(HTTPStatus.NOT_FOUND, "Not found: the Realtime API is at /v1/realtime\n")
        at_ms = now_ms()
        self.connect_attempts.append(at_ms)
        faults = self.faults
        if faults.refuses(at_ms):
            self.refused_connects += 1
            response = connection.respond(HTTPStatus(faults.refuse_status), "refused (fault injection)\n")
            if faults.retry_after is not None:
                response.headers["Retry-After"] = faults.retry_after
            return response
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        beta = ws.request.headers.get("OpenAI-Beta", "") if ws.request else ""
        if "realtime=v1" in beta.replace(" ", ""):
            await ws.close(4000, "beta_api_shape_disabled")
            return
        query = parse_qs(urlsplit(ws.request.path).query) if ws.request else {}
        model = query.get("model", ["gpt-realtime"])[0]
        refusal = self._refusal(ws, model)
        if refusal is not None:
            error = {"type": refusal.kind, "code": refusal.code, "message": refusal.message, "param": None,
                     "event_id": None}
            event = {"type": "error", "event_id": "event_refused", "error": error}
            if self.validate_events:
                self._check(event)
            await ws.send(json.dumps(event))
            await ws.close(REFUSED_CLOSE_CODE, f"{refusal.kind}.{refusal.code}")
            return
        session = RealtimeSession(make_agent(self.agent), speed=self.speed, model=model,
                                  limit_s=self.session_limit_s)
        session.opened_at_ms = now_ms()
        self.sessions.append(session)
        faults, self.faults = self.faults, self.faults.refusals()
        try:
            await _Connection(self, ws, session, faults).run()
        finally:
            session.closed_at_ms = now_ms()
            session.release()
            if self.probe is not None:
                self.probe.session_closed(session.id)

    def _refusal(self, ws: ServerConnection, model: str) -> ClientError | None:
        """Why this connection gets no session (a key or a model the server does not know), or None."""
        headers = ws.request.headers if ws.request else {}
        if self.api_keys:
            bearer = headers.get("Authorization", "")
            key = bearer[len("Bearer "):] if bearer.startswith("Bearer ") else headers.get("api-key", "")
            if key not in self.api_keys:
                return ClientError("Incorrect API key provided.", "invalid_api_key")
        if self.models and model not in self.models:
            return ClientError(f"The model '{model}' does not exist or you do not have access to it.",
                               "model_not_found")
        return None

    def _check(self, event: dict[str, Any]) -> None:
        from .schema import EventSchemaError, validate_server_event

        try:
            validate_server_event(event)
        except EventSchemaError as exc:
            log.error("local realtime: server event does not match the OpenAI models: %s", exc)
            self.validation_failures.append(str(exc))


class _Connection:
    __slots__ = ("server", "ws", "session", "lock", "wake", "faults", "silent")

    def __init__(self, server: LocalRealtimeServer, ws: ServerConnection, session: RealtimeSession,
                 faults: Faults | None = None) -> None:
        self.server = server
        self.ws = ws
        self.session = session
        self.lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self.faults = faults or Faults()
        self.silent = False

    async def run(self) -> None:
        pacer = asyncio.create_task(self._pace())
        expiry = asyncio.create_task(self._expire())
        fault = asyncio.create_task(self._inject())
        try:
            if self.faults.first_delta_delay_s:
                await asyncio.sleep(self.faults.first_delta_delay_s)
            await self._send(self.session.open())
            async for message in self.ws:
                probe = self.server.probe
                if probe is None:
                    async with self.lock:
                        await self._send(self.session.receive(message, now_ms()))
                else:
                    arrived_ms = now_ms()
                    before = self.session.input_audio_ms
                    async with self.lock:
                        await self._send(self.session.receive(message, now_ms()))
                    if self.session.input_audio_ms != before:
                        probe.audio_appended(self.session.id, arrived_ms, self.session.input_audio_ms)
                self.wake.set()
        except ConnectionClosed:
            pass
        finally:
            self.server._silent.discard(self.ws)
            pacer.cancel()
            expiry.cancel()
            fault.cancel()
            await asyncio.gather(pacer, expiry, fault, return_exceptions=True)

    async def _inject(self) -> None:
        faults = self.faults
        if faults.drop_after_s is not None:
            await asyncio.sleep(faults.drop_after_s)
            log.warning("local realtime: fault injection: cutting session %s", self.session.id)
            self.ws.transport.abort()
        elif faults.silent_after_s is not None:
            await asyncio.sleep(faults.silent_after_s)
            log.warning("local realtime: fault injection: session %s goes silent", self.session.id)
            self.silent = True
            self.server._silent.add(self.ws)
            self.ws.transport.pause_reading()  # nothing read: no message handled, no ping answered

    async def _send(self, events: list[dict[str, Any]]) -> None:
        if self.silent:
            return
        validate = self.server.validate_events
        for event in events:
            if validate:
                self.server._check(event)
            await self.ws.send(json.dumps(event))
            self.session.events_sent += 1

    async def _pace(self) -> None:
        """Wake at the session's next deadline (or when a message may have set one) and tick."""
        while True:
            deadline = self.session.next_deadline()
            self.wake.clear()
            try:
                if deadline is None:
                    await self.wake.wait()
                else:
                    delay = (deadline - now_ms()) / 1000.0
                    if delay > 0:
                        async with asyncio.timeout(delay):
                            await self.wake.wait()
            except TimeoutError:
                pass
            try:
                async with self.lock:
                    await self._send(self.session.tick(now_ms()))
            except ConnectionClosed:
                return
            except Exception:
                log.exception("local realtime: pacing failed")
                await asyncio.sleep(0.05)

    async def _expire(self) -> None:
        await asyncio.sleep(self.server.session_limit_s)
        try:
            async with self.lock:
                await self._send(self.session.expire())
            await self.ws.close(1001, "session_expired")
        except ConnectionClosed:
            pass


async def run_local_realtime(host: str, port: int, session_limit_s: float = SESSION_LIMIT_S) -> None:
    """Serve until cancelled (``gateway local-realtime --port N [--session-limit-s S]``)."""
    async with LocalRealtimeServer(host, port, session_limit_s=session_limit_s) as server:
        log.info("local realtime server listening at %s", server.url)
        await asyncio.Future()
