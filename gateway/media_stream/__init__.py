"""The I/O shell around the call core: Twilio's WebSocket on one side, the model's on the other.

* :mod:`.session`: :class:`MediaStreamSession`, one call: reads both sockets, hands each parsed event to the call
  core (:class:`gateway.call.Call`) and carries out what comes back (sends, the end of the call, tools, control);
* :mod:`.model_link`: the model side of a call (reconnects, messages by callback, rollover), a mixin of the
  session; :mod:`.leases`: the call's concurrency leases and registry entry, another; :mod:`.records`: the call's
  record at its start and its end, a third;
* :mod:`.model_socket`: the model session's WebSocket client, which hands messages over by callback and writes
  without a task switch;
* :mod:`.services`: what a call may use (:class:`CallServices`) and the core's view of the settings.
"""

from .model_link import MODEL_DOWN_LIMIT_S
from .services import POLICY_VIOLATION, CallObserver, CallServices, call_config
from .session import MediaStreamSession

__all__ = ["MODEL_DOWN_LIMIT_S", "POLICY_VIOLATION", "CallObserver", "CallServices", "MediaStreamSession",
           "call_config"]
