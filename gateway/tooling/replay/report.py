"""What the replay phone saw and measured during one call: the records of its timeline and the call report.

Every time is in milliseconds since the phone sent ``start`` (the stream's t = 0, the origin of the
media timestamps it sent), measured on the phone's monotonic clock. Every figure is measured from
the caller's side only: what the phone sent, and what it actually played (heard), never what the
gateway says it did.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from os import PathLike
from typing import Any

from gateway.audio.convert import MULAW_SILENCE

from gateway.twilio.playback import ClearRecord, MarkRecord, PlaybackRun
from gateway.audio.wavio import PHONE_RATE, write_mulaw_wav

# Violation kinds: what Twilio would reject in a message from the gateway (Twilio's Media Streams error 31951).
BINARY_FRAME = "binary_frame"  # Twilio error 31950
INVALID_JSON = "invalid_json"  # not JSON, or not a JSON object
UNKNOWN_EVENT = "unknown_event"  # 31951
MISSING_FIELD = "missing_field"  # 31951
EXTRA_FIELD = "extra_field"  # 31951
BAD_FIELD = "bad_field"  # a field of the wrong type (e.g. a mark name that is not a string)
WRONG_STREAM_SID = "wrong_stream_sid"  # 31951
INVALID_BASE64 = "invalid_base64"
BEFORE_START = "before_start"  # a message before the phone sent `start`
VIOLATION_KINDS = (
    BINARY_FRAME,
    INVALID_JSON,
    UNKNOWN_EVENT,
    MISSING_FIELD,
    EXTRA_FIELD,
    BAD_FIELD,
    WRONG_STREAM_SID,
    INVALID_BASE64,
    BEFORE_START,
)


@dataclass(slots=True)
class Violation:
    """A message from the gateway that Twilio would refuse; the phone ignored it."""

    time_ms: float
    kind: str
    reason: str


@dataclass(slots=True)
class TurnReport:
    """One caller turn, as the caller lived it.

    ``response_ms``: the turn's speech end -> the first agent audio heard from a playback that started
    after the turn's speech start and before the next turn (negative: the agent spoke before the caller
    had finished; None: no answer was heard).

    For a barge-in (the turn started while agent audio was being heard): ``stop_ms`` = the caller's speech
    start -> the agent's audio stops being heard (the queue was cleared or drained: ``stopped_by``).
    ``talk_over_ms``: milliseconds of agent audio heard during the caller's speech (any turn).
    """

    index: int
    name: str
    barge_in: bool
    start_ms: float
    end_ms: float
    kind: str = "speech"  # "speech" | "dtmf"
    expects_answer: bool = True  # the agent is expected to answer it (scripted), or it is caller speech (recorded)
    completed: bool = True  # False: the call ended during the turn
    response_ms: float | None = None
    agent_playing_at_start: bool = False
    stop_ms: float | None = None
    stopped_by: str | None = None
    talk_over_ms: float = 0.0


@dataclass(slots=True)
class Silence:
    """A stretch in which the caller expected agent audio and heard none (below the heard threshold).

    ``kind``: ``"answer"``: from the end of a caller turn that expects an answer (its speech end) to the first agent
    audio heard after it; when none came before the caller did something else (spoke, pressed a key) or the call
    ended, it lasts until then and ``answered`` is False. ``"inside_answer"``: the agent's playback drained (not
    cleared) and agent audio was heard again with no caller turn or key press between: from the last audio heard
    before the drain to the first heard after it, a hole in one answer. ``after_turn``: the caller turn it follows
    ("" before the caller's first turn, e.g. inside a greeting).
    """

    start_ms: float
    duration_ms: float
    kind: str  # "answer" | "inside_answer"
    after_turn: str = ""
    answered: bool = True

    @property
    def end_ms(self) -> float:
        return self.start_ms + self.duration_ms


@dataclass(slots=True)
class CallReport:
    """The outcome of one replayed call (see the module docstring for the time base)."""

    stream_sid: str
    call_sid: str
    account_sid: str
    ended_by: str  # "hangup" | "timeout" | "gateway_closed"
    duration_ms: float
    turns: list[TurnReport] = field(default_factory=list)
    clears: list[ClearRecord] = field(default_factory=list)
    marks: list[MarkRecord] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    runs: list[PlaybackRun] = field(default_factory=list)
    dtmf_sent: list[tuple[float, str]] = field(default_factory=list)
    underruns: int = 0  # holes inside an agent answer: the queue drained and refilled soon, no caller turn or key between
    underrun_ms: float = 0.0
    frames_sent: int = 0
    frames_dropped: int = 0  # simulated packet loss
    max_frame_lag_ms: float = 0.0  # how late the phone sent a frame against its schedule (harness health)
    media_received: int = 0
    agent_audio_received_ms: float = 0.0
    agent_audio_played_ms: float = 0.0
    agent_heard_ms: float = 0.0  # milliseconds in which agent audio was actually heard (above the heard threshold)
    agent_audio_cleared_ms: float = 0.0
    max_queue_ms: float = 0.0  # the most agent audio queued ahead of playback at once
    silences: list[Silence] = field(default_factory=list)  # where the caller expected audio and heard none
    reader_paused_ms: float = 0.0  # the slow reader's pauses: how long the phone left its socket unread
    max_unread_bytes: int = 0  # the most bytes seen waiting, unread, in the phone's socket buffer (slow reader)
    caller_audio: bytes = field(default=b"", repr=False)  # mu-law 8 kHz, t = 0 at index 0
    heard_audio: bytes = field(default=b"", repr=False)  # mu-law 8 kHz, silence where nothing played

    @property
    def marks_received(self) -> int:
        return len(self.marks)

    @property
    def marks_echoed(self) -> int:
        return sum(1 for m in self.marks if m.echoed_ms is not None)

    @property
    def violation_counts(self) -> dict[str, int]:
        return dict(Counter(v.kind for v in self.violations))

    @property
    def response_ms(self) -> list[float]:
        """Speech end -> first agent audio heard, for every turn that got an answer."""
        return [t.response_ms for t in self.turns if t.response_ms is not None]

    @property
    def barge_in_stop_ms(self) -> list[float]:
        """Caller speech start -> agent audio stopped, for every barge-in that found the agent talking."""
        return [t.stop_ms for t in self.turns if t.barge_in and t.stop_ms is not None]

    @property
    def longest_silence(self) -> Silence | None:
        """The longest stretch where the caller expected agent audio and heard none (the first, on a tie)."""
        return max(self.silences, key=lambda s: s.duration_ms, default=None)

    @property
    def longest_silence_ms(self) -> float:
        """Its length in ms; 0 when the caller never waited for audio."""
        longest = self.longest_silence
        return 0.0 if longest is None else longest.duration_ms

    def to_dict(self) -> dict[str, Any]:
        """Everything but the audio, JSON-ready."""
        out = {name: _jsonable(getattr(self, name)) for name in self.__dataclass_fields__}
        del out["caller_audio"], out["heard_audio"]
        out["audio_ms"] = len(self.heard_audio) / (PHONE_RATE // 1000)
        out["marks_received"] = self.marks_received
        out["marks_echoed"] = self.marks_echoed
        out["violation_counts"] = self.violation_counts
        out["longest_silence_ms"] = round(self.longest_silence_ms, 3)
        out["longest_silence"] = _jsonable(self.longest_silence)
        return out

    def _tracks(self) -> tuple[bytes, bytes]:
        n = max(len(self.caller_audio), len(self.heard_audio))
        pad = bytes([MULAW_SILENCE])
        return self.caller_audio.ljust(n, pad), self.heard_audio.ljust(n, pad)

    def write_wav(self, path: str | PathLike[str]) -> None:
        """A stereo mu-law 8 kHz WAV on one timeline: the caller left, the agent as heard right."""
        caller, heard = self._tracks()
        stereo = bytearray(2 * len(caller))
        stereo[0::2] = caller
        stereo[1::2] = heard
        write_mulaw_wav(path, bytes(stereo), PHONE_RATE, channels=2)

    def write_heard_wav(self, path: str | PathLike[str]) -> None:
        """A mono mu-law 8 kHz WAV of what the caller heard."""
        write_mulaw_wav(path, self.heard_audio, PHONE_RATE, channels=1)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {k: _jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
