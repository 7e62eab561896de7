"""The call core's state machine: :class:`Call` and its :class:`CallConfig` (see the package docstring)."""

from __future__ import annotations

import json
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, replace
from typing import Any

from gateway.audio import MULAW_BYTES_PER_MS, comfort_noise, converters_for, model_bytes_per_ms, mulaw_silence
from gateway.call.conversation import ConversationLog
from gateway.call.outputs import (
    END_CALL, AgentAudioStarted, BargeIn, ConnectModel, CallStarted, CallTimeLimitReached, Dropped, DtmfReceived, EndCall, HangUp, ModelReportedError,
    ModelRolledOver, ModelSessionLost, Output, Peer, PrepareRollover, ResponseFinished, RunTool, Send, SwitchModel,
    ToolCalled, TranscriptReceived, Transfer,
)
from gateway.playback import PlaybackTracker, parse_mark_name
from gateway.realtime import events as rt
from gateway.twilio import media as tw

log = logging.getLogger("gateway.call")

# A media timestamp further ahead than this is treated as lost packets and filled with silence.
GAP_TOLERANCE_MS = 10
# A bound on one gap fill: a hostile timestamp must not make us allocate minutes of silence. A gap is also never
# filled with more silence than the wall-clock time that passed since the previous frame.
MAX_GAP_FILL_MS = 2000
# Tool calls of one call waiting for a free slot (MAX_TOOLS_PER_CALL run at once); past this they fail at once.
MAX_QUEUED_TOOLS = 8
# Key presses reach the model as conversation items (billed input): at most a fast human's rate, plus a burst.
DTMF_PER_S = 10.0
DTMF_BURST = 20.0
# Caller audio kept while the model socket is still connecting (or reconnecting).
MAX_PENDING_AUDIO_MS = 5000
# The conversation carried into a replacement model session, as text: the latest items, each bounded.
MAX_CARRIED_ITEMS = 60
MAX_CARRIED_CHARS = 2000
MAX_HELD_ITEMS = 32
MAX_TRACKED_ITEMS = 64  # agent items whose audio accounting is kept
MAX_TRACKED_FRAMES = 1500  # caller frames whose arrival times are kept (30 s of 20 ms frames)
MAX_GREETING_ATTEMPTS = 3
# While a replacement model session connects, the caller hears soft comfort noise once it has taken this long
# (a dead line sounds like a dropped call), a second at a time, and none of it once the model is back.
COMFORT_NOISE_AFTER_MS = 1000
_COMFORT_NOISE = comfort_noise(1000)
# A rollover abandoned (the caller spoke while the next session was being prepared) is tried again this much later.
ROLLOVER_RETRY_MS = 2000


# Model errors that are races on the wire, not faults: a cancel that crossed the response's end, or a
# response.create that crossed one the server's turn detection started.
_BENIGN_MODEL_ERRORS = frozenset({"response_cancel_not_active", "conversation_already_has_active_response"})
_GOODBYE_INSTRUCTIONS = "Say a brief, friendly goodbye to the caller now."
_TRANSFER_INSTRUCTIONS = "Tell the caller, in one short sentence, that you are transferring them to a colleague now."
_RESUME_INSTRUCTIONS = ("Your previous answer was cut off by a technical problem. Without apologising at length, "
                        "finish what you were saying to the caller.")
_BUDGET_INSTRUCTIONS = ("This call has used all the time it was allowed. Tell the caller, in one or two short "
                        "sentences, that you have to end the call now, and say goodbye.")
_TIME_LIMIT_INSTRUCTIONS = ("This call has reached its time limit. Tell the caller, in one or two short sentences, "
                            "that you have to end the call now, and say goodbye.")


@dataclass(frozen=True, slots=True)
class CallConfig:
    """What the core needs to know about the session; built from :class:`gateway.config.Settings`."""

    session_update: dict[str, Any]
    audio_format: str = "pcm16"
    agent_speaks_first: bool = False
    greeting_instructions: str = ""
    interrupt_response: bool = True  # the server cancels its own response on speech_started
    mark_interval_ms: int = 100
    call_control_tools: frozenset[str] = frozenset()  # built-ins the core carries out: end_call, transfer_call
    account_sid: str = ""  # when set, a start from any other Twilio account is refused
    # Bounds (README "Security"): 0 disables one (the core's tests drive calls without them).
    max_call_duration_ms: int = 0  # the agent is asked to say goodbye, and the call ends once it is heard
    wrap_up_grace_ms: int = 20_000  # ... or this long after the limit, whatever the agent does
    media_idle_timeout_ms: int = 0  # no frame from Twilio for this long ends the call
    caller_audio_burst_ms: int = 0  # caller audio may run this far ahead of the wall clock; beyond, it is dropped
    max_tools_per_call: int = 1  # user tools running at once; more wait their turn
    # Make-before-break: a model session older than session_limit_ms - rollover_margin_ms is replaced at the next
    # quiet point by one prepared beside it (0: the limit is unknown; a session that expires is replaced after).
    session_limit_ms: int = 0
    rollover_margin_ms: int = 0
    # server_vad's silence_duration_ms: the model's speech_stopped names the end of that silence, not of the
    # speech (turn latency counts from the speech's end). 0 when unknown (semantic_vad).
    vad_silence_ms: int = 0


