"""One call's shell: Twilio's WebSocket on one side, the model's on the other.

One task reads Twilio (the server's ASGI receive); the model's messages arrive by callback, in the event loop's
turn that read them (:mod:`.model_socket`). Each is parsed at the edge, handed as a typed event to
:class:`gateway.call.Call`, and what comes back is carried out at once: messages go into each peer's outbox
(:mod:`gateway.outbox`), which writes them in the same turn unless the socket must wait. The shell owns sockets,
timeouts and logging; it makes no decisions about the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import deque
from functools import partial
from dataclasses import dataclass, field
from typing import Any, Callable

from starlette.types import Receive
from starlette.types import Send as ASGISend
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.exceptions import WebSocketException

from gateway.call import (
    END_CALL,
    AgentAudioStarted,
    TRANSFER_CALL,
    ConnectModel,
    Call,
    CallConfig,
    CallEvent,
    CallStarted,
    Dropped,
    EndCall,
    HangUp,
    ModelReportedError,
    ModelRolledOver,
    Output,
    Peer,
    PrepareRollover,
    RunTool,
    Send,
    SwitchModel,
    Transfer,
)
from gateway.clock import now_ms as _now_ms
from gateway.config import Settings
from gateway.direct_ws import direct_receive
from gateway.droplog import DropCounter
from gateway.observe import metrics
from gateway.observe.ledger import CallLedger
from gateway.observe.logs import bind_call, in_call_context
from gateway.outbox import Outbox, Pacer

from .model_socket import ModelSocket, ModelSocketClosed
from gateway.realtime import events as rt
from gateway.security import StreamGrant
from gateway.state.base import StateUnavailable
from gateway.recording import CallRecorder
from gateway.tools import ToolContext, ToolRegistry
from gateway.twilio.media import MediaStreamError, encode_json, encode_message, parse_twilio_message
from gateway.twilio.twiml import dial_twiml

log = logging.getLogger("gateway.media_stream")

MODEL_CLOSE_TIMEOUT_S = 1.0
# Sized for a phone call, not a web page: a connect that takes longer than this is retried, and a model that stops
# answering without closing its socket (a half-open TCP path) misses a ping within PING_INTERVAL + PING_TIMEOUT s.
MODEL_OPEN_TIMEOUT_S = 3.0
MODEL_PING_INTERVAL_S = 2.0
MODEL_PING_TIMEOUT_S = 3.0
# Waits before reconnecting after consecutive failed attempts (a session that was up reconnects at once).
MODEL_RECONNECT_BACKOFF_S = (0.2, 0.5, 1.0, 2.0)
MODEL_HEALTHY_SESSION_S = 2.0
# Giving up: no model session for this long (at the start of a call or after a loss), or more session losses than
# this within a minute (a session that lives 2 s and dies, over and over). The call then ends with its spoken
# message (the TwiML after </Connect>), never in silence.
MODEL_DOWN_LIMIT_S = 10.0
MAX_MODEL_LOSSES_PER_MINUTE = 6
# Twilio sends `start` right after connecting; a socket that does not is not a call (and gets no model session).
START_TIMEOUT_S = 5.0
# Caller audio queued towards a model that is not reading it (about 15 s of PCM16 as base64): past this, live
# frames are dropped and counted; the reader never waits on the model socket (gateway.outbox). The audio held
# while a session (re)connects is one message put into an empty queue, so it is never dropped.
MODEL_BACKLOG_BYTES = 1024 * 1024
# Agent audio and marks queued for a Twilio socket that is not being read: past this the call ends.
TWILIO_BACKLOG_BYTES = 8 * 1024 * 1024
# What goes ahead of everything queued for a peer (gateway.outbox): what stops the agent at once.
_MODEL_CONTROL = frozenset({"conversation.item.truncate", "response.cancel"})
_TWILIO_AUDIO = frozenset({"media", "mark"})
MODEL_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# A session prepared for a rollover must answer its session.update within this, or it is dropped (and tried later).
ROLLOVER_READY_TIMEOUT_S = 5.0
# Model events a session says before it is current (opening, or prepared and waiting for the switch) are kept, up
# to this many, and handled in order once it is; past it they are dropped and counted.
MAX_MODEL_BACKLOG = 256
POLICY_VIOLATION = 1008
# A live call holds leases (MAX_CALLS_GLOBAL, MAX_CALLS_PER_NUMBER) and its registry entry (which instance holds
# it, for control from any instance) for this long, renewed every LEASE_RENEW_S while it lives: a crashed
# instance's calls free their slots within the TTL.
LEASE_TTL_S = 30.0
LEASE_RENEW_S = 10.0
RECORD_SAVE_TIMEOUT_S = 5.0  # a call's record is written within this at its end, or logged as lost
TICK_INTERVAL_S = 1.0  # how often the core's clock checks run (time limit, idle media)

CallObserver = Callable[[Call, CallEvent], None]


@dataclass
class CallServices:
    """What a call may use beyond its two sockets; shared by all calls of the app."""

    tools: ToolRegistry = field(default_factory=lambda: ToolRegistry([]))
    store: Any = None  # gateway.store.CallStore: per-call settings of outbound calls
    twilio: Any = None  # gateway.twilio.rest client: hang up and transfer live calls
    prices: Any = None  # gateway.observe.cost.Prices of the configured model (None: unknown, cost not counted)
    budget: Any = None  # gateway.observe.budget.DailyBudget: today's cost, shared by every instance
    shared: Any = None  # gateway.state.SharedState: leases (concurrency limits) and the live-call registry
    feed: Callable[[Call, CallEvent], None] | None = None  # live view of every call's events (the console)


def call_config(settings: Settings, registry: ToolRegistry | None = None) -> CallConfig:
    """The core's view of the settings: the session.update to send and the barge-in knobs."""
    if settings.turn_detection == "none":
        turn_detection: dict[str, Any] | None = None
    elif settings.turn_detection == "semantic_vad":
        turn_detection = {
            "type": "semantic_vad",
            "eagerness": settings.vad_eagerness,
            "create_response": True,
            "interrupt_response": settings.interrupt_response,
        }
    else:
        turn_detection = {
            "type": "server_vad",
            "threshold": settings.vad_threshold,
            "prefix_padding_ms": settings.vad_prefix_padding_ms,
            "silence_duration_ms": settings.vad_silence_duration_ms,
            "create_response": True,
            "interrupt_response": settings.interrupt_response,
        }
    update = rt.session_update(
        model=settings.realtime_model,
        instructions=settings.instructions,
        voice=settings.voice,
        audio_format=settings.audio_format,
        turn_detection=turn_detection,
        transcription_model=settings.transcription_model,
        tools=registry.definitions() if registry else None,
    )
    control = frozenset(name for name in (END_CALL, TRANSFER_CALL) if registry and registry.is_builtin(name))
    return CallConfig(
        session_update=update,
        audio_format=settings.audio_format,
        agent_speaks_first=settings.agent_speaks_first,
        greeting_instructions=settings.greeting_instructions,
        interrupt_response=settings.interrupt_response,
        mark_interval_ms=settings.mark_interval_ms,
        call_control_tools=control,
        account_sid=settings.twilio_account_sid,
        max_call_duration_ms=settings.max_call_duration_s * 1000,
        media_idle_timeout_ms=int(settings.media_idle_timeout_s * 1000),
        caller_audio_burst_ms=settings.caller_audio_burst_ms,
        max_tools_per_call=settings.max_tools_per_call,
        session_limit_ms=int(settings.model_session_limit() * 1000),
        rollover_margin_ms=int(settings.model_rollover_margin_s * 1000),
        vad_silence_ms=settings.vad_silence_duration_ms if settings.turn_detection == "server_vad" else 0,
        caller_audio_batch_ms=settings.caller_audio_batch_ms,
    )


