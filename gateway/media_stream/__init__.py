"""The I/O shell around the call core: Twilio's WebSocket on one side, the model's on the other.

* :mod:`.session`: :class:`MediaStreamSession`, one call: reads both sockets, hands each parsed event to the call
  core (:class:`gateway.call.Call`) and carries out what comes back (sends, the end of the call, tools, control);
* :mod:`.model_socket`: the model session's WebSocket client, which hands messages over by callback and writes
  without a task switch.
"""

from .session import (
    MODEL_DOWN_LIMIT_S,
    POLICY_VIOLATION,
    CallObserver,
    CallServices,
    MediaStreamSession,
    call_config,
)

__all__ = ["MODEL_DOWN_LIMIT_S", "POLICY_VIOLATION", "CallObserver", "CallServices", "MediaStreamSession",
           "call_config"]
