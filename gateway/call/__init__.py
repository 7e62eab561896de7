"""The pure call core: one phone call's state machine, with no sockets, clocks or tasks.

Inputs are parsed Twilio events and model events plus an explicit ``now_ms`` (monotonic
milliseconds); every method returns a list of outputs: messages to send (:class:`Send`), things
that happened (:class:`CallEvent` subclasses) and :class:`EndCall`. The I/O shell
(``gateway.media_stream``) moves bytes between the sockets and this object.

Modules: :mod:`~gateway.call.core` (the :class:`Call`: Twilio's events, the model's events, barge-in, the clock),
:mod:`~gateway.call.sessions` (model sessions: connect, lose, roll over ahead of the limit),
:mod:`~gateway.call.control` (tools, turn-taking, hang-up and transfer once heard, wrap-up, API actions),
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
