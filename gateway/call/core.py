"""The call core's state machine: :class:`Call` (see the package docstring; its :class:`CallConfig` is in config.py)."""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from dataclasses import replace
from typing import Any

from gateway.audio.convert import MULAW_BYTES_PER_MS, AudioBytes, converters_for, join_audio, model_bytes_per_ms, mulaw_silence
from gateway.call.agent_audio import AgentAudio
from gateway.call.arrivals import FrameArrivals
from gateway.call.config import CallConfig  # here too: gateway.call.core.CallConfig is its old place
from gateway.call.control import CallControl
from gateway.call.conversation import ConversationLog
from gateway.call.ending import CallEnding
from gateway.call.limits import (  # noqa: F401 - MAX_TRACKED_ITEMS and the rest are read from here by tests
    BENIGN_MODEL_ERRORS, DTMF_BURST, DTMF_PER_S, GAP_TOLERANCE_MS, MAX_CARRIED_CHARS, MAX_CARRIED_ITEMS,
    MAX_GAP_FILL_MS, MAX_HELD_ITEMS, MAX_PENDING_AUDIO_MS, MAX_TRACKED_FRAMES, MAX_TRACKED_ITEMS,
    TIME_LIMIT_INSTRUCTIONS,
)
from gateway.call.outputs import (
    CallStarted, Dropped, DtmfReceived, EndCall,
    ModelReportedError, Output, Peer, ResponseFinished, RunTool, Send, TranscriptReceived,
)
from gateway.call.reconnect import Reconnects
from gateway.call.sessions import ModelSessions
from gateway.call.state import (
    Greeting, GreetingPhase, Line, LinkPhase, ModelLink, ResponsePhase, Responses, _AgentItem,
)
from gateway.call.playback import PlaybackTracker
from gateway.realtime import events as rt
from gateway.twilio import media as tw

log = logging.getLogger("gateway.call")

_DOWN = LinkPhase.DOWN  # read on every caller frame: one global, not an enum attribute lookup


