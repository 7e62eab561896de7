"""The pure call core: one phone call's state machine, with no sockets, clocks or tasks.

Inputs are parsed Twilio events and model events, and what the shell reports (a socket closed, a lease refused, a
backlog past its bound, the cost so far), each with a required ``now_ms`` (monotonic milliseconds); every method
returns a list of outputs, the whole of what the core decides: messages to send (:class:`Send`), actions
(:class:`EndCall`, :class:`ConnectModel`, :class:`WakeAt`, ...) and things that happened (:class:`CallEvent`
subclasses). The I/O shell (``gateway.media_stream``) moves bytes between the sockets and this object and decides
nothing; the call's end is recorded once, in :attr:`Call.ending`.

Modules: :mod:`~gateway.call.core` (the :class:`Call`: Twilio's events, the model's events),
:mod:`~gateway.call.agent_audio` (the agent's audio, marks, barge-in), :mod:`~gateway.call.sessions` (model
sessions: connect, lose, roll over ahead of the limit), :mod:`~gateway.call.control` (tools, turn-taking, hang-up
and transfer once heard, wrap-up, API actions), :mod:`~gateway.call.ending` (the clock's checks, the budget, what
ends a call), :mod:`~gateway.call.state` (the call's state objects and their phases),
:mod:`~gateway.call.conversation` (what a new session is told), :mod:`~gateway.call.outputs` (what the core
returns) and :mod:`~gateway.call.limits` (every bound and timing).

Playback accounting (what the caller actually heard) lives in :mod:`gateway.call.playback`: every chunk of
model audio sent to Twilio is followed by a mark; on a barge-in the gateway clears Twilio's queue and
truncates every item in flight at what the caller will have heard when the ``clear`` arrives, anchored
on Twilio's echoes, never on a guess from the response's start.
"""

from gateway.call.core import Call, CallConfig
from gateway.call.outputs import (
    END_CALL,
    TRANSFER_CALL,
    ConnectModel,
    WakeAt,
    PrepareRollover,
    SwitchModel,
    ModelRolledOver,
    Peer,
    Send,
    EndCall,
    RunTool,
    HangUp,
    Transfer,
    CallEvent,
    CallStarted,
    BargeIn,
    AgentAudioStarted,
    DtmfReceived,
    TranscriptReceived,
    ToolCalled,
    ResponseFinished,
    ModelReportedError,
    ModelSessionLost,
    CallTimeLimitReached,
    Dropped,
    Output,
    RolloverFailed,
    ModelGaveUp,
    BudgetReached,
    LeaseRefused,
    TwilioBacklogOverflowed,
)

__all__ = ["END_CALL", "TRANSFER_CALL", "AgentAudioStarted", "ConnectModel", "BargeIn", "BudgetReached", "Call", "CallConfig", "CallEvent", "CallStarted", "CallTimeLimitReached", "Dropped", "DtmfReceived", "EndCall", "HangUp", "LeaseRefused", "ModelGaveUp", "ModelReportedError", "ModelRolledOver", "ModelSessionLost", "PrepareRollover", "RolloverFailed", "SwitchModel", "Output", "Peer", "ResponseFinished", "RunTool", "Send", "ToolCalled", "TranscriptReceived", "Transfer", "TwilioBacklogOverflowed", "WakeAt"]
