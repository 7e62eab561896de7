"""The pure call core: one phone call's state machine, with no sockets, clocks or tasks.

Inputs are parsed Twilio events and model events plus an explicit ``now_ms`` (monotonic
milliseconds); every method returns a list of outputs: messages to send (:class:`Send`), things
that happened (:class:`CallEvent` subclasses) and :class:`EndCall`. The I/O shell
(``gateway.media_stream``) moves bytes between the sockets and this object.

Playback accounting (what the caller actually heard) is built on Twilio marks. Every chunk of model
audio sent to Twilio is followed by a mark named ``g<generation>:<end_ms>:<item_id>``; Twilio echoes
it once everything queued before it has played. On a barge-in the heard position of the item is the
end of the last echoed mark, plus the part of the next chunk that has been playing since: Twilio plays
in real time from the later of that echo and the chunk's arrival, and never past the chunk's end (so
at most ``mark_interval_ms`` of interpolation, always anchored to a mark). ``clear`` bumps the
generation: marks Twilio echoes for the cleared generation mean "dropped", not "played", and are ignored.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Union

from gateway.audio import MULAW_BYTES_PER_MS, converters_for, model_bytes_per_ms, mulaw_silence
from gateway.realtime import events as rt
from gateway.twilio import media as tw

log = logging.getLogger("gateway.call")

# A media timestamp further ahead than this is treated as lost packets and filled with silence.
GAP_TOLERANCE_MS = 10
# A bound on one gap fill: a hostile timestamp must not make us allocate minutes of silence.
MAX_GAP_FILL_MS = 2000
# Caller audio kept while the model socket is still connecting.
MAX_PENDING_AUDIO_MS = 5000


class Peer(Enum):
    TWILIO = "twilio"
    MODEL = "model"


@dataclass(slots=True)
class Send:
    """A message (a JSON-ready dict) for one peer."""

    to: Peer
    message: dict[str, Any]


@dataclass(slots=True)
class EndCall:
    """The call is over: the shell closes both sockets."""

    reason: str


class CallEvent:
    """Base of everything the core reports (for logs, metrics, transcripts, records)."""

    __slots__ = ()


@dataclass(slots=True)
class CallStarted(CallEvent):
    call_sid: str
    stream_sid: str
    custom_parameters: dict[str, str]


@dataclass(slots=True)
class BargeIn(CallEvent):
    item_id: str
    heard_ms: int
    sent_ms: int
    cancelled_response: bool


@dataclass(slots=True)
class DtmfReceived(CallEvent):
    digit: str


@dataclass(slots=True)
class TranscriptReceived(CallEvent):
    role: str
    item_id: str
    text: str


@dataclass(slots=True)
class ResponseFinished(CallEvent):
    response_id: str
    status: str
    usage: dict[str, Any]


@dataclass(slots=True)
class ModelReportedError(CallEvent):
    code: str
    message: str


@dataclass(slots=True)
class Dropped(CallEvent):
    """An input the core refused (wrong stream, out of order); the shell logs it."""

    source: str
    reason: str


Output = Union[Send, CallEvent, EndCall]


@dataclass(frozen=True, slots=True)
class CallConfig:
    """What the core needs to know about the session; built from :class:`gateway.config.Settings`."""

    session_update: dict[str, Any]
    audio_format: str = "pcm16"
    agent_speaks_first: bool = False
    greeting_instructions: str = ""
    interrupt_response: bool = True  # the server cancels its own response on speech_started
    mark_interval_ms: int = 100


@dataclass(slots=True)
class _PlayedItem:
    """Model audio of one assistant item, as far as Twilio has been sent it."""

    response_id: str
    sent_bytes: int = 0  # model-format bytes converted and sent to Twilio
    heard_ms: int = 0  # end of the last echoed mark of the current generation


@dataclass(slots=True)
class _PendingMark:
    item_id: str
    start_ms: int  # the item position where this mark's chunk begins
    end_ms: int
    sent_at: float


@dataclass(slots=True)
class _Playback:
    """Marks in flight for the current generation, oldest first."""

    generation: int = 0
    pending: deque[_PendingMark] = field(default_factory=deque)
    last_echo_at: float = 0.0


class Call:
    """One call. Feed it events with :meth:`twilio_event` / :meth:`model_event`; send what it returns."""

    def __init__(self, config: CallConfig) -> None:
        self.config = config
        self.stream_sid = ""
        self.call_sid = ""
        self.custom_parameters: dict[str, str] = {}
        self.ended = False
        self._inbound, self._outbound = converters_for(config.audio_format)
        self._model_bytes_per_ms = model_bytes_per_ms(config.audio_format)
        self._model_ready = False
        self._pending_audio: deque[bytes] = deque()
        self._pending_audio_ms = 0
        self._next_timestamp_ms: int | None = None
        self._greeted = False
        self._active_response: str | None = None
        self._interrupted_responses: set[str] = set()
        self._items: dict[str, _PlayedItem] = {}
        self._playback = _Playback()
        self._chunk_bytes = config.mark_interval_ms * self._model_bytes_per_ms

    # ---- Twilio side ------------------------------------------------------------------------

    def twilio_event(self, event: tw.TwilioEvent, now_ms: float) -> list[Output]:
        if self.ended:
            return []
        if isinstance(event, tw.Media):
            if not self.stream_sid:
                return [Dropped("twilio", "media before start")]
            if event.stream_sid != self.stream_sid:
                return [Dropped("twilio", "media for a foreign streamSid")]
            return self._caller_audio(event)
        if isinstance(event, tw.MarkEcho):
            if event.stream_sid != self.stream_sid:
                return [Dropped("twilio", "mark for a foreign streamSid")]
            return self._mark_echoed(event.name, now_ms)
        if isinstance(event, tw.Start):
            if self.stream_sid:
                return [Dropped("twilio", "second start on one stream")]
            self.stream_sid = event.stream_sid
            self.call_sid = event.call_sid
            self.custom_parameters = dict(event.custom_parameters)
            return [CallStarted(event.call_sid, event.stream_sid, self.custom_parameters)]
        if isinstance(event, tw.Dtmf):
            if event.stream_sid != self.stream_sid:
                return [Dropped("twilio", "dtmf for a foreign streamSid")]
            return [DtmfReceived(event.digit)]
        if isinstance(event, tw.Stop):
            if self.stream_sid and event.stream_sid != self.stream_sid:
                return [Dropped("twilio", "stop for a foreign streamSid")]
            return self._end("caller hung up")
        return []  # Connected: nothing to do

    def twilio_closed(self) -> list[Output]:
        return self._end("twilio socket closed")

    def _caller_audio(self, media: tw.Media) -> list[Output]:
        audio = media.payload
        expected = self._next_timestamp_ms
        if expected is not None and media.timestamp_ms > expected + GAP_TOLERANCE_MS:
            # Lost packets: the gap is real time that passed; keep the model's audio clock on the call's.
            gap_ms = min(media.timestamp_ms - expected, MAX_GAP_FILL_MS)
            audio = mulaw_silence(gap_ms) + audio
        frame_ms = len(media.payload) // MULAW_BYTES_PER_MS
        if expected is None or media.timestamp_ms + frame_ms > expected:
            self._next_timestamp_ms = media.timestamp_ms + frame_ms
        converted = self._inbound.convert(audio)
        if self._model_ready:
            return [Send(Peer.MODEL, rt.input_audio_append(converted))]
        self._pending_audio.append(converted)
        self._pending_audio_ms += len(audio) // MULAW_BYTES_PER_MS
        while self._pending_audio_ms > MAX_PENDING_AUDIO_MS and self._pending_audio:
            dropped = self._pending_audio.popleft()
            self._pending_audio_ms -= len(dropped) // self._model_bytes_per_ms
        return []

    # ---- model side -------------------------------------------------------------------------

    def model_connected(self) -> list[Output]:
        """The model socket is open: configure the session, then flush caller audio held meanwhile."""
        self._model_ready = True
        out: list[Output] = [Send(Peer.MODEL, self.config.session_update)]
        while self._pending_audio:
            out.append(Send(Peer.MODEL, rt.input_audio_append(self._pending_audio.popleft())))
        self._pending_audio_ms = 0
        return out

    def model_closed(self, reason: str) -> list[Output]:
        self._model_ready = False
        return self._end(f"model socket closed: {reason}")

    def model_event(self, event: rt.ModelEvent, now_ms: float) -> list[Output]:
        if self.ended:
            return []
        if isinstance(event, rt.AudioDelta):
            return self._agent_audio(event, now_ms)
        if isinstance(event, rt.SpeechStarted):
            return self._caller_started_speaking(now_ms)
        if isinstance(event, rt.ResponseCreated):
            self._active_response = event.response_id
            return []
        if isinstance(event, rt.ResponseDone):
            if self._active_response == event.response_id:
                self._active_response = None
            self._interrupted_responses.discard(event.response_id)
            return [ResponseFinished(event.response_id, event.status, event.usage)]
        if isinstance(event, rt.Transcript):
            return [TranscriptReceived(event.role, event.item_id, event.text)]
        if isinstance(event, rt.SessionUpdated):
            if self.config.agent_speaks_first and not self._greeted:
                self._greeted = True
                return [Send(Peer.MODEL, rt.response_create(self.config.greeting_instructions))]
            return []
        if isinstance(event, rt.ModelError):
            return [ModelReportedError(event.code, event.message)]
        return []

    def _agent_audio(self, delta: rt.AudioDelta, now_ms: float) -> list[Output]:
        if delta.response_id in self._interrupted_responses or not self.stream_sid:
            return []  # a late delta of an interrupted response, or no stream to play it on
        item = self._items.get(delta.item_id)
        if item is None:
            item = self._items[delta.item_id] = _PlayedItem(delta.response_id)
        out: list[Output] = []
        playback = self._playback
        audio = delta.audio
        for offset in range(0, len(audio), self._chunk_bytes):
            chunk = audio[offset : offset + self._chunk_bytes]
            start_ms = item.sent_bytes // self._model_bytes_per_ms
            item.sent_bytes += len(chunk)
            end_ms = item.sent_bytes // self._model_bytes_per_ms
            mulaw = self._outbound.convert(chunk)
            if not mulaw:
                continue
            name = f"g{playback.generation}:{end_ms}:{delta.item_id}"
            playback.pending.append(_PendingMark(delta.item_id, start_ms, end_ms, now_ms))
            out.append(Send(Peer.TWILIO, tw.media_message(self.stream_sid, mulaw)))
            out.append(Send(Peer.TWILIO, tw.mark_message(self.stream_sid, name)))
        return out

    def _mark_echoed(self, name: str, now_ms: float) -> list[Output]:
        parsed = _parse_mark_name(name)
        if parsed is None:
            return [Dropped("twilio", "mark with a name we never sent")]
        generation, end_ms, item_id = parsed
        playback = self._playback
        if generation != playback.generation:
            return []  # echoed because we cleared it, not because it played
        position = next(
            (i for i, mark in enumerate(playback.pending) if mark.item_id == item_id and mark.end_ms == end_ms), None
        )
        if position is None:
            return [Dropped("twilio", "echo of a mark that is not pending")]
        # Twilio echoes in order: this echo means every mark before it has played too.
        for _ in range(position + 1):
            mark = playback.pending.popleft()
            item = self._items.get(mark.item_id)
            if item is not None and mark.end_ms > item.heard_ms:
                item.heard_ms = mark.end_ms
        playback.last_echo_at = now_ms
        return []

    def heard_ms(self, item_id: str, now_ms: float) -> int:
        """How much of an item's audio the caller has heard by ``now_ms`` (see the module docstring)."""
        item = self._items.get(item_id)
        if item is None:
            return 0
        heard = item.heard_ms
        playback = self._playback
        if playback.pending:
            mark = playback.pending[0]  # the chunk Twilio is playing now
            if mark.item_id == item_id:
                playing_since = max(playback.last_echo_at, mark.sent_at)
                progress = max(0, min(int(now_ms - playing_since), mark.end_ms - mark.start_ms))
                heard = max(heard, mark.start_ms + progress)
        return heard

    def _caller_started_speaking(self, now_ms: float) -> list[Output]:
        playback = self._playback
        out: list[Output] = []
        response_id = self._active_response
        cancelled = False
        if response_id is not None and response_id not in self._interrupted_responses:
            self._interrupted_responses.add(response_id)
            if not self.config.interrupt_response:
                out.append(Send(Peer.MODEL, rt.response_cancel(response_id)))
                cancelled = True
        if not playback.pending:
            return out  # nothing queued or playing at Twilio: nothing to clear or truncate
        item_id = playback.pending[0].item_id
        heard = self.heard_ms(item_id, now_ms)
        item = self._items[item_id]
        sent_ms = item.sent_bytes // self._model_bytes_per_ms
        heard = min(heard, sent_ms)  # never more than the item holds
        out.insert(0, Send(Peer.TWILIO, tw.clear_message(self.stream_sid)))
        out.append(Send(Peer.MODEL, rt.item_truncate(item_id, heard)))
        # Later items of the same response were never heard at all; they stay as the model made them.
        self._interrupted_responses.add(item.response_id)
        playback.generation += 1
        playback.pending.clear()
        self._outbound.reset()  # the filter's tail belongs to the audio just dropped
        item.heard_ms = heard
        out.append(BargeIn(item_id, heard, sent_ms, cancelled))
        return out

    def _end(self, reason: str) -> list[Output]:
        if self.ended:
            return []
        self.ended = True
        self._pending_audio.clear()
        self._items.clear()
        self._playback.pending.clear()
        return [EndCall(reason)]


def _parse_mark_name(name: str) -> tuple[int, int, str] | None:
    generation, sep1, rest = name.partition(":")
    end_ms, sep2, item_id = rest.partition(":")
    if not (sep1 and sep2 and generation.startswith("g") and item_id):
        return None
    try:
        return int(generation[1:]), int(end_ms), item_id
    except ValueError:
        return None