class Call(AgentAudio, ModelSessions, CallControl, CallEnding):
    """One call. Feed it events with :meth:`twilio_event` / :meth:`model_event`; send what it returns."""

    def __init__(self, config: CallConfig, *, expected_call_sid: str = "") -> None:
        self.config = config
        # The CallSid the stream's credential was issued for: a start naming another call is refused.
        self.expected_call_sid = expected_call_sid
        self.stream_sid = ""
        self.call_sid = ""
        self.custom_parameters: dict[str, str] = {}
        # The one record of the call's end (None: it goes on): what the shell closes the sockets with, and the
        # reason in the call's record. The shell never ends a call on its own: it reports what happened and
        # carries out the EndCall that comes back (gateway.call.ending).
        self.ending: EndCall | None = None
        self._inbound, self._outbound = converters_for(config.audio_format)
        self._model_bytes_per_ms = model_bytes_per_ms(config.audio_format)
        # The call's state, composed of small objects with explicit phases (gateway.call.state): the model
        # sessions, the response under way, the greeting, the line and the call control waiting on it.
        self._link = ModelLink(Reconnects(enabled=config.model_reconnect))
        self._responses = Responses()
        self._greeting = Greeting()
        self._line = Line()
        self._pending_audio: deque[AudioBytes] = deque()
        self._pending_arrivals: deque[tuple[int, float]] = deque()  # (ms, arrival) of each held frame
        self._batch: list[Any] = []  # caller audio of the batch being gathered (CallConfig.caller_audio_batch_ms)
        self._batch_ms = 0
        self._pending_audio_bytes = 0  # model-format bytes held
        # The model session's input audio clock (ms appended in this session) against when each frame arrived:
        # the model's speech_stopped names a position in it, turned here into when the caller really stopped.
        self._input_ms = 0
        self._arrivals = FrameArrivals(MAX_TRACKED_FRAMES)
        self._next_timestamp_ms: int | None = None
        # Real-time budget of caller audio: ms accepted since the first media frame, and when that frame came.
        self._first_media_ms: float | None = None
        self._last_media_ms: float | None = None
        self._caller_audio_ms = 0
        self._started_ms: float | None = None
        self._wrap_up_started = False  # the time limit or the budget asked for the goodbye
        self._budget_reached = False  # reported once
        self._wrap_up_reason = ""
        self._queued_tools: deque[RunTool] = deque()
        self._orphaned_tools: dict[str, int] = {}  # call_id -> the lost session that asked for it
        self._caller_speaking = False  # between the model's speech_started and speech_stopped
        # For turn measurements: the caller's latest utterance, and when it ended.
        self._caller_item = ""
        self._caller_stopped_ms: float | None = None
        self._dtmf_tokens = DTMF_BURST
        self._dtmf_at: float | None = None
        # Keyed by (session, item_id): a replacement session may number its items as the old one did.
        self._items: OrderedDict[tuple[int, str], _AgentItem] = OrderedDict()
        self._playback = PlaybackTracker()
        self._chunk_bytes = config.mark_interval_ms * self._model_bytes_per_ms
        # Turn-taking around tools: a response is requested once every tool output is in and none is active.
        self._running_tools: set[str] = set()
        # What was said, as text, to carry the conversation into a new model session if this one is lost.
        self._held_items: list[dict[str, Any]] = []  # conversation items that arrived while (re)connecting
        self._conversation = ConversationLog(MAX_CARRIED_ITEMS, MAX_CARRIED_CHARS)

    @property
    def ended(self) -> bool:
        return self.ending is not None

    def apply_call_settings(self, now_ms: float, *, instructions: str = "", voice: str = "",
                            greeting: str = "") -> list[Output]:
        """Per-call settings (an outbound call's), before the model connects: they go into session.update."""
        if self.ending is not None:
            return []
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
        return []

    # ---- Twilio side ------------------------------------------------------------------------

    def twilio_event(self, event: tw.TwilioEvent, now_ms: float) -> list[Output]:
        if self.ending is not None:
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
            self._link.reconnects.start(now_ms)  # the first attempt now; the give-up counts from now
            return [CallStarted(event.call_sid, event.stream_sid, self.custom_parameters), *self._model_schedule(now_ms)]
        if isinstance(event, tw.Dtmf):
            if event.stream_sid != self.stream_sid:
                return [Dropped("twilio", "dtmf for a foreign streamSid")]
            if not self._take_dtmf_token(now_ms):
                return [Dropped("twilio", "dtmf faster than a keypad")]
            self._responses.wanted = True
            pressed = rt.user_text(f"The caller pressed {event.digit} on the phone keypad.")
            if self._link.phase is _DOWN:  # (re)connecting: the key reaches the model with the held audio
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
        if self._link.phase is not _DOWN:
            self._input_ms += frame_ms
            self._arrivals.append(self._input_ms, now_ms)
            if not self.config.caller_audio_batch_ms:
                return [Send(Peer.MODEL, rt.input_audio_append(converted))]
            self._batch.append(converted)
            self._batch_ms += frame_ms
            if self._batch_ms < self.config.caller_audio_batch_ms:
                return []
            batch, self._batch, self._batch_ms = self._batch, [], 0
            return [Send(Peer.MODEL, rt.input_audio_append(join_audio(batch)))]
        self._pending_audio.append(converted)
        self._pending_arrivals.append((frame_ms, now_ms))
        self._pending_audio_bytes += len(converted)
        while self._pending_audio_bytes > MAX_PENDING_AUDIO_MS * self._model_bytes_per_ms and self._pending_audio:
            dropped = self._pending_audio.popleft()
            self._pending_arrivals.popleft()
            self._pending_audio_bytes -= len(dropped)
        return []

    # ---- model side -------------------------------------------------------------------------

    def model_event(self, event: rt.ModelEvent, now_ms: float) -> list[Output]:
        if self.ending is not None:
            return []
        if isinstance(event, rt.AudioDelta):
            return self._agent_audio(event, now_ms)
        if isinstance(event, rt.SpeechStarted):
            self._caller_speaking = True
            self._caller_item, self._caller_stopped_ms = event.item_id, None
            self._conversation.begin((self._link.session, event.item_id), "user")
            return self._caller_started_speaking(now_ms)
        if isinstance(event, rt.SpeechStopped):
            # The caller finished: a response we held back (a tool's result, a key press) may be asked for now.
            self._caller_speaking = False
            self._caller_stopped_ms = self._caller_stopped_at(event.audio_end_ms - self.config.vad_silence_ms, now_ms)
            return self._request_response_if_ready()
        if isinstance(event, rt.ResponseCreated):
            responses, greeting = self._responses, self._greeting
            if responses.phase is ResponsePhase.REQUESTED and greeting.session == self._link.session \
                    and greeting.phase is not GreetingPhase.DONE and greeting.response_id is None:
                greeting.response_id, greeting.phase = event.response_id, GreetingPhase.PLAYING
            responses.active, responses.phase = event.response_id, ResponsePhase.ACTIVE
            responses.created = (event.response_id, now_ms)
            return []
        if isinstance(event, rt.ResponseDone):
            responses, greeting = self._responses, self._greeting
            if responses.active == event.response_id:
                responses.active = None
                if responses.phase is ResponsePhase.ACTIVE:
                    responses.phase = ResponsePhase.IDLE
            responses.interrupted.discard(event.response_id)
            had_audio = event.response_id in responses.with_audio
            responses.with_audio.discard(event.response_id)
            out: list[Output] = [ResponseFinished(event.response_id, event.status, event.usage)]
            if event.response_id == greeting.response_id and greeting.phase is not GreetingPhase.DONE:
                greeting.response_id = None
                if event.status == "completed" and had_audio:
                    greeting.phase = GreetingPhase.DONE  # all of it is at Twilio: it plays, whatever the model does next
                else:
                    greeting.phase = GreetingPhase.UNASKED
                    out += self._ask_for_greeting()  # failed (a rate limit, say): ask again, a bounded number of times
            return out + self._request_response_if_ready() + self._control_if_heard()
        if isinstance(event, rt.FunctionCallRequested):
            return self._function_call(event)
        if isinstance(event, rt.Transcript):
            if event.text:
                self._conversation.text((self._link.session, event.item_id), event.role, event.text)
            return [TranscriptReceived(event.role, event.item_id, event.text)]
        if isinstance(event, rt.SessionUpdated):
            if self._greeting.session != self._link.session:
                return self._ask_for_greeting()
            return []
        if isinstance(event, rt.ModelError):
            # Whatever went wrong, a response.create of ours may have been refused: do not wait for it forever.
            if self._responses.phase is ResponsePhase.REQUESTED:
                self._responses.phase = ResponsePhase.IDLE
            if event.code in BENIGN_MODEL_ERRORS:
                return self._control_if_heard()
            return [ModelReportedError(event.code, event.message), *self._control_if_heard()]
        return []
