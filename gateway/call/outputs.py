"""What the call core returns: messages to send, actions for the shell, and events (for logs, metrics, records).

Every method of :class:`gateway.call.Call` returns a list of these: they are the whole of what the core decides
(the shell decides nothing about the call). The shell (``gateway.media_stream``) carries out :class:`Send`,
:class:`EndCall`, :class:`ConnectModel`, :class:`WakeAt`, :class:`PrepareRollover`, :class:`SwitchModel`,
:class:`RunTool`, :class:`HangUp` and :class:`Transfer`, reports the :class:`CallEvent` subclasses, and refuses
(raises) anything else: an output it does not know is a bug, never an event.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Union


class Peer(Enum):
    TWILIO = "twilio"
    MODEL = "model"  # the current model session
    NEXT_MODEL = "next_model"  # the session being prepared for a rollover (PrepareRollover), not yet current


@dataclass(slots=True)
class Send:
    """A message (a JSON-ready dict) for one peer."""

    to: Peer
    message: dict[str, Any]


@dataclass(slots=True)
class EndCall:
    """The call is over: the shell closes both sockets (with 1008, policy violation, when ``refused``)."""

    reason: str
    refused: bool = False


@dataclass(slots=True)
class ConnectModel:
    """Open a model session now, giving up on the attempt after ``timeout_ms``; report how it went with
    :meth:`Call.model_connected`, :meth:`Call.model_connect_failed` (refused, timed out) and, once it was up,
    :meth:`Call.model_lost`. The first comes with a valid ``start``: the call is real, so it may now cost model time;
    the next ones when the core decides (gateway.call.reconnect)."""

    timeout_ms: float = 3000.0


@dataclass(slots=True)
class WakeAt:
    """Call :meth:`Call.tick` at ``at_ms`` (the core's clock), or soon after: something is due then (a model
    connect attempt, the give-up, more comfort noise) that the once-a-second tick would reach too late."""

    at_ms: float


@dataclass(slots=True)
class PrepareRollover:
    """Open the next model session beside the current one (make-before-break, before the session limit): carry
    out :meth:`Call.rollover_setup` (its messages go to :attr:`Peer.NEXT_MODEL`), wait for its ``session.updated``,
    then call :meth:`Call.rollover_ready`; or, when it could not be prepared, :meth:`Call.rollover_failed`."""

    reason: str


@dataclass(slots=True)
class SwitchModel:
    """The prepared session takes over now: everything the core sends from here on goes to it; close the old one."""

    reason: str


@dataclass(slots=True)
class RunTool:
    """Run a user tool off the audio path; hand its result to :meth:`Call.tool_finished`."""

    call_id: str
    name: str
    arguments: str


@dataclass(slots=True)
class HangUp:
    """End the call at Twilio (REST), now that the agent's goodbye has been heard."""

    reason: str


@dataclass(slots=True)
class Transfer:
    """Transfer the call at Twilio (REST), now that the agent's announcement has been heard."""

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
    received_ms: int  # the item's audio received from the model (all of it went to Twilio unless cut)
    cancelled_response: bool


@dataclass(slots=True)
class AgentAudioStarted(CallEvent):
    """A response's first audio went to Twilio: a turn began. ``turn_latency_ms`` runs from the model's
    ``speech_stopped`` (the caller finished) to now; ``model_ttfa_ms`` from ``response.created`` to now (None when
    unknown: a response that answers no caller turn, or was created in an earlier session)."""

    response_id: str
    item_id: str
    caller_item_id: str
    turn_latency_ms: float | None
    model_ttfa_ms: float | None


@dataclass(slots=True)
class DtmfReceived(CallEvent):
    digit: str


@dataclass(slots=True)
class TranscriptReceived(CallEvent):
    role: str
    item_id: str
    text: str


@dataclass(slots=True)
class ToolCalled(CallEvent):
    call_id: str
    name: str
    arguments: str


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
class ModelSessionLost(CallEvent):
    """The model session died or expired; a new one is being opened and the call goes on."""

    reason: str


@dataclass(slots=True)
class ModelRolledOver(CallEvent):
    """A prepared model session took over from one near its time limit, at a quiet point, with no gap."""

    reason: str
    session_age_ms: int


@dataclass(slots=True)
class RolloverFailed(CallEvent):
    """The next model session could not be prepared (or was not current any more): the current one goes on, and
    the rollover is tried again at a quiet point from ``retry_at_ms`` (the core's clock)."""

    reason: str
    retry_at_ms: float


@dataclass(slots=True)
class ModelGaveUp(CallEvent):
    """No model session could be had (gateway.call.reconnect): the call ends, with its spoken message."""

    reason: str


@dataclass(slots=True)
class BudgetReached(CallEvent):
    """The call's cost reached CALL_BUDGET_USD: the agent wraps up (a goodbye, then the hang-up once heard)."""

    cost_usd: float
    limit_usd: float


@dataclass(slots=True)
class LeaseRefused(CallEvent):
    """The call got no concurrency slot (``cause``: ``global_limit``, ``number_limit``) or the shared state did not
    answer (``state_unavailable``): the call ends at once, with the spoken message after ``</Connect>``."""

    cause: str


@dataclass(slots=True)
class TwilioBacklogOverflowed(CallEvent):
    """Twilio is not reading its socket: more than the bound is queued for it, and the call ends."""

    queued_bytes: int


@dataclass(slots=True)
class CallTimeLimitReached(CallEvent):
    """The call reached MAX_CALL_DURATION_S: the agent is saying goodbye, the call ends once it is heard."""

    limit_ms: int


@dataclass(slots=True)
class Dropped(CallEvent):
    """An input the core refused (wrong stream, out of order); the shell logs it."""

    source: str
    reason: str


Output = Union[Send, CallEvent, EndCall, ConnectModel, WakeAt, PrepareRollover, SwitchModel, RunTool, HangUp, Transfer]

# The built-in tools the core itself carries out (once what the agent said has been heard).
END_CALL = "end_call"
TRANSFER_CALL = "transfer_call"
