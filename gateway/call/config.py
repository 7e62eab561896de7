"""The call core's configuration: :class:`CallConfig`, what a :class:`~gateway.call.core.Call` knows of its session.
Its own module (not core.py) so that the parts of a call can name it without importing the call they make up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.config.model import (  # defaults of the knobs the core shares with Settings: declared once
    AGENT_SPEAKS_FIRST, AUDIO_FORMAT, CALLER_AUDIO_BATCH_MS, GREETING_INSTRUCTIONS, INTERRUPT_RESPONSE, MARK_INTERVAL_MS,
    MODEL_RECONNECT,
)
from gateway.config.operations import CALL_BUDGET_USD
from gateway.config.serving import MAX_TOOLS_PER_CALL


@dataclass(frozen=True, slots=True)
class CallConfig:
    """What the core needs to know about the session; built from :class:`gateway.config.Settings` (by
    ``gateway.media_stream.call_config``); the defaults of the knobs it shares with them are their declarations'."""

    session_update: dict[str, Any]
    audio_format: str = AUDIO_FORMAT.default
    agent_speaks_first: bool = AGENT_SPEAKS_FIRST.default
    greeting_instructions: str = GREETING_INSTRUCTIONS.default
    interrupt_response: bool = INTERRUPT_RESPONSE.default  # the server cancels its own response on speech_started
    mark_interval_ms: int = MARK_INTERVAL_MS.default
    call_control_tools: frozenset[str] = frozenset()  # built-ins the core carries out: end_call, transfer_call
    account_sid: str = ""  # when set, a start from any other Twilio account is refused
    # Bounds (README "Security"): 0 disables one (the core's tests drive calls without them).
    max_call_duration_ms: int = 0  # the agent is asked to say goodbye, and the call ends once it is heard
    wrap_up_grace_ms: int = 20_000  # ... or this long after the limit, whatever the agent does
    media_idle_timeout_ms: int = 0  # no frame from Twilio for this long ends the call
    caller_audio_burst_ms: int = 0  # caller audio may run this far ahead of the wall clock; beyond, it is dropped
    max_tools_per_call: int = MAX_TOOLS_PER_CALL.default  # user tools running at once; more wait their turn
    # Make-before-break: a model session older than session_limit_ms - rollover_margin_ms is replaced at the next
    # quiet point by one prepared beside it (0: the limit is unknown; a session that expires is replaced after).
    session_limit_ms: int = 0
    rollover_margin_ms: int = 0
    # server_vad's silence_duration_ms: the model's speech_stopped names the end of that silence, not of the
    # speech (turn latency counts from the speech's end). 0 when unknown (semantic_vad).
    vad_silence_ms: int = 0
    # Caller audio sent to the model in batches of this many ms (0: each 20 ms frame as it comes). Fewer messages,
    # at the cost of up to this much more delay before the model hears the caller.
    caller_audio_batch_ms: int = CALLER_AUDIO_BATCH_MS.default
    model_reconnect: bool = MODEL_RECONNECT.default  # a model session lost (or refused) is replaced; off, the call ends
    wait_prompt: bytes = b""  # MODEL_WAIT_PROMPT as mu-law 8 kHz: said at an outage's start, before the comfort noise
    call_budget_usd: float = CALL_BUDGET_USD.default  # at this cost the agent wraps up (0: no budget; gateway.call.ending)
