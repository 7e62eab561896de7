"""What the parts of a :class:`~gateway.call.core.Call` (AgentAudio, ModelSessions, CallControl, CallEnding) read of
the call they make up, declared once for the type checker. At run time this class adds nothing: ``Call.__init__``
sets every attribute and each part defines its methods; the declarations only let each part be checked alone."""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.audio.convert import AudioBytes, InboundConverter, OutboundConverter
    from gateway.call.arrivals import FrameArrivals
    from gateway.call.conversation import ConversationLog
    from gateway.call.config import CallConfig
    from gateway.call.outputs import EndCall, Output, RunTool
    from gateway.call.playback import PlaybackTracker
    from gateway.call.state import Greeting, Line, ModelLink, Responses, _AgentItem


class CallPart:
    """The state of one call (see ``Call.__init__`` for what each attribute holds)."""

    config: CallConfig
    stream_sid: str
    ending: EndCall | None  # the one record of the call's end (None: it goes on)
    _inbound: InboundConverter
    _outbound: OutboundConverter
    _model_bytes_per_ms: int
    _chunk_bytes: int
    _link: ModelLink
    _responses: Responses
    _greeting: Greeting
    _line: Line
    _playback: PlaybackTracker[tuple[int, str]]  # keyed by (model session, item id)
    _conversation: ConversationLog
    _items: OrderedDict[tuple[int, str], _AgentItem]
    _arrivals: FrameArrivals
    _pending_audio: deque[AudioBytes]
    _pending_arrivals: deque[tuple[int, float]]
    _pending_audio_bytes: int
    _batch: list[Any]
    _batch_ms: int
    _input_ms: int
    _last_media_ms: float | None
    _started_ms: float | None
    _wrap_up_started: bool
    _wrap_up_reason: str
    _budget_reached: bool
    _queued_tools: deque[RunTool]
    _running_tools: set[str]
    _orphaned_tools: dict[str, int]
    _held_items: list[dict[str, Any]]
    _caller_speaking: bool
    _caller_item: str
    _caller_stopped_ms: float | None

    if TYPE_CHECKING:  # defined by Call or by one of its parts
        @property
        def ended(self) -> bool: ...

        def _end(self, reason: str, *, refused: bool = False) -> list[Output]: ...

        def _wrap_up(self, reason: str, instructions: str) -> list[Output]: ...

        def _model_schedule(self, now_ms: float) -> list[Output]: ...

        def _rollover_due(self, now_ms: float) -> list[Output]: ...

        def _control_if_heard(self) -> list[Output]: ...

        def _request_response_if_ready(self) -> list[Output]: ...