@dataclass(slots=True)
class _AgentItem:
    """One assistant item's audio, as the model produced it."""

    response_id: str
    received_bytes: int = 0  # model-format audio bytes received (item positions count from these)


class Call:
    """One call. Feed it events with :meth:`twilio_event` / :meth:`model_event`; send what it returns."""

    def __init__(self, config: CallConfig, *, expected_call_sid: str = "") -> None:
        self.config = config
        # The CallSid the stream's credential was issued for: a start naming another call is refused.
        self.expected_call_sid = expected_call_sid
        self.stream_sid = ""
        self.call_sid = ""
        self.custom_parameters: dict[str, str] = {}
        self.ended = False
        self._inbound, self._outbound = converters_for(config.audio_format)
        self._model_bytes_per_ms = model_bytes_per_ms(config.audio_format)
        self._model_ready = False
        self._pending_audio: deque[bytes] = deque()
        self._pending_arrivals: deque[tuple[int, float]] = deque()  # (ms, arrival) of each held frame
        self._pending_audio_bytes = 0  # model-format bytes held
        # The model session's input audio clock (ms appended in this session) against when each frame arrived:
        # the model's speech_stopped names a position in it, turned here into when the caller really stopped.
        self._input_ms = 0
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=MAX_TRACKED_FRAMES)
        self._next_timestamp_ms: int | None = None
        # Real-time budget of caller audio: ms accepted since the first media frame, and when that frame came.
        self._first_media_ms: float | None = None
        self._last_media_ms: float | None = None
        self._caller_audio_ms = 0
        self._started_ms: float | None = None
        self._wrap_up_started = False
        self._wrap_up_reason = ""
        self._queued_tools: deque[RunTool] = deque()
        self._orphaned_tools: dict[str, int] = {}  # call_id -> the lost session that asked for it
        self._caller_speaking = False  # between the model's speech_started and speech_stopped
        # For turn measurements: the caller's latest utterance, when it ended, and when the response began.
        self._caller_item = ""
        self._caller_stopped_ms: float | None = None
        self._response_created_ms: tuple[str, float] | None = None
        self._model_down_since: float | None = None  # when the model session was lost (None: up, or never lost)
        self._session_started_ms: float | None = None  # when the current model session was connected
        self._rollover_pending = False  # a next session is being prepared by the shell
        self._rollover_not_before_ms = 0.0
        self._comfort_noise_sent = False
        self._dtmf_tokens = DTMF_BURST
        self._dtmf_at: float | None = None
        # The greeting (agent_speaks_first) is asked for in every session until it was all sent to Twilio, or the
        # caller spoke: a session that dies before it plays, or a refused request, does not lose it.
        self._greeting_done = False
        self._greeting_session = 0  # the session it was last asked of
        self._greeting_response: str | None = None
        self._greeting_attempts = 0
        self._active_response: str | None = None
        self._interrupted_responses: set[str] = set()
        # Keyed by (session, item_id): a replacement session may number its items as the old one did.
        self._items: OrderedDict[tuple[int, str], _AgentItem] = OrderedDict()
        self._playback = PlaybackTracker()
        self._chunk_bytes = config.mark_interval_ms * self._model_bytes_per_ms
        # Turn-taking around tools: a response is requested once every tool output is in and none is active.
        self._running_tools: set[str] = set()
        self._want_response = False
        self._response_instructions = ""
        self._response_requested = False
        self._responses_with_audio: set[str] = set()
        self._after_playback: HangUp | Transfer | None = None  # call control waiting for the audio to be heard
        self._control_done = False
        # What was said, as text, to carry the conversation into a new model session if this one is lost.
        self._session = 0
        self._held_items: list[dict[str, Any]] = []  # conversation items that arrived while (re)connecting
        self._conversation = ConversationLog(MAX_CARRIED_ITEMS, MAX_CARRIED_CHARS)

    def apply_call_settings(self, *, instructions: str = "", voice: str = "", greeting: str = "") -> None:
        """Per-call settings (an outbound call's), before the model connects: they go into session.update."""
        session = dict(self.config.session_update.get("session", {}))
        if instructions:
            session["instructions"] = instructions
        if voice:
            audio = dict(session.get("audio", {}))
            audio["output"] = {**audio.get("output", {}), "voice": voice}
            session["audio"] = audio
        changes: dict[str, Any] = {"session_update": {**self.config.session_update, "session": session}}
        if greeting:
            changes["agent_speaks_first"] = True
            changes["greeting_instructions"] = f"Start the call by saying, in your own voice: {greeting}"
        self.config = replace(self.config, **changes)

    # ---- Twilio side ------------------------------------------------------------------------

    def twilio_event(self, event: tw.TwilioEvent, now_ms: float) -> list[Output]:
        if self.ended:
            return []
        if isinstance(event, tw.Media):
            if not self.stream_sid:
                return [Dropped("twilio", "media before start")]
            if event.stream_sid != self.stream_sid:
                return [Dropped("twilio", "media for a foreign streamSid")]
            return self._caller_audio(event, now_ms)
        if isinstance(event, tw.MarkEcho):
            if event.stream_sid != self.stream_sid:
                return [Dropped("twilio", "mark for a foreign streamSid")]
            return self._mark_echoed(event.name, now_ms)
        if isinstance(event, tw.Start):
            if self.stream_sid:
                return [Dropped("twilio", "second start on one stream")]
            if self.config.account_sid and event.account_sid != self.config.account_sid:
                # Not a call of this Twilio account: it could name another call's SID to hang it up.
                return [Dropped("twilio", "start from another Twilio account"),
                        *self._end("foreign account", refused=True)]
            if self.expected_call_sid and event.call_sid != self.expected_call_sid:
                # A credential opens a stream for one call: naming another would let it hang up or hear a victim.
                return [Dropped("twilio", "start for a call other than the stream credential's"),
                        *self._end("stream credential is for another call", refused=True)]
            self._started_ms = now_ms
            self.stream_sid = event.stream_sid
            self.call_sid = event.call_sid
            self.custom_parameters = dict(event.custom_parameters)
            return [CallStarted(event.call_sid, event.stream_sid, self.custom_parameters), ConnectModel()]
        if isinstance(event, tw.Dtmf):
            if event.stream_sid != self.stream_sid:
                return [Dropped("twilio", "dtmf for a foreign streamSid")]
            if not self._take_dtmf_token(now_ms):
                return [Dropped("twilio", "dtmf faster than a keypad")]
            self._want_response = True
            pressed = rt.user_text(f"The caller pressed {event.digit} on the phone keypad.")
            if not self._model_ready:  # (re)connecting: the key reaches the model with the held audio
                if len(self._held_items) < MAX_HELD_ITEMS:
                    self._held_items.append(pressed)
                return [DtmfReceived(event.digit)]
            out: list[Output] = [DtmfReceived(event.digit), Send(Peer.MODEL, pressed)]
            return out + self._request_response_if_ready()
        if isinstance(event, tw.Stop):
            if self.stream_sid and event.stream_sid != self.stream_sid:
                return [Dropped("twilio", "stop for a foreign streamSid")]
            return self._end("caller hung up")
        return []  # Connected: nothing to do

    def _take_dtmf_token(self, now_ms: float) -> bool:
        if self._dtmf_at is not None:
            self._dtmf_tokens = min(DTMF_BURST, self._dtmf_tokens + (now_ms - self._dtmf_at) / 1000 * DTMF_PER_S)
        self._dtmf_at = now_ms
        if self._dtmf_tokens < 1:
            return False
        self._dtmf_tokens -= 1
        return True

    def twilio_closed(self) -> list[Output]:
        return self._end("twilio socket closed")

    def _caller_audio(self, media: tw.Media, now_ms: float) -> list[Output]:
        audio = media.payload
        expected = self._next_timestamp_ms
        last_ms = self._last_media_ms
        self._last_media_ms = now_ms
        if self._first_media_ms is None:
            self._first_media_ms = now_ms
        # Always follow the stream's own clock: a bogus jump forward is resynchronised by the next real frame.
        self._next_timestamp_ms = media.timestamp_ms + len(media.payload) // MULAW_BYTES_PER_MS
        gap_ms = 0
        if expected is not None and last_ms is not None and media.timestamp_ms > expected + GAP_TOLERANCE_MS:
            # Lost packets: the gap is real time that passed; keep the model's audio clock on the call's. Never
            # more than really passed: a forged jump must not turn one frame into seconds of audio.
            gap_ms = int(min(media.timestamp_ms - expected, MAX_GAP_FILL_MS, max(0.0, now_ms - last_ms)))
        frame_ms = len(media.payload) // MULAW_BYTES_PER_MS + gap_ms
        if self.config.caller_audio_burst_ms:
            # At most real time plus a small burst (jitter, a stall that catches up): a stream pushing audio faster
            # than a phone can talk would make the model bill and process audio nobody spoke.
            allowed_ms = now_ms - self._first_media_ms + self.config.caller_audio_burst_ms
            if self._caller_audio_ms + frame_ms > allowed_ms:
                return [Dropped("twilio", "caller audio faster than real time")]
        self._caller_audio_ms += frame_ms
        if gap_ms:
            audio = mulaw_silence(gap_ms) + audio
        converted = self._inbound.convert(audio)
        if self._model_ready:
            self._input_ms += frame_ms
            self._arrivals.append((self._input_ms, now_ms))
            return [Send(Peer.MODEL, rt.input_audio_append(converted))]
        self._pending_audio.append(converted)
        self._pending_arrivals.append((frame_ms, now_ms))
        self._pending_audio_bytes += len(converted)
        while self._pending_audio_bytes > MAX_PENDING_AUDIO_MS * self._model_bytes_per_ms and self._pending_audio:
            dropped = self._pending_audio.popleft()
            self._pending_arrivals.popleft()
            self._pending_audio_bytes -= len(dropped)
        return []

    # ---- model side -------------------------------------------------------------------------

    def model_connected(self, now_ms: float | None = None) -> list[Output]:
        """The model socket is open: configure the session, then flush caller audio held meanwhile.

        In a replacement session the conversation so far is re-created as text items first (a new session
        starts empty; audio cannot be carried over), so the agent goes on where it was."""
        self._model_ready = True
        self._session += 1
        self._session_started_ms = now_ms
        self._rollover_pending = False
        self._model_down_since = None
        out: list[Output] = [Send(Peer.MODEL, message) for message in self._session_setup(carry=self._session > 1)]
        if self._comfort_noise_sent:
            # What is left of the comfort noise at Twilio goes, so the agent's next words are not queued behind it.
            self._comfort_noise_sent = False
            if not self._playback.awaiting_echoes:
                out.append(Send(Peer.TWILIO, tw.clear_message(self.stream_sid)))
        self._restart_input_clock()
        for frame_ms, arrived in self._pending_arrivals:
            self._input_ms += frame_ms
            self._arrivals.append((self._input_ms, arrived))
        self._pending_arrivals.clear()
        if self._pending_audio:
            # One message: held audio must reach the model before (and not interleaved with) live frames.
            out.append(Send(Peer.MODEL, rt.input_audio_append(b"".join(self._pending_audio))))
        self._pending_audio.clear()
        self._pending_audio_bytes = 0
        out.extend(Send(Peer.MODEL, item) for item in self._held_items)
        self._held_items.clear()
        return out + self._request_response_if_ready()

    def _restart_input_clock(self) -> None:
        self._input_ms = 0
        self._arrivals.clear()

    def _caller_stopped_at(self, audio_end_ms: int, now_ms: float) -> float:
        """When the frame holding the session's input audio position ``audio_end_ms`` arrived (``now_ms`` when
        it is no longer known)."""
        for end_ms, arrived in self._arrivals:
            if end_ms >= audio_end_ms:
                return min(arrived, now_ms)
        return now_ms

    def _session_setup(self, *, carry: bool) -> list[dict[str, Any]]:
        """What configures a model session: the session.update, then (for a replacement) the conversation so far,
        as text, in conversation order, agent answers cut to what the caller heard, tool calls and results."""
        messages = [self.config.session_update]
        if carry:
            messages.extend(rt.text_item(role, text) for role, text in self._conversation.items())
        return messages

    # ---- make-before-break rollover -----------------------------------------------------------

    def _quiet(self) -> bool:
        """Nobody is talking and nothing is in flight: a session can be swapped for another unheard."""
        return (self._model_ready and not self.ended and self._active_response is None and not self._response_requested
                and not self._want_response and not self._caller_speaking and not self._playback.awaiting_echoes
                and not self._running_tools and not self._orphaned_tools and self._after_playback is None
                and (self._greeting_done or not self.config.agent_speaks_first))

    def _rollover_due(self, now_ms: float) -> list[Output]:
        config = self.config
        started = self._session_started_ms
        if not config.session_limit_ms or started is None or self._rollover_pending or now_ms < self._rollover_not_before_ms:
            return []
        margin = min(config.rollover_margin_ms, config.session_limit_ms // 2)
        if now_ms - started < config.session_limit_ms - margin or not self._quiet():
            return []
        self._rollover_pending = True
        return [PrepareRollover(f"session {(now_ms - started) / 1000:.0f} s old, limit {config.session_limit_ms / 1000:g} s")]

    def rollover_setup(self) -> list[dict[str, Any]]:
        """The messages that configure the session being prepared (sent to it, not to the current one)."""
        return self._session_setup(carry=True)

    def rollover_ready(self, now_ms: float) -> list[Output]:
        """The prepared session answered ``session.updated``: switch to it now if the call is still quiet; if not
        (the caller began to speak), the shell drops it and the rollover is tried again at a later quiet point
        (the conversation it was given would be stale)."""
        if not self._rollover_pending:
            return []
        self._rollover_pending = False
        if not self._quiet():
            self._rollover_not_before_ms = now_ms + ROLLOVER_RETRY_MS
            return []
        age_ms = int(now_ms - self._session_started_ms) if self._session_started_ms is not None else 0
        self._session += 1
        self._session_started_ms = now_ms
        self._restart_input_clock()
        self._interrupted_responses.clear()
        reason = "session limit ahead"
        return [SwitchModel(reason), ModelRolledOver(reason, age_ms)]

    def rollover_failed(self, now_ms: float) -> None:
        """The next session could not be prepared: the current one goes on; try again later."""
        self._rollover_pending = False
        self._rollover_not_before_ms = now_ms + ROLLOVER_RETRY_MS

    def model_lost(self, reason: str, now_ms: float | None = None) -> list[Output]:
        """The model session is gone but the call goes on: the shell is opening a new one.

        Caller audio is held (bounded) until then; what the old session was doing is dropped: its response,
        its pending tool calls (their ids mean nothing to the new session) and any request for a response."""
        if self.ended:
            return []
        lost = self._active_response
        if lost is not None and lost in self._responses_with_audio and lost not in self._interrupted_responses \
                and lost != self._greeting_response and self._after_playback is None:
            # An answer cut by the loss: the new session goes on with it (asked once it is configured).
            self._want_response, self._response_instructions = True, _RESUME_INSTRUCTIONS
        self._model_ready = False
        self._rollover_pending = False  # a session being prepared is dropped by the shell with the lost one
        self._active_response = None
        self._response_requested = False
        # Tools still running belong to the lost session: their results come back as text to the new one.
        for call_id in self._running_tools:
            if len(self._orphaned_tools) < MAX_QUEUED_TOOLS:
                self._orphaned_tools[call_id] = self._session
        self._running_tools.clear()
        self._queued_tools.clear()
        self._interrupted_responses.clear()
        self._caller_speaking = False  # the new session reports speech afresh
        self._model_down_since = now_ms
        if self._greeting_response is not None or (self._greeting_session and not self._greeting_done):
            # Not all sent: the next session is asked again, once it is configured (not before).
            self._greeting_response = None
            self._want_response, self._response_instructions = False, ""
        # A goodbye (or transfer announcement) heard in full before the loss: act on it now.
        return [ModelSessionLost(reason), *self._control_if_heard()]

    def model_closed(self, reason: str) -> list[Output]:
        self._model_ready = False
        return self._end(f"model socket closed: {reason}")

    def model_event(self, event: rt.ModelEvent, now_ms: float) -> list[Output]:
        if self.ended:
            return []
        if isinstance(event, rt.AudioDelta):
            return self._agent_audio(event, now_ms)
        if isinstance(event, rt.SpeechStarted):
            self._caller_speaking = True
            self._caller_item, self._caller_stopped_ms = event.item_id, None
            self._conversation.begin((self._session, event.item_id), "user")
            return self._caller_started_speaking(now_ms)
        if isinstance(event, rt.SpeechStopped):
            # The caller finished: a response we held back (a tool's result, a key press) may be asked for now.
            self._caller_speaking = False
            self._caller_stopped_ms = self._caller_stopped_at(event.audio_end_ms - self.config.vad_silence_ms, now_ms)
            return self._request_response_if_ready()
        if isinstance(event, rt.ResponseCreated):
            if self._response_requested and self._greeting_session == self._session and not self._greeting_done \
                    and self._greeting_response is None:
                self._greeting_response = event.response_id
            self._active_response = event.response_id
            self._response_requested = False
            self._response_created_ms = (event.response_id, now_ms)
            return []
        if isinstance(event, rt.ResponseDone):
            if self._active_response == event.response_id:
                self._active_response = None
            self._interrupted_responses.discard(event.response_id)
            had_audio = event.response_id in self._responses_with_audio
            self._responses_with_audio.discard(event.response_id)
            out: list[Output] = [ResponseFinished(event.response_id, event.status, event.usage)]
            if event.response_id == self._greeting_response and not self._greeting_done:
                self._greeting_response = None
                if event.status == "completed" and had_audio:
                    self._greeting_done = True  # all of it is at Twilio: it plays, whatever the model does next
                else:
                    out += self._ask_for_greeting()  # failed (a rate limit, say): ask again, a bounded number of times
            return out + self._request_response_if_ready() + self._control_if_heard()
        if isinstance(event, rt.FunctionCallRequested):
            return self._function_call(event)
        if isinstance(event, rt.Transcript):
            if event.text:
                self._conversation.text((self._session, event.item_id), event.role, event.text)
            return [TranscriptReceived(event.role, event.item_id, event.text)]
        if isinstance(event, rt.SessionUpdated):
            if self._greeting_session != self._session:
                return self._ask_for_greeting()
            return []
        if isinstance(event, rt.ModelError):
            # Whatever went wrong, a response.create of ours may have been refused: do not wait for it forever.
            self._response_requested = False
            if event.code in _BENIGN_MODEL_ERRORS:
                return self._control_if_heard()
            return [ModelReportedError(event.code, event.message), *self._control_if_heard()]
        return []

    def _agent_audio(self, delta: rt.AudioDelta, now_ms: float) -> list[Output]:
        key = (self._session, delta.item_id)
        item = self._items.get(key)
        if item is None:
            item = self._items[key] = _AgentItem(delta.response_id)
            self._forget_old_items()
            self._conversation.begin(key, "assistant")
        first = delta.response_id not in self._responses_with_audio
        self._responses_with_audio.add(delta.response_id)
        if delta.response_id in self._interrupted_responses or not self.stream_sid:
            item.received_bytes += len(delta.audio)  # the model's item holds it, though nobody hears it
            return []  # a late delta of an interrupted response, or no stream to play it on
        out: list[Output] = [self._turn_began(delta, now_ms)] if first else []
        audio = delta.audio
        per_ms = self._model_bytes_per_ms
        for offset in range(0, len(audio), self._chunk_bytes):
            chunk = audio[offset : offset + self._chunk_bytes]
            start_ms = item.received_bytes // per_ms
            item.received_bytes += len(chunk)
            mulaw = self._outbound.convert(chunk)
            if not mulaw:
                continue
            name = self._playback.chunk_sent(key, start_ms, item.received_bytes // per_ms, now_ms)
            out.append(Send(Peer.TWILIO, tw.media_message(self.stream_sid, mulaw)))
            out.append(Send(Peer.TWILIO, tw.mark_message(self.stream_sid, name)))
        return out

    def _turn_began(self, delta: rt.AudioDelta, now_ms: float) -> AgentAudioStarted:
        stopped, created = self._caller_stopped_ms, self._response_created_ms
        self._caller_stopped_ms = None  # one latency per caller turn
        caller_item = self._caller_item if stopped is not None else ""
        ttfa = now_ms - created[1] if created is not None and created[0] == delta.response_id else None
        return AgentAudioStarted(delta.response_id, delta.item_id, caller_item,
                                 now_ms - stopped if stopped is not None else None, ttfa)

    def _mark_echoed(self, name: str, now_ms: float) -> list[Output]:
        parsed = parse_mark_name(name)
        if parsed is None:
            return [Dropped("twilio", "mark with a name we never sent")]
        if not self._playback.mark_echoed(parsed, now_ms):
            return [Dropped("twilio", "echo of a mark that is not pending")]
        return self._control_if_heard() if self._after_playback is not None else []

    # ---- tools and call control -------------------------------------------------------------

    def _function_call(self, event: rt.FunctionCallRequested) -> list[Output]:
        out: list[Output] = [ToolCalled(event.call_id, event.name, event.arguments)]
        if event.name in self.config.call_control_tools:
            already_pending = self._after_playback is not None
            if event.name == END_CALL:
                self._after_playback, say = HangUp("the agent ended the call"), _GOODBYE_INSTRUCTIONS
            else:
                self._after_playback, say = Transfer("the agent transferred the call"), _TRANSFER_INSTRUCTIONS
            note = "Done: the call will be handed over once the caller has heard you."
            out.append(Send(Peer.MODEL, rt.function_call_output(event.call_id, json.dumps({"ok": True, "note": note}))))
            if event.response_id not in self._responses_with_audio and not already_pending:
                # The agent acted before saying anything: let it say goodbye (or announce the transfer) first.
                self._want_response, self._response_instructions = True, say
            return out + self._request_response_if_ready()
        run = RunTool(event.call_id, event.name, event.arguments)
        # The new session of a call that loses its model must know what was looked up, and what came back.
        self._conversation.text(("tool", self._session, event.call_id), "assistant",
                                f"[I used the tool {event.name} with {event.arguments[:500]}]")
        if len(self._running_tools) - len(self._queued_tools) < self.config.max_tools_per_call:
            self._running_tools.add(event.call_id)
            out.append(run)
        elif len(self._queued_tools) < MAX_QUEUED_TOOLS:
            # One call may not hold more than its share of the tool pool: this one runs when a slot frees.
            self._running_tools.add(event.call_id)
            self._queued_tools.append(run)
        else:
            busy = json.dumps({"error": f"too many tool calls at once; {event.name} was not run"})
            out.append(Send(Peer.MODEL, rt.function_call_output(event.call_id, busy)))
            self._want_response = True
            out.extend(self._request_response_if_ready())
        return out

    def tool_finished(self, call_id: str, output: str) -> list[Output]:
        """A tool run by the shell finished (or failed: ``output`` then says so, as JSON)."""
        if self.ended:
            return []
        if call_id in self._orphaned_tools:
            return self._orphaned_tool_finished(call_id, output)
        if call_id not in self._running_tools:
            return []
        self._running_tools.discard(call_id)
        self._want_response = True
        self._conversation.extend(("tool", self._session, call_id), f" [it returned {output[:1000]}]")
        out: list[Output] = [Send(Peer.MODEL, rt.function_call_output(call_id, output))]
        if self._queued_tools:
            out.append(self._queued_tools.popleft())
        return out + self._request_response_if_ready()

    def _orphaned_tool_finished(self, call_id: str, output: str) -> list[Output]:
        """A tool called by a session that has since been lost: its call id means nothing to the new session, so
        the result goes in as a note, and the agent is asked to go on with it."""
        session = self._orphaned_tools.pop(call_id)
        self._conversation.extend(("tool", session, call_id), f" [it returned {output[:1000]}]")
        note = rt.user_text(f"(A note from the system, not the caller: the tool you called before the line "
                            f"glitched has returned {output[:MAX_CARRIED_CHARS]}. Go on with the caller.)")
        self._want_response = True
        if not self._model_ready:
            if len(self._held_items) < MAX_HELD_ITEMS:
                self._held_items.append(note)
            return []
        return [Send(Peer.MODEL, note), *self._request_response_if_ready()]

    # ---- control from the HTTP API (any instance; gateway.api.control) ----------------------------------------

    def operator_message(self, text: str) -> list[Output]:
        """A word to the agent from the operator (a system message); it answers once the caller is not speaking."""
        if self.ended:
            return []
        item = rt.system_text(text)
        self._want_response = True
        if not self._model_ready:
            if len(self._held_items) < MAX_HELD_ITEMS:
                self._held_items.append(item)
            return []
        return [Send(Peer.MODEL, item), *self._request_response_if_ready()]

    def new_instructions(self, instructions: str) -> list[Output]:
        """New instructions for the rest of the call, this session and every later one."""
        if self.ended:
            return []
        session = {**self.config.session_update.get("session", {}), "instructions": instructions}
        self.config = replace(self.config, session_update={**self.config.session_update, "session": session})
        return [Send(Peer.MODEL, rt.instructions_update(instructions))] if self._model_ready else []

    def transfer_requested(self) -> list[Output]:
        """Transfer the call (the API asked): the agent announces it, then the transfer once that is heard."""
        if self.ended or self._after_playback is not None:
            return []
        self._after_playback, self._control_done = Transfer("transferred through the API"), False
        self._want_response, self._response_instructions = True, _TRANSFER_INSTRUCTIONS
        return self._request_response_if_ready() + self._control_if_heard()

    def hangup_requested(self) -> list[Output]:
        """Hang up now (the API asked)."""
        if self.ended or self._control_done:
            return []
        self._control_done = True
        return [HangUp("hung up through the API")]

    def transfer_failed(self) -> list[Output]:
        """Twilio refused the transfer: the call goes on, and the agent is told so it can say something."""
        if self.ended:
            return []
        self._after_playback, self._control_done = None, False
        self._want_response = True
        self._response_instructions = "The transfer to a colleague failed. Apologise briefly and keep helping the caller."
        return self._request_response_if_ready()

    def _ask_for_greeting(self) -> list[Output]:
        if not self.config.agent_speaks_first or self._greeting_done or self._greeting_attempts >= MAX_GREETING_ATTEMPTS:
            return []
        self._greeting_attempts += 1
        self._greeting_session = self._session
        self._want_response = True
        self._response_instructions = self.config.greeting_instructions
        return self._request_response_if_ready()

    def _request_response_if_ready(self) -> list[Output]:
        if not self._want_response or self._running_tools or self._active_response or self._response_requested:
            return []
        if self._caller_speaking:
            return []  # never talk over a caller mid-sentence: asked for once they stop
        self._want_response, self._response_requested = False, True
        instructions, self._response_instructions = self._response_instructions, ""
        return [Send(Peer.MODEL, rt.response_create(self._instructions_plus(instructions)))]

    def _instructions_plus(self, extra: str) -> str:
        """Instructions for one response. They replace the session's for that response, so they carry them."""
        if not extra:
            return ""
        session = self.config.session_update.get("session", {}).get("instructions", "")
        return f"{session}\n\n{extra}" if session else extra

    def _control_if_heard(self) -> list[Output]:
        """Hang up or transfer once nothing is left to say or to hear."""
        control = self._after_playback
        if control is None or self._control_done or self._playback.awaiting_echoes:
            return []
        if self._active_response or self._want_response or self._response_requested or self._running_tools:
            return []
        self._control_done = True
        return [control]

    @property
    def marks_pending(self) -> int:
        return self._playback.marks_pending

    def heard_ms(self, item_id: str) -> int:
        """How much of an item (of the current model session) the caller has heard, as confirmed by Twilio."""
        return self._playback.heard_ms((self._session, item_id))

    def _forget_old_items(self) -> None:
        """A call can last hours: only the latest items are kept (far more than can be queued at Twilio)."""
        while len(self._items) > MAX_TRACKED_ITEMS:
            key, _ = self._items.popitem(last=False)
            self._playback.forget(key)

    def _caller_started_speaking(self, now_ms: float) -> list[Output]:
        if not self._greeting_done and self._want_response and not self._response_requested \
                and self._response_instructions == self.config.greeting_instructions:
            self._want_response, self._response_instructions = False, ""  # a greeting still waiting: not wanted now
        self._greeting_done = True  # the caller spoke: the conversation has begun, greeting or not
        out: list[Output] = []
        response_id = self._active_response
        cancelled = False
        if response_id is not None and response_id not in self._interrupted_responses:
            self._interrupted_responses.add(response_id)  # its late deltas are dropped
            if not self.config.interrupt_response:
                out.append(Send(Peer.MODEL, rt.response_cancel(response_id)))
                cancelled = True
        if not self._playback.awaiting_echoes:
            return out  # nothing queued or playing at Twilio: nothing to clear or truncate
        heard = self._playback.heard_at_clear(now_ms)
        out.insert(0, Send(Peer.TWILIO, tw.clear_message(self.stream_sid)))
        for key, heard_ms in heard.items():
            session, item_id = key
            item = self._items[key]
            received_ms = item.received_bytes // self._model_bytes_per_ms
            heard[key] = heard_ms = min(heard_ms, received_ms)  # never more than the item holds
            # Every item with audio in Twilio's queue is cut where the caller stopped hearing it (an item of
            # a session that has since been replaced no longer exists at the model: nothing to cut there).
            if session == self._session and self._model_ready:
                out.append(Send(Peer.MODEL, rt.item_truncate(item_id, heard_ms)))
            out.append(BargeIn(item_id, heard_ms, received_ms, cancelled))
            if received_ms:
                self._conversation.heard(key, heard_ms / received_ms)
        self._playback.clear(heard)
        self._outbound.reset()  # the filter's tail belongs to the audio just dropped
        if self._after_playback is not None and not self._control_done:
            # The caller talked over the goodbye (or the transfer announcement): they are not done. The
            # model hears them and may end or transfer again; hanging up on a talking caller is wrong.
            self._after_playback = None
        return out

    # ---- the clock: time limit and idle media ---------------------------------------------------

    def tick(self, now_ms: float) -> list[Output]:
        """Called by the shell about once a second: ends a call whose media stopped, and wraps up one that
        reached its time limit (the agent says goodbye; the call ends once it is heard, or after a grace)."""
        if self.ended or self._started_ms is None:
            return []
        config = self.config
        last = self._last_media_ms if self._last_media_ms is not None else self._started_ms
        if config.media_idle_timeout_ms and now_ms - last >= config.media_idle_timeout_ms:
            return self._end(f"no media from Twilio for {config.media_idle_timeout_ms / 1000:g} s")
        out = self._comfort_noise(now_ms) + self._rollover_due(now_ms)
        if not config.max_call_duration_ms:
            return out
        elapsed = now_ms - self._started_ms
        if elapsed >= config.max_call_duration_ms + config.wrap_up_grace_ms:
            return self._end(self._wrap_up_reason or "the call reached its time limit")
        if elapsed >= config.max_call_duration_ms and not self._wrap_up_started:
            self._wrap_up_started = True
            return [*out, CallTimeLimitReached(config.max_call_duration_ms),
                    *self._wrap_up("the call reached its time limit", _TIME_LIMIT_INSTRUCTIONS)]
        return out

    def budget_reached(self, now_ms: float) -> list[Output]:
        """The call's cost reached its budget: the agent says goodbye, the call ends once it is heard (or after
        the wrap-up grace, through the time limit's clock)."""
        if self.ended or self._wrap_up_started:
            return []
        self._wrap_up_started = True
        if self._started_ms is not None:  # the grace runs from now
            limit_ms = int(now_ms - self._started_ms)
            self.config = replace(self.config, max_call_duration_ms=max(1, limit_ms))
        return self._wrap_up("the call budget was reached", _BUDGET_INSTRUCTIONS)

    def _comfort_noise(self, now_ms: float) -> list[Output]:
        down = self._model_down_since
        if down is None or self._model_ready or now_ms - down < COMFORT_NOISE_AFTER_MS or self._playback.awaiting_echoes:
            return []
        self._comfort_noise_sent = True
        return [Send(Peer.TWILIO, tw.media_message(self.stream_sid, _COMFORT_NOISE))]

    def _wrap_up(self, reason: str, instructions: str) -> list[Output]:
        """Ask the agent for a goodbye, then hang up once it has been heard (as ``end_call`` does)."""
        self._after_playback, self._control_done = HangUp(reason), False
        self._wrap_up_reason = reason
        self._want_response = True
        self._response_instructions = instructions
        return self._request_response_if_ready() + self._control_if_heard()

    def _end(self, reason: str, *, refused: bool = False) -> list[Output]:
        if self.ended:
            return []
        self.ended = True
        self._pending_audio.clear()
        self._pending_arrivals.clear()
        self._items.clear()
        self._queued_tools.clear()
        self._playback = PlaybackTracker()
        return [EndCall(reason, refused)]