# One encoder for every message: orjson, compact (gateway.twilio.media.encode_json): bytes for the model socket,
# text for Twilio's (an ASGI text frame is a str).


@dataclass(eq=False)
class _ModelLink:
    """One model session: its socket, its outbox and the writer task that finishes writes that must wait.

    Its messages arrive by callback (:meth:`MediaStreamSession._model_message`), in the event loop's own turn. While
    it is not the call's current session they wait in ``backlog`` (a session opening, or one prepared for a rollover
    until the switch); once ``retired`` (replaced, or closing) they are dropped. ``ended`` says why the session is
    over for the call: its socket closed, or it was switched away from."""

    socket: ModelSocket = field(init=False)
    outbox: Outbox = field(init=False)
    writer: asyncio.Task[None] = field(init=False)
    ended: asyncio.Future[str] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    ready: asyncio.Future[None] | None = None  # a prepared session: its session.updated (or refusal)
    backlog: list[bytes] = field(default_factory=list)
    retired: bool = False

    def end(self, reason: str) -> None:
        if not self.ended.done():
            self.ended.set_result(reason)


def _drop_counter(source: str) -> Callable[[str, int], None]:
    def counted(reason: str, count: int) -> None:
        metrics.DROPPED.labels(source, metrics.label("dropped", "reason", reason)).inc(count)
    return counted


def _written_to_model(kind: str, arrived: float) -> None:
    if kind == "input_audio_buffer.append":
        metrics.FRAME_DELAY_TO_MODEL.observe(time.monotonic() - arrived)


class _UnknownCallSettings(Exception):
    """An outbound call's settings are not in the store (never saved, expired, or already taken)."""


