"""What a call may use beyond its two sockets (:class:`CallServices`), and the core's view of the settings
(:func:`call_config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from gateway.call import END_CALL, TRANSFER_CALL, Call, CallConfig, CallEvent
from gateway.config import Settings
from gateway.realtime import events as rt
from gateway.tools.registry import ToolRegistry
from gateway.audio.wavio import wait_prompt

POLICY_VIOLATION = 1008  # the close code for a stream refused or ended for what it did (Twilio's side)
CallObserver = Callable[[Call, CallEvent], None]


@dataclass
class CallServices:
    """What a call may use beyond its two sockets; shared by all calls of the app."""

    tools: ToolRegistry = field(default_factory=lambda: ToolRegistry([]))
    store: Any = None  # gateway.store.CallStore: per-call settings of outbound calls
    records: Any = None  # gateway.store.records.CallRecords: the call's record at its start and end (or the spool)
    twilio: Any = None  # gateway.twilio.rest client: hang up and transfer live calls
    prices: Any = None  # gateway.observe.cost.Prices of the configured model (None: unknown, cost not counted)
    budget: Any = None  # gateway.observe.budget.DailyBudget: today's cost, shared by every instance
    shared: Any = None  # gateway.state.SharedState: leases (concurrency limits) and the live-call registry
    feed: Callable[[Call, CallEvent], None] | None = None  # live view of every call's events (the console)


def call_config(settings: Settings, registry: ToolRegistry | None = None) -> CallConfig:
    """The core's view of the settings: the session.update to send and the barge-in knobs."""
    if settings.turn_detection == "none":
        turn_detection: dict[str, Any] | None = None
    elif settings.turn_detection == "semantic_vad":
        turn_detection = {
            "type": "semantic_vad",
            "eagerness": settings.vad_eagerness,
            "create_response": True,
            "interrupt_response": settings.interrupt_response,
        }
    else:
        turn_detection = {
            "type": "server_vad",
            "threshold": settings.vad_threshold,
            "prefix_padding_ms": settings.vad_prefix_padding_ms,
            "silence_duration_ms": settings.vad_silence_duration_ms,
            "create_response": True,
            "interrupt_response": settings.interrupt_response,
        }
    update = rt.session_update(
        model=settings.realtime_model,
        instructions=settings.instructions,
        voice=settings.voice,
        audio_format=settings.audio_format,
        turn_detection=turn_detection,
        transcription_model=settings.transcription_model,
        tools=registry.definitions() if registry else None,
    )
    control = frozenset(name for name in (END_CALL, TRANSFER_CALL) if registry and registry.is_builtin(name))
    return CallConfig(
        session_update=update,
        audio_format=settings.audio_format,
        agent_speaks_first=settings.agent_speaks_first,
        greeting_instructions=settings.greeting_instructions,
        interrupt_response=settings.interrupt_response,
        mark_interval_ms=settings.mark_interval_ms,
        call_control_tools=control,
        account_sid=settings.twilio_account_sid,
        max_call_duration_ms=settings.max_call_duration_s * 1000,
        media_idle_timeout_ms=int(settings.media_idle_timeout_s * 1000),
        caller_audio_burst_ms=settings.caller_audio_burst_ms,
        max_tools_per_call=settings.max_tools_per_call,
        session_limit_ms=int(settings.model_session_limit() * 1000),
        rollover_margin_ms=int(settings.model_rollover_margin_s * 1000),
        vad_silence_ms=settings.vad_silence_duration_ms if settings.turn_detection == "server_vad" else 0,
        caller_audio_batch_ms=settings.caller_audio_batch_ms,
        model_reconnect=settings.model_reconnect,
        wait_prompt=wait_prompt(settings.model_wait_prompt),
        call_budget_usd=settings.call_budget_usd,
    )
