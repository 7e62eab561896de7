"""The pure call core: one phone call's state machine, with no sockets, clocks or tasks.

Inputs are parsed Twilio events and model events plus an explicit ``now_ms`` (monotonic
milliseconds); every method returns a list of outputs: messages to send (:class:`Send`), things
that happened (:class:`CallEvent` subclasses) and :class:`EndCall`. The I/O shell
(``gateway.media_stream``) moves bytes between the sockets and this object.

Playback accounting (what the caller actually heard) lives in :mod:`gateway.playback`: every chunk of
model audio sent to Twilio is followed by a mark; on a barge-in the gateway clears Twilio's queue and
truncates every item in flight at what the caller will have heard when the ``clear`` arrives, anchored
on Twilio's echoes, never on a guess from the response's start.
"""

from gateway.call.core import Call, CallConfig
from gateway.call.outputs import (
    END_CALL,
    TRANSFER_CALL,
    ConnectModel,
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
)

__all__ = ["END_CALL", "TRANSFER_CALL", "AgentAudioStarted", "ConnectModel", "BargeIn", "Call", "CallConfig", "CallEvent", "CallStarted", "CallTimeLimitReached", "Dropped", "DtmfReceived", "EndCall", "HangUp", "ModelReportedError", "ModelRolledOver", "ModelSessionLost", "PrepareRollover", "SwitchModel", "Output", "Peer", "ResponseFinished", "RunTool", "Send", "ToolCalled", "TranscriptReceived", "Transfer"]