class MediaStreamSession:
    """Bridges one accepted Twilio media-stream WebSocket to one model session."""

    def __init__(
        self,
        websocket: WebSocket,
        settings: Settings,
        observer: CallObserver | None = None,
        services: CallServices | None = None,
        grant: StreamGrant | None = None,
        *,
        receive: Receive | None = None,
        send: ASGISend | None = None,
    ) -> None:
        self.websocket = websocket
        # The call's hot path uses the server's ASGI callables directly (Starlette's wrapper, for the handshake and
        # the close, adds a state machine per message); the accepted socket is open until it is closed or lost.
        self._receive: Receive = receive or websocket.receive  # type: ignore[assignment]
        self._send_asgi: ASGISend | None = send
        self._twilio_open = True
        self.settings = settings
        self.services = services or CallServices()
        self.grant = grant  # what the stream's credential allows: one call (None: an unsigned demo stream)
        self.call = Call(call_config(settings, self.services.tools), expected_call_sid=grant.call_sid if grant else "")
        self._drops = DropCounter(log, "frames from twilio", settings.drop_log_interval_s, counted=_drop_counter("twilio"))
        self._model_drops = DropCounter(log, "events from the model", settings.drop_log_interval_s,
                                        counted=_drop_counter("model"))
        self.ledger = CallLedger("outbound" if grant is not None and grant.outbound else "inbound",
                                 settings.realtime_model, self.services.prices, full_numbers=settings.log_full_numbers)
        self.record: dict[str, Any] | None = None  # the call's record, once it ended
        self._budget_reached = False
        self._arrived = 0.0  # time.monotonic() of the frame being handled (0: none; nothing to measure)
        self._speech_started_at = 0.0  # when the model said the caller began to speak: barge-in reaction
        self._log_context: dict[str, str] = {}
        self._leases: list[str] = []  # lease scopes held in the shared state
        self._registered = False
        self._background: set[asyncio.Task[None]] = set()  # tools, hang-ups, transfers of this call
        self._observer = observer
        self._model_link: _ModelLink | None = None  # the current model session: what the core's messages go to
        self._standby: _ModelLink | None = None  # a session being prepared for a rollover
        self._handover: _ModelLink | None = None  # the session switched to, for the model reader to take over
        self._twilio_out = Outbox(self._write_twilio, max_bytes=TWILIO_BACKLOG_BYTES, written=self._written_to_twilio,
                                  pacer=Pacer(settings.twilio_audio_lead_ms) if settings.twilio_audio_lead_ms else None)
        self._model_task: asyncio.Task[None] | None = None
        self._done = asyncio.Event()
        self._end_reason = ""
        self._close_code = 1000
        self._dropped_audio_frames = 0
        self._recorder = CallRecorder(settings.record_calls_dir, _now_ms(), settings.record_max_bytes) if settings.record_calls_dir else None

    async def run(self) -> None:
        self._log_context = bind_call()  # every line of this call (its tasks inherit it) carries its SIDs
        twilio_task = asyncio.create_task(self._twilio_loop(), name="twilio-reader")
        self._in_background(self._twilio_out.run())
        self._in_background(self._clock_loop())
        try:
            try:
                await asyncio.wait_for(self._done.wait(), START_TIMEOUT_S)
            except TimeoutError:
                if self._model_task is None:
                    log.warning("closing a media stream that sent no start within %.0f s", START_TIMEOUT_S)
                    self._end_reason, self._close_code = "no start event", POLICY_VIOLATION
                else:
                    await self._done.wait()
        finally:
            twilio_task.cancel()
            # Close the model socket (1000) before cancelling its reader: a reader cancelled inside
            # `async with connect(...)` would close it with 1011 (internal error) on every hang-up.
            await self._close_model()
            tasks = [twilio_task, *self._background]
            for task in self._background:
                task.cancel()
            if self._model_task is not None:
                self._model_task.cancel()
                tasks.append(self._model_task)
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._close_twilio()
            if self._recorder is not None:
                self._recorder.close()
            self._drops.flush()
            self._model_drops.flush()
            metrics.flush_tallies()
            self.record = record = self.ledger.finish(self._end_reason or "-", _now_ms(),
                                                      refused=self._close_code == POLICY_VIOLATION)
            log.info(
                "call ended call_sid=%s reason=%s ended_by=%s duration_s=%.1f turns=%d cost_usd=%.4f "
                "dropped_audio_frames=%d dropped_frames_from_twilio=%d",
                self.call.call_sid or "-", self._end_reason or "-", record["ended_by"], record["duration_s"],
                len(record["turns"]), record["cost_usd"], self._dropped_audio_frames, self._drops.total,
            )
            await self._release_leases()
            await self._save_record(record)
            # Hook (call recordings): the call's stereo WAV from its frame recording, when it may be recorded
            # (RECORD_AUDIO, or POST /calls' "record"), named in its record (gateway.recording_wav).
            if self._recorder is not None:
                from gateway.recording_wav import save_call_recording

                await save_call_recording(self.services.store, self.settings, self._recorder.path, record["call_sid"])

    # ---- readers ----------------------------------------------------------------------------

    async def _twilio_loop(self) -> None:
        """Twilio's messages: by callback where the server offers it (gateway.direct_ws: no task switch per frame),
        else, and always for what was queued before and for the disconnect, through ASGI receive."""
        attach = direct_receive(self.websocket.scope) if self._send_asgi is not None else None
        if attach is not None:
            log_context = self._log_context
            attach(lambda data: in_call_context(log_context, self._twilio_frame, data))
        try:
            receive = self._receive
            while not self._done.is_set():
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    self._twilio_open = False
                    break
                text = message.get("text")
                if text is None:
                    self._drops.drop("binary frame")
                    continue
                self._twilio_frame(text)
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._twilio_open = False
        except Exception:
            log.exception("twilio reader failed call_sid=%s", self.call.call_sid or "-")
        finally:
            if attach is not None:
                attach(None)
        self._dispatch(self.call.twilio_closed())

    def _twilio_frame(self, text: str | bytes) -> None:
        """One text message from Twilio (UTF-8 bytes by callback, str through ASGI): bounded, parsed, handled."""
        if self._done.is_set():
            return
        self._arrived = time.monotonic()
        now = self._arrived * 1000.0
        max_bytes = self.settings.max_frame_bytes
        if len(text) > max_bytes:
            self._drops.drop(f"frame over MAX_FRAME_BYTES ({max_bytes})")
            if self._recorder is not None:
                self._recorder.record("in", f'{{"gateway":"dropped oversized frame","bytes":{len(text)}}}', now)
            return
        if self._recorder is not None:
            self._recorder.record("in", text if isinstance(text, str) else text.decode("utf-8", "replace"), now)
        try:
            event = parse_twilio_message(text)
        except MediaStreamError as error:
            self._drops.drop(str(error))
            return
        except Exception:  # a parser bug costs one frame, never the call
            log.exception("dropped frame from twilio call_sid=%s: the parser failed", self.call.call_sid or "-")
            return
        try:
            self._dispatch(self.call.twilio_event(event, now))
        except Exception:  # never into the server's protocol (a callback): the frame is lost, the call goes on
            log.exception("a frame from twilio could not be handled call_sid=%s", self.call.call_sid or "-")

    async def _apply_per_call_settings(self) -> None:
        """An outbound call's settings (instructions, voice, greeting) were saved under its CallSid when it was
        placed; its stream (and only it: the credential names the CallSid, ``start`` must match) takes them, once."""
        store = self.services.store
        if self.grant is None or not self.grant.outbound or store is None:
            return
        found = store.take_call_settings(self.call.call_sid)
        if inspect.isawaitable(found):
            found = await found
        if found is None:
            # Expired, already taken, or stored by another worker on a per-process store: this callee must not
            # get the inbound agent by mistake.
            log.error("no stored settings for this outbound call; ending it call_sid=%s", self.call.call_sid)
            raise _UnknownCallSettings
        self.call.apply_call_settings(
            instructions=found.instructions or "", voice=found.voice or "", greeting=found.greeting or ""
        )

    async def _clock_loop(self) -> None:
        """The core's clock checks (time limit, idle media), about once a second."""
        ticks = 0
        while not self._done.is_set():
            await asyncio.sleep(TICK_INTERVAL_S)
            self._arrived = 0.0
            self._dispatch(self.call.tick(_now_ms()))
            self.ledger.marks_pending(self.call.marks_pending)
            metrics.flush_tallies()
            ticks += 1
            if ticks % int(LEASE_RENEW_S / TICK_INTERVAL_S) == 0 and (self._leases or self._registered):
                self._in_background(self._renew_leases())

    async def _model_loop(self) -> None:
        """Hold a model session for the whole call: a socket that dies (or a session that reaches its time
        limit) is replaced, and the conversation goes on in the new session (see ``Call.model_lost``)."""
        try:
            await self._apply_per_call_settings()
        except _UnknownCallSettings:
            self._close_code = POLICY_VIOLATION
            self._end("unknown per-call settings")
            return
        except Exception:  # the store failed (a database hiccup): end the call with its message, not in silence
            log.exception("per-call settings could not be read; ending the call call_sid=%s", self.call.call_sid)
            self._end("per-call settings unavailable")
            return
        failures = 0
        losses: deque[float] = deque()  # when sessions were lost, over the last minute
        loop = asyncio.get_running_loop()
        down_since = loop.time()  # no model session since then
        while not self._done.is_set():
            started = loop.time()
            connected, reason = await self._one_model_session()
            if self._done.is_set():
                break
            if self._handover is not None:
                continue  # a rollover: the prepared session is already configured and current
            now = loop.time()
            if connected:
                down_since = now
            losses.append(now)
            while losses and now - losses[0] > 60.0:
                losses.popleft()
            # A session that was up a while reconnects at once; one that dies at once counts as a failure.
            healthy = connected and now - started >= MODEL_HEALTHY_SESSION_S
            failures = 0 if healthy else failures + 1
            backoff = MODEL_RECONNECT_BACKOFF_S[min(failures, len(MODEL_RECONNECT_BACKOFF_S)) - 1] if failures else 0.0
            give_up = ("MODEL_RECONNECT is off" if not self.settings.model_reconnect
                       else f"no model session for {MODEL_DOWN_LIMIT_S:g} s" if now + backoff - down_since > MODEL_DOWN_LIMIT_S
                       else f"{len(losses)} model sessions lost within a minute" if len(losses) > MAX_MODEL_LOSSES_PER_MINUTE
                       else "")
            if give_up:
                log.error("model unavailable call_sid=%s (%s; last: %s); ending the call",
                          self.call.call_sid or "-", give_up, reason)
                self._dispatch(self.call.model_closed(f"{give_up}; last: {reason}"))
                return
            log.warning("model session lost call_sid=%s (%s); reconnecting", self.call.call_sid or "-", reason)
            self._dispatch(self.call.model_lost(reason, _now_ms()))
            if backoff:
                await asyncio.sleep(backoff)

    async def _one_model_session(self) -> tuple[bool, str]:
        """Connect (or take over the session a rollover switched to) and read until the socket closes:
        (whether it connected, why it ended)."""
        link, self._handover = self._handover, None
        fresh = link is None
        try:
            if link is None:
                link = await self._open_model_link()
            self._model_link = link
            if fresh:
                self._dispatch(self.call.model_connected(_now_ms()))
            self._replay_backlog(link)  # what it said before it was current, in order, before anything newer
            return True, await link.ended
        except asyncio.CancelledError:
            raise
        except (OSError, WebSocketException, TimeoutError) as error:
            reason = f"{type(error).__name__}: {error}"
            log.error("model connection failed call_sid=%s: %s", self.call.call_sid or "-", reason)
            return link is not None, reason
        except Exception as error:
            log.exception("model reader failed call_sid=%s", self.call.call_sid or "-")
            return link is not None, f"{type(error).__name__}: {error}"
        finally:
            if link is not None and self._model_link is link:
                self._model_link = None
            if link is not None and self._handover is not link:
                await self._close_model_link(link)

    async def _open_model_link(self) -> _ModelLink:
        settings = self.settings
        link = _ModelLink()
        link.socket = await ModelSocket.connect(
            settings.model_connect_url(),
            lambda data: in_call_context(self._log_context, partial(self._model_message, link), data),
            headers=settings.model_headers(),
            max_size=MODEL_MAX_MESSAGE_BYTES,
            open_timeout_s=MODEL_OPEN_TIMEOUT_S,
            ping_interval_s=MODEL_PING_INTERVAL_S,
            ping_timeout_s=MODEL_PING_TIMEOUT_S,
            close_timeout_s=MODEL_CLOSE_TIMEOUT_S,
        )
        link.socket.closed.add_done_callback(lambda closed: self._model_socket_closed(link, closed.result()))
        link.outbox = Outbox(self._model_writer(link.socket), max_bytes=MODEL_BACKLOG_BYTES, written=_written_to_model,
                             write_now=self._model_write_now(link.socket))
        link.writer = asyncio.create_task(link.outbox.run(), name="model-writer")
        return link

    @staticmethod
    def _model_socket_closed(link: _ModelLink, reason: str) -> None:
        link.end(reason)
        if link.ready is not None and not link.ready.done():
            link.ready.set_exception(ConnectionError(f"closed before it was ready ({reason})"))
            link.ready.exception()  # retrieved here: a prepare that timed out no longer awaits it

    @staticmethod
    async def _close_model_link(link: _ModelLink) -> None:
        """Close with 1000 (within MODEL_CLOSE_TIMEOUT_S, else dropped), then stop its writer."""
        link.retired = True
        link.backlog.clear()
        with contextlib.suppress(Exception):
            await link.socket.close()
        link.outbox.close()
        link.writer.cancel()
        await asyncio.gather(link.writer, return_exceptions=True)

    def _model_message(self, link: _ModelLink, data: bytes) -> None:
        """One message from a model session's socket, in the event loop's turn that read it."""
        if link is self._model_link:
            if link.backlog:
                self._replay_backlog(link)
            self._model_event(data)
        elif not link.retired:
            if link.ready is not None and not link.ready.done():
                self._before_ready(link, data)
            elif len(link.backlog) < MAX_MODEL_BACKLOG:
                link.backlog.append(data)
            else:
                self._model_drops.drop("event from a session not yet current, past the backlog")

    def _replay_backlog(self, link: _ModelLink) -> None:
        backlog, link.backlog = link.backlog, []
        for data in backlog:
            if link is not self._model_link:
                return
            self._model_event(data)

    def _model_event(self, data: bytes) -> None:
        self._arrived = time.monotonic()
        try:
            event = rt.parse_model_event(data)
        except rt.ModelEventError as error:
            self._model_drops.drop(str(error))
            return
        except Exception:  # a parser bug costs one event, never the call
            log.exception("dropped model event call_sid=%s: the parser failed", self.call.call_sid or "-")
            return
        if isinstance(event, rt.SpeechStarted):
            self._speech_started_at = self._arrived
        self._dispatch(self.call.model_event(event, self._arrived * 1000.0))

    @staticmethod
    def _before_ready(link: _ModelLink, data: bytes) -> None:
        """A prepared session, configuring: its session.updated makes it ready (what came before is not kept)."""
        assert link.ready is not None
        try:
            event = rt.parse_model_event(data)
        except rt.ModelEventError:
            return
        if isinstance(event, rt.SessionUpdated):
            link.ready.set_result(None)
        elif isinstance(event, rt.ModelError):
            link.ready.set_exception(RuntimeError(f"the model refused the session: {event.code}: {event.message}"))

    # ---- make-before-break rollover -----------------------------------------------------------

    async def _prepare_rollover(self, request: PrepareRollover) -> None:
        """Open the next session beside the current one, configure it with the conversation so far, and once it
        says ``session.updated`` let the core decide whether to switch (only at a quiet point)."""
        link: _ModelLink | None = None
        log.info("preparing the next model session call_sid=%s (%s)", self.call.call_sid or "-", request.reason)
        try:
            link = await self._open_model_link()
            link.ready = asyncio.get_running_loop().create_future()
            for message in self.call.rollover_setup():
                link.outbox.put(encode_json(message), message["type"])
            await asyncio.wait_for(asyncio.shield(link.ready), ROLLOVER_READY_TIMEOUT_S)
            if self._done.is_set() or self._model_link is None:
                self.call.rollover_failed(_now_ms())
                return
            self._standby = link
            self._dispatch(self.call.rollover_ready(_now_ms()))
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.warning("the next model session could not be prepared call_sid=%s: %s: %s; the current one goes on",
                        self.call.call_sid or "-", type(error).__name__, error)
            self.call.rollover_failed(_now_ms())
        finally:
            self._standby = None
            if link is not None and self._model_link is not link and self._handover is not link:
                await self._close_model_link(link)

    def _switch_model(self) -> None:
        """The prepared session is current from now on; the old one is retired (what it still says is not heard)
        and its reader moves on to the new one, which first handles what it said while waiting."""
        standby, old = self._standby, self._model_link
        if standby is None:
            return
        self._model_link = self._handover = standby
        self._standby = None
        if old is not None:
            old.retired = True
            old.end("rolled over")
        asyncio.get_running_loop().call_soon(self._replay_backlog, standby)

    @staticmethod
    def _model_write_now(socket: ModelSocket) -> Callable[[bytes], bool]:
        def write_now(data: bytes) -> bool:
            if socket.paused:
                return False  # over the transport's high-water mark: the writer task waits for it to drain
            try:
                socket.send(data)
            except ModelSocketClosed:
                pass  # the socket's close ends the session, and it is replaced
            return True
        return write_now

    @staticmethod
    def _model_writer(socket: ModelSocket) -> Callable[[bytes], Any]:
        async def write(data: bytes) -> None:
            try:
                if socket.paused:
                    await socket.drained()
                socket.send(data)
            except ModelSocketClosed:
                pass  # the socket's close ends the session, and it is replaced
        return write

    # ---- outputs ----------------------------------------------------------------------------

    def _dispatch(self, outputs: list[Output]) -> None:
        for output in outputs:
            if isinstance(output, Send):
                if output.to is Peer.TWILIO:
                    self._send_twilio(output.message)
                else:
                    self._send_model(output.message)
            elif isinstance(output, EndCall):
                if output.refused:
                    self._close_code = POLICY_VIOLATION
                self._end(output.reason)
            elif isinstance(output, PrepareRollover):
                self._in_background(self._prepare_rollover(output))
            elif isinstance(output, SwitchModel):
                self._switch_model()
            elif isinstance(output, ConnectModel):
                if self._model_task is None:
                    self._model_task = asyncio.create_task(self._model_loop(), name="model-reader")
            elif isinstance(output, RunTool):
                self._in_background(self._run_tool(output))
            elif isinstance(output, (HangUp, Transfer)):
                self._in_background(self._call_control(output))
            else:
                self._dispatch(self._report(output))

    def _end(self, reason: str) -> None:
        if not self._done.is_set():
            self._end_reason = reason
            self._done.set()

    def _in_background(self, work: Any) -> None:
        """Off the audio path: readers never wait for a tool or a REST request."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run_tool(self, request: RunTool) -> None:
        context = ToolContext(self.call.call_sid, self.call.stream_sid, dict(self.call.custom_parameters))
        started = time.monotonic()
        output = await self.services.tools.run(request.name, request.arguments, context)
        outcome = "error" if output.startswith('{"error"') else "ok"
        self.ledger.tool_finished(request.name if self.services.tools.has(request.name) else "unknown", outcome,
                                  time.monotonic() - started)
        self._arrived = 0.0
        self._dispatch(self.call.tool_finished(request.call_id, output))

    async def _call_control(self, control: HangUp | Transfer) -> None:
        twilio, call_sid = self.services.twilio, self.call.call_sid
        if twilio is None:
            # Without REST credentials, closing the stream is all we can do (it ends <Connect>).
            log.warning("%s without Twilio REST credentials: closing the stream call_sid=%s", control.reason, call_sid)
            self._end(control.reason)
            return
        try:
            if isinstance(control, HangUp):
                await twilio.hangup(call_sid)
                self._end(control.reason)
            else:
                # Twilio leaves <Connect> for the new TwiML and stops this stream itself.
                await twilio.update_twiml(call_sid, dial_twiml(self.settings.transfer_number))
        except Exception:
            if isinstance(control, HangUp):
                log.exception("hang-up failed at Twilio call_sid=%s; closing the stream", call_sid)
                self._end(control.reason)
            else:
                log.exception("transfer failed at Twilio call_sid=%s; the call goes on", call_sid)
                self._dispatch(self.call.transfer_failed())

    def _send_twilio(self, message: dict[str, Any]) -> None:
        """Queue a message for Twilio (never waits: gateway.outbox). ``clear`` goes first, and takes the agent
        audio still queued with it."""
        if not self._twilio_open:
            return
        text = encode_message(message)
        if self._recorder is not None:
            self._recorder.record("out", text, _now_ms())
        event = message["event"]
        if event == "clear":
            self._twilio_out.discard(_TWILIO_AUDIO)
            self._twilio_out.put_first(text, event, arrived=self._speech_started_at)
            return
        play_ms = len(message["media"]["payload"]) * 3 / 4 / 8 if event == "media" else 0.0  # base64 of 8 kHz mu-law
        self._twilio_out.put(text, event, arrived=self._arrived, play_ms=play_ms)
        if self._twilio_out.overflowed:
            log.error("Twilio is not reading its socket (%d bytes queued); ending the call call_sid=%s",
                      self._twilio_out.queued_bytes, self.call.call_sid or "-")
            self._end("Twilio socket not reading")

    async def _write_twilio(self, text: str) -> None:
        try:
            if self._send_asgi is None:
                await self.websocket.send_text(text)
            else:
                await self._send_asgi({"type": "websocket.send", "text": text})
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._twilio_open = False
            self._twilio_out.close()
            self._done.set()

    def _send_model(self, message: dict[str, Any]) -> None:
        """Queue a message for the model session (never waits). Truncates and cancels go first; live caller audio
        is dropped, and counted, when the model is not reading it."""
        link = self._model_link
        if link is None:
            return
        outbox = link.outbox
        kind = message["type"]
        if kind in _MODEL_CONTROL:
            outbox.put_first(encode_json(message), kind)
        elif not outbox.put(encode_json(message), kind, droppable=kind == "input_audio_buffer.append",
                            arrived=self._arrived):
            if not self._dropped_audio_frames:
                log.warning("model is not keeping up; dropping caller audio call_sid=%s", self.call.call_sid or "-")
            self._dropped_audio_frames += 1

    def _report(self, event: CallEvent) -> list[Output]:
        """Log, count and account one core event; what the core wants done about it (a budget reached)."""
        if isinstance(event, CallStarted):
            if self._recorder is not None:
                self._recorder.call_started(event.call_sid, event.stream_sid)
            self._drops.context = self._model_drops.context = f"call_sid={event.call_sid}"
            self._log_context.update(call_sid=event.call_sid, stream_sid=event.stream_sid)
            if self.services.shared is not None:
                self._in_background(self._take_leases(event.custom_parameters.get("To", "")))
        cost = self.ledger.event(event, _now_ms())
        if isinstance(event, Dropped):
            (self._drops if event.source == "twilio" else self._model_drops).drop(event.reason)
        elif isinstance(event, ModelReportedError):
            log.warning("model error call_sid=%s code=%s: %s", self.call.call_sid or "-", event.code, event.message)
        elif isinstance(event, ModelRolledOver):
            log.info("model session rolled over call_sid=%s after %.0f s (%s)", self.call.call_sid or "-",
                     event.session_age_ms / 1000, event.reason)
        elif not isinstance(event, AgentAudioStarted):
            log.debug("call event call_sid=%s %s", self.call.call_sid or "-", event)
        for observer in (self._observer, self.services.feed):
            if observer is None:
                continue
            try:
                observer(self.call, event)
            except Exception:
                log.exception("call observer failed")
        return self._cost_added(cost) if cost else []

    def _cost_added(self, cost: float) -> list[Output]:
        if self.services.budget is not None:
            self._in_background(self.services.budget.add(cost))
        limit = self.settings.call_budget_usd
        if not limit or self._budget_reached or self.ledger.cost_usd < limit:
            return []
        self._budget_reached = True
        metrics.BUDGET_STOPS.labels("call").inc()
        log.warning("call budget reached call_sid=%s: %.4f USD of CALL_BUDGET_USD %.4f; the agent wraps up",
                    self.call.call_sid or "-", self.ledger.cost_usd, limit)
        return self.call.budget_reached(_now_ms())

    # ---- shared state: concurrency leases and the live-call registry -----------------------------------------

    async def _take_leases(self, number: str) -> None:
        """Hold this call's slots (MAX_CALLS_GLOBAL across instances, MAX_CALLS_PER_NUMBER per called number) and
        register it (control from any instance). Limits fail closed: a full limit, or a shared state that cannot
        answer, ends the call with the spoken message. The registry fails open: the call goes on uncontrolled."""
        shared, settings, call_sid = self.services.shared, self.settings, self.call.call_sid
        limits = [("global", settings.max_calls_global)]
        if number:
            limits.append((f"number:{number[:32]}", settings.max_calls_per_number))
        for scope, limit in limits:
            if not limit:
                continue
            try:
                taken = await shared.acquire_lease(scope, call_sid, limit, LEASE_TTL_S)
            except StateUnavailable as error:
                log.error("concurrency limit unavailable (%s): ending the call", error)
                taken = False
            if not taken:
                metrics.REFUSED_CALLS.labels("global_limit" if scope == "global" else "number_limit").inc()
                log.warning("at %s: ending the call", "MAX_CALLS_GLOBAL" if scope == "global" else "MAX_CALLS_PER_NUMBER")
                self._end("at MAX_CALLS_GLOBAL" if scope == "global" else "at MAX_CALLS_PER_NUMBER")
                return
            self._leases.append(scope)
        try:
            await shared.register_call(call_sid, settings.instance_id, LEASE_TTL_S)
            self._registered = True
        except StateUnavailable as error:
            log.warning("the call could not be registered (%s): it cannot be controlled from other instances", error)

    async def _renew_leases(self) -> None:
        shared, call_sid = self.services.shared, self.call.call_sid
        try:
            for scope in self._leases:
                await shared.renew_lease(scope, call_sid, LEASE_TTL_S)
            if self._registered:
                await shared.register_call(call_sid, self.settings.instance_id, LEASE_TTL_S)
        except StateUnavailable as error:
            log.warning("leases not renewed (%s); retried in %g s", error, LEASE_RENEW_S)

    async def _release_leases(self) -> None:
        shared, call_sid = self.services.shared, self.call.call_sid
        try:
            for scope in self._leases:
                await shared.release_lease(scope, call_sid)
            if self._registered:
                await shared.unregister_call(call_sid, self.settings.instance_id)
        except StateUnavailable as error:
            log.warning("leases not released (%s): they expire within %g s", error, LEASE_TTL_S)
        self._leases, self._registered = [], False

    async def control(self, action: str, text: str = "") -> bool:
        """An action on this live call from the HTTP API (through any instance): hangup, transfer, say, instruct."""
        if self._done.is_set() or not self.call.stream_sid:
            return False
        if action == "hangup":
            outputs = self.call.hangup_requested()
        elif action == "transfer":
            outputs = self.call.transfer_requested()
        elif action == "say":
            outputs = self.call.operator_message(text)
        elif action == "instruct":
            outputs = self.call.new_instructions(text)
        else:
            return False
        log.info("call controlled through the API: %s", action)
        self._arrived = 0.0
        self._dispatch(outputs)
        return True

    async def _save_record(self, record: dict[str, Any]) -> None:
        """Keep the call's record (gateway.store), whatever happened to the call; a store failure is logged."""
        store = self.services.store
        save = getattr(store, "finish_call", None)
        if save is None or not record["call_sid"]:
            return
        try:
            await asyncio.wait_for(save(record), RECORD_SAVE_TIMEOUT_S)
        except Exception:
            log.exception("the call record could not be saved call_sid=%s", record["call_sid"])

    def _written_to_twilio(self, kind: str, arrived: float) -> None:
        if kind == "media":
            metrics.FRAME_DELAY_TO_TWILIO.observe(time.monotonic() - arrived)
        elif kind == "clear":
            metrics.BARGE_IN_REACTION.observe(time.monotonic() - arrived)

    # ---- teardown ---------------------------------------------------------------------------

    async def _close_model(self) -> None:
        """Every model session of the call closed with 1000 and its writer stopped: the current one, one switched
        to that the reader has not taken over yet, one being prepared."""
        links = {id(link): link for link in (self._model_link, self._handover, self._standby) if link is not None}
        await asyncio.gather(*(self._close_model_link(link) for link in links.values()), return_exceptions=True)

    async def _close_twilio(self) -> None:
        if self._twilio_open:
            self._twilio_open = False
            with contextlib.suppress(Exception):
                if self._send_asgi is None:
                    await self.websocket.close(code=self._close_code)
                else:
                    await self._send_asgi({"type": "websocket.close", "code": self._close_code, "reason": ""})
