"""An embedded OpenAI-Realtime-compatible server (GA protocol): the offline model backend and test double.

    async with LocalRealtimeServer(agent="echo", speed=8.0) as server:
        ...  # point the gateway at server.url

Modules: ``server`` (WebSocket listener), ``session`` (per-connection state machine), ``vad``
(webrtcvad turn detection), ``agents`` (what the model says), ``config`` / ``items`` (session
config and conversation items), ``schema`` (strict check against the official ``openai`` models).
"""

from .server import LocalRealtimeServer, make_agent, run_local_realtime
from .session import RealtimeSession

__all__ = ["LocalRealtimeServer", "RealtimeSession", "make_agent", "run_local_realtime"]
