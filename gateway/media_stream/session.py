"""One call's shell: Twilio's WebSocket on one side, the model's on the other.

Twilio's frames arrive by callback from the server's protocol (:mod:`gateway.server.direct_ws`; a task reads ASGI receive
for the rest) and the model's from its socket (:mod:`.model_socket`), in the event loop's turn that read them. Each is parsed at the edge, handed as a typed event to
:class:`gateway.call.Call`, and what comes back is carried out at once: messages go into each peer's outbox
(:mod:`gateway.media_stream.outbox`), which writes them in the same turn unless the socket must wait. The shell owns sockets,
timeouts and logging; it makes no decisions about the call. The model side is in :mod:`.model_link`, the
shared-state leases in :mod:`.leases` and the call's record in :mod:`.records`, mixins of :class:`MediaStreamSession`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Callable

from starlette.types import Receive
from starlette.types import Send as ASGISend
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.call import (
    AgentAudioStarted,
    BudgetReached,
    ConnectModel,
    Call,
    CallEvent,
    CallStarted,
    Dropped,
    EndCall,
    HangUp,
    LeaseRefused,
    ModelGaveUp,
    ModelReportedError,
    ModelRolledOver,
    Output,
    Peer,
    PrepareRollover,
    RolloverFailed,
    RunTool,
    Send,
    SwitchModel,
    Transfer,
    TwilioBacklogOverflowed,
    WakeAt,
)
from gateway.call.clock import now_ms as _now_ms
from gateway.config import Settings
from gateway.media_stream.direct import direct_receive
from gateway.observe.droplog import DropCounter
from gateway.observe import metrics
from gateway.observe.ledger import CallLedger
from gateway.observe.logs import bind_call, in_call_context
from gateway.media_stream.outbox import Outbox, Pacer
from gateway.recordings.frames import CallRecorder, recordings_quota
from gateway.twilio.security import StreamGrant
from gateway.tools.registry import ToolContext
from gateway.twilio.media import MediaStreamError, encode_message, parse_twilio_message
from gateway.twilio.twiml import dial_twiml

from .leases import LEASE_RENEW_S, CallLeases
from .records import CallRecordWrites
from .model_link import ModelLinks, _ModelLink
from .services import POLICY_VIOLATION, CallObserver, CallServices, call_config

log = logging.getLogger("gateway.media_stream")

# Twilio sends `start` right after connecting; a socket that does not is not a call (and gets no model session).
START_TIMEOUT_S = 5.0
# Agent audio and marks queued for a Twilio socket that is not being read: past this the call ends.
TWILIO_BACKLOG_BYTES = 8 * 1024 * 1024
_TWILIO_AUDIO = frozenset({"media", "mark"})
TICK_INTERVAL_S = 1.0  # how often the core's clock checks run (time limit, idle media)

# One encoder for every message: orjson, compact (gateway.twilio.media.encode_json): bytes for the model socket,
# text for Twilio's (an ASGI text frame is a str).


def _drop_counter(source: str) -> Callable[[str, int], None]:
    def counted(reason: str, count: int) -> None:
        metrics.DROPPED.labels(source, metrics.label("dropped", "reason", reason)).inc(count)
    return counted


class MediaStreamSession(ModelLinks, CallLeases, CallRecordWrites):
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
        self._receive: Receive = receive or websocket.receive
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
        # Set when the core's EndCall is carried out, and only then: the call's end is the core's (Call.ending).
        self._done = asyncio.Event()
        self._dropped_audio_frames = 0
        self._recorder = CallRecorder(
            settings.record_calls_dir, _now_ms(), settings.record_max_bytes, full_numbers=settings.log_full_numbers,
            quota=recordings_quota(settings.record_calls_dir, settings.record_total_max_bytes),
        ) if settings.record_calls_dir else None

    async def run(self) -> None:
        self._log_context = bind_call()  # every line of this call (its tasks inherit it) carries its SIDs
        twilio_task = asyncio.create_task(self._twilio_loop(), name="twilio-reader")
        self._in_background(self._twilio_out.run())
        self._in_background(self._clock_loop())
        try:
            try:
                await asyncio.wait_for(self._done.wait(), START_TIMEOUT_S)
            except TimeoutError:
                self._dispatch(self.call.start_timed_out(_now_ms()))
                if self._done.is_set():
                    log.warning("closing a media stream that sent no start within %.0f s", START_TIMEOUT_S)
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
            ending = self.call.ending
            end_reason = ending.reason if ending is not None else "-"
            self.record = record = self.ledger.finish(end_reason, _now_ms(),
                                                      refused=ending is not None and ending.refused)
            log.info(
                "call ended call_sid=%s reason=%s ended_by=%s duration_s=%.1f turns=%d cost_usd=%.4f "
                "dropped_audio_frames=%d dropped_frames_from_twilio=%d",
                self.call.call_sid or "-", end_reason, record["ended_by"], record["duration_s"],
                len(record["turns"]), record["cost_usd"], self._dropped_audio_frames, self._drops.total,
            )
            await self._save_record(record)
            await self._release_leases()
            # Hook (call recordings): the call's stereo WAV from its frame recording, when it may be recorded
            # (RECORD_AUDIO, or POST /calls' "record"), named in its record (gateway.recordings.wav).
            if self._recorder is not None:
                from gateway.recordings.wav import save_call_recording

                await save_call_recording(self.services.store, self.settings, self._recorder.path, record["call_sid"])

    # ---- readers ----------------------------------------------------------------------------

    async def _twilio_loop(self) -> None:
        """Twilio's messages: by callback where the server offers it (gateway.server.direct_ws: no task switch per frame),
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
        self._dispatch(self.call.twilio_closed(_now_ms()))

    def _twilio_frame(self, text: str | bytes) -> None:
        """One text message from Twilio (UTF-8 bytes by callback, str through ASGI): bounded, parsed, handled."""
        if self._done.is_set():
            return
        self._arrived = time.monotonic()
        now = self._arrived * 1000.0
        max_bytes = self.settings.max_frame_bytes
        if len(text) > max_bytes:
            self._drops.drop(f"frame over MAX_FRAME_BYTES ({max_bytes})")
            return
        try:
            event = parse_twilio_message(text)
        except MediaStreamError as error:
            self._drops.drop(error.reason, detail=error.detail)  # a fixed reason: the peer's text is no label
            return
        except Exception:  # a parser bug costs one frame, never the call
            log.exception("dropped frame from twilio call_sid=%s: the parser failed", self.call.call_sid or "-")
            return
        if self._recorder is not None:  # what the gateway accepted, never the raw frame (gateway.recordings.frames)
            self._recorder.record_event(event, now)
        try:
            self._dispatch(self.call.twilio_event(event, now))
        except Exception:  # never into the server's protocol (a callback): the frame is lost, the call goes on
            log.exception("a frame from twilio could not be handled call_sid=%s", self.call.call_sid or "-")

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
            if (ticks % int(LEASE_RENEW_S / TICK_INTERVAL_S) == 0 and self.services.shared is not None
                    and self.call.call_sid):
                self._in_background(self._renew_leases())

    # ---- outputs ----------------------------------------------------------------------------

    def _dispatch(self, outputs: list[Output]) -> None:
        """Carry out what the core decided, in order. An output this shell does not know is a bug (a core that
        grew an action the shell ignores would decide it in vain): it raises, never passes as an event."""
        for output in outputs:
            if isinstance(output, Send):
                if output.to is Peer.TWILIO:
                    self._send_twilio(output.message)
                elif output.to is Peer.MODEL:
                    self._send_model(output.message)
                else:
                    self._send_next_model(output.message)
            elif isinstance(output, EndCall):
                self._done.set()  # the close code and the record's reason are read from Call.ending
            elif isinstance(output, PrepareRollover):
                self._in_background(self._prepare_rollover(output))
            elif isinstance(output, SwitchModel):
                self._switch_model()
            elif isinstance(output, (ConnectModel, WakeAt)):
                self._model_output(output)  # the core's model-session schedule (model_link)
            elif isinstance(output, RunTool):
                self._in_background(self._run_tool(output))
            elif isinstance(output, (HangUp, Transfer)):
                self._in_background(self._call_control(output))
            elif isinstance(output, CallEvent):
                self._dispatch(self._report(output))
            else:
                raise TypeError(f"the call core returned an output the shell does not know: {output!r}")

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
                                  time.monotonic() - started, request.arguments, output)
        self._arrived = 0.0
        self._dispatch(self.call.tool_finished(request.call_id, output, _now_ms()))

    async def _call_control(self, control: HangUp | Transfer) -> None:
        twilio, call_sid = self.services.twilio, self.call.call_sid
        if twilio is None:
            # Without REST credentials, closing the stream is all we can do (it ends <Connect>).
            log.warning("%s without Twilio REST credentials: closing the stream call_sid=%s", control.reason, call_sid)
            self._dispatch(self.call.hangup_finished(control.reason, _now_ms()))
            return
        try:
            if isinstance(control, HangUp):
                await twilio.hangup(call_sid)
                self._dispatch(self.call.hangup_finished(control.reason, _now_ms()))
            else:
                # Twilio leaves <Connect> for the new TwiML and stops this stream itself.
                await twilio.update_twiml(call_sid, dial_twiml(self.settings.transfer_number))
        except Exception:
            if isinstance(control, HangUp):
                log.exception("hang-up failed at Twilio call_sid=%s; closing the stream", call_sid)
                self._dispatch(self.call.hangup_finished(control.reason, _now_ms()))
            else:
                log.exception("transfer failed at Twilio call_sid=%s; the call goes on", call_sid)
                self._dispatch(self.call.transfer_failed(_now_ms()))

    def _send_twilio(self, message: dict[str, Any]) -> None:
        """Queue a message for Twilio (never waits: gateway.media_stream.outbox). ``clear`` goes first, and takes the agent
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
        if self._twilio_out.overflowed:  # the core ends the call (TwilioBacklogOverflowed, then EndCall)
            self._dispatch(self.call.twilio_backlog_overflowed(self._twilio_out.queued_bytes, _now_ms()))

    async def _write_twilio(self, text: str) -> None:
        try:
            if self._send_asgi is None:
                await self.websocket.send_text(text)
            else:
                await self._send_asgi({"type": "websocket.send", "text": text})
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._twilio_open = False
            self._twilio_out.close()
            self._dispatch(self.call.twilio_closed(_now_ms()))

    def _report(self, event: CallEvent) -> list[Output]:
        """Log, count and account one core event; what the core wants done about it (a budget reached)."""
        if isinstance(event, CallStarted):
            if self._recorder is not None:
                self._recorder.call_started(event.call_sid, event.stream_sid)
            self._drops.context = self._model_drops.context = f"call_sid={event.call_sid}"
            self._log_context.update(call_sid=event.call_sid, stream_sid=event.stream_sid)
            self._in_background(self._call_started())
        cost = self.ledger.event(event, _now_ms())
        if isinstance(event, Dropped):
            (self._drops if event.source == "twilio" else self._model_drops).drop(event.reason)
        elif isinstance(event, ModelReportedError):
            log.warning("model error call_sid=%s code=%s: %s", self.call.call_sid or "-", event.code, event.message)
        elif isinstance(event, ModelRolledOver):
            log.info("model session rolled over call_sid=%s after %.0f s (%s)", self.call.call_sid or "-",
                     event.session_age_ms / 1000, event.reason)
        elif isinstance(event, (RolloverFailed, ModelGaveUp, BudgetReached, LeaseRefused, TwilioBacklogOverflowed)):
            self._report_decision(event)
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

    def _report_decision(self, event: RolloverFailed | ModelGaveUp | BudgetReached | LeaseRefused
                         | TwilioBacklogOverflowed) -> None:
        """Log and count what the core decided about the call's course (the decision itself is the core's)."""
        call_sid = self.call.call_sid or "-"
        if isinstance(event, RolloverFailed):
            log.warning("the next model session could not be prepared call_sid=%s: %s; the current one goes on",
                        call_sid, event.reason)
        elif isinstance(event, ModelGaveUp):
            log.error("model unavailable call_sid=%s (%s); ending the call", call_sid, event.reason)
        elif isinstance(event, BudgetReached):
            metrics.BUDGET_STOPS.labels("call").inc()
            log.warning("call budget reached call_sid=%s: %.4f USD of CALL_BUDGET_USD %.4f; the agent wraps up",
                        call_sid, event.cost_usd, event.limit_usd)
        elif isinstance(event, LeaseRefused):
            metrics.REFUSED_CALLS.labels(event.cause).inc()
            if event.cause == "state_unavailable":
                log.error("concurrency limit unreadable (the shared state does not answer): ending the call")
            else:
                log.warning("at %s: ending the call",
                            "MAX_CALLS_GLOBAL" if event.cause == "global_limit" else "MAX_CALLS_PER_NUMBER")
        else:
            log.error("Twilio is not reading its socket (%d bytes queued); ending the call call_sid=%s",
                      event.queued_bytes, call_sid)

    def _cost_added(self, cost: float) -> list[Output]:
        """The ledger priced more of the call: today's shared budget counts it; the core decides the call's."""
        if self.services.budget is not None:
            self._in_background(self.services.budget.add(cost))
        return self.call.cost_reported(self.ledger.cost_usd, _now_ms())

    async def control(self, action: str, text: str = "") -> bool:
        """An action on this live call from the HTTP API (through any instance): hangup, transfer, say, instruct."""
        if self._done.is_set() or not self.call.stream_sid:
            return False
        now = _now_ms()
        if action == "hangup":
            outputs = self.call.hangup_requested(now)
        elif action == "transfer":
            outputs = self.call.transfer_requested(now)
        elif action == "say":
            outputs = self.call.operator_message(text, now)
        elif action == "instruct":
            outputs = self.call.new_instructions(text, now)
        else:
            return False
        log.info("call controlled through the API: %s", action)
        self._arrived = 0.0
        self._dispatch(outputs)
        return True

    def _written_to_twilio(self, kind: str, arrived: float) -> None:
        if kind == "media":
            metrics.FRAME_DELAY_TO_TWILIO.observe(time.monotonic() - arrived)
        elif kind == "clear":
            metrics.BARGE_IN_REACTION.observe(time.monotonic() - arrived)

    # ---- teardown ---------------------------------------------------------------------------

    async def _close_twilio(self) -> None:
        if self._twilio_open:
            self._twilio_open = False
            with contextlib.suppress(Exception):
                if self._send_asgi is None:
                    await self.websocket.close(code=self._close_code())
                else:
                    await self._send_asgi({"type": "websocket.close", "code": self._close_code(), "reason": ""})

    def _close_code(self) -> int:
        """1008 (policy violation) for a stream refused or ended for what it did (the core's EndCall says), else
        1000."""
        ending = self.call.ending
        return POLICY_VIOLATION if ending is not None and ending.refused else 1000
