"""One call's account: fed the core's events as they happen, it keeps the metrics current and gives the call's
record at its end (turns, tools, reconnects and rollovers, usage and cost).

A turn is one agent response that reached the caller: the caller's words before it (their transcript, when
transcription is on), the agent's words as heard (cut at a barge-in in proportion to the audio heard), the turn
latency (the caller's end of speech to the first agent audio sent) and the model's time to first audio.
Everything kept is bounded, for calls of many hours.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from gateway.call import (
    AgentAudioStarted, BargeIn, CallEvent, CallStarted, ModelRolledOver, ModelSessionLost, ResponseFinished,
    ToolCalled, TranscriptReceived,
)
from gateway.observe import metrics
from gateway.observe.cost import KINDS, Prices, Usage
from gateway.observe.logs import mask_number
from gateway.observe.tracing import CallTrace
from gateway.store.model import tool_text

MAX_RECORD_TURNS = 500
MAX_RECORD_TOOLS = 200
MAX_TEXT_CHARS = 4000
MAX_SEEN_RESPONSES = 256
MAX_STASHED_TEXTS = 16
MAX_SESSION_CHANGES = 100

# Who ended a call, from the reason the shell ended it with (gateway.media_stream): the first match wins.
_ENDED_BY = (
    ("caller hung up", "caller"), ("twilio socket closed", "caller"), ("the agent ended", "agent"),
    ("transferred", "transfer"), ("time limit", "time_limit"), ("budget", "budget"),
    ("api", "api"), ("max_calls", "refused"), ("drain", "drain"), ("no start", "refused"), ("credential", "refused"), ("foreign", "refused"),
    ("state unavailable", "refused"),
)
_COMPLETED = frozenset({"caller", "agent", "transfer", "time_limit", "budget", "api"})


def ended_by(reason: str, refused: bool = False) -> str:
    if refused:
        return "refused"
    lowered = reason.lower()
    return next((who for text, who in _ENDED_BY if text in lowered), "error")


@dataclass
class _Turn:
    at_ms: float
    response_id: str
    item_id: str
    caller_item_id: str
    latency_ms: float | None
    ttfa_ms: float | None
    caller: str = ""
    agent: str = ""
    barged_in: bool = False
    heard_ms: int | None = None
    received_ms: int | None = None

    def as_dict(self, started_ms: float) -> dict[str, Any]:
        agent = self.agent
        if self.barged_in and self.received_ms:
            agent = agent[: round(len(agent) * min(1.0, (self.heard_ms or 0) / self.received_ms))]
        return {
            "at_s": round((self.at_ms - started_ms) / 1000, 3),
            "caller": self.caller,
            "agent": agent,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms),
            "model_ttfa_ms": None if self.ttfa_ms is None else round(self.ttfa_ms),
            "barged_in": self.barged_in,
            "heard_ms": self.heard_ms,
        }


@dataclass
class CallLedger:
    """Created when a media stream opens; ``direction`` is ``inbound`` or ``outbound``."""

    direction: str
    model: str
    prices: Prices | None
    full_numbers: bool = False
    call_sid: str = ""
    stream_sid: str = ""
    from_number: str = ""
    to_number: str = ""
    started_ms: float | None = None
    started_at: float = field(default_factory=time.time)
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    reconnects: list[dict[str, Any]] = field(default_factory=list)  # {cause, t_ms}
    rollovers: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)
    _turns: list[_Turn] = field(default_factory=list)
    _turns_dropped: int = 0
    _by_item: dict[str, _Turn] = field(default_factory=dict)
    _stashed: OrderedDict[str, str] = field(default_factory=OrderedDict)
    _seen_responses: OrderedDict[str, None] = field(default_factory=OrderedDict)
    _marks_pending: int = 0
    trace: CallTrace = field(default_factory=CallTrace)

    def __post_init__(self) -> None:
        metrics.CALLS_ACTIVE.inc()

    # ---- events -------------------------------------------------------------------------------

    def event(self, event: CallEvent, now_ms: float) -> float:
        """Take one core event; returns the cost (USD) it added, for the budgets."""
        if isinstance(event, CallStarted):
            self.call_sid, self.stream_sid, self.started_ms = event.call_sid, event.stream_sid, now_ms
            self.started_at = time.time()
            self.from_number = event.custom_parameters.get("From", "")[:32]
            self.to_number = event.custom_parameters.get("To", "")[:32]
            self.trace.started(event.call_sid, event.stream_sid, self.direction, now_ms)
        elif isinstance(event, AgentAudioStarted):
            self._turn_started(event, now_ms)
        elif isinstance(event, TranscriptReceived):
            self._transcript(event)
        elif isinstance(event, BargeIn):
            metrics.BARGE_INS.inc()
            metrics.BARGE_IN_UNHEARD.observe(max(0, event.received_ms - event.heard_ms) / 1000)
            turn = self._by_item.get(event.item_id)
            if turn is not None:
                turn.barged_in, turn.heard_ms, turn.received_ms = True, event.heard_ms, event.received_ms
            self.trace.event("barge_in", now_ms, {"item.heard_ms": event.heard_ms, "item.received_ms": event.received_ms})
        elif isinstance(event, ResponseFinished):
            return self._usage(event)
        elif isinstance(event, ModelSessionLost):
            cause = metrics.label("reconnects", "cause", metrics.cause(event.reason))
            metrics.MODEL_RECONNECTS.labels(cause).inc()
            if len(self.reconnects) < MAX_SESSION_CHANGES:
                self.reconnects.append({"cause": cause, "t_ms": self._t_ms(now_ms)})
            self.trace.event("model_reconnect", now_ms, {"cause": cause})
        elif isinstance(event, ModelRolledOver):
            if len(self.rollovers) < MAX_SESSION_CHANGES:
                self.rollovers.append({"cause": "session limit", "t_ms": self._t_ms(now_ms)})
            metrics.MODEL_ROLLOVERS.labels("session_limit").inc()
            self.trace.event("model_rollover", now_ms, {"session_age_ms": event.session_age_ms})
        elif isinstance(event, ToolCalled):
            pass  # counted when it finishes (tool_finished), with its outcome
        return 0.0

    def _t_ms(self, now_ms: float) -> int | None:
        return round(now_ms - self.started_ms) if self.started_ms is not None else None

    def _turn_started(self, event: AgentAudioStarted, now_ms: float) -> None:
        if event.turn_latency_ms is not None:
            metrics.TURN_LATENCY.observe(event.turn_latency_ms / 1000)
        if event.model_ttfa_ms is not None:
            metrics.MODEL_TTFA.observe(event.model_ttfa_ms / 1000)
        if self.trace.on:
            began = now_ms - max(event.turn_latency_ms or 0.0, event.model_ttfa_ms or 0.0)
            self.trace.turn(began, now_ms, {"turn.latency_ms": event.turn_latency_ms,
                                            "model.time_to_first_audio_ms": event.model_ttfa_ms,
                                            "response.id": event.response_id})
        if len(self._turns) >= MAX_RECORD_TURNS:
            self._turns_dropped += 1
            return
        turn = _Turn(now_ms, event.response_id, event.item_id, event.caller_item_id, event.turn_latency_ms,
                     event.model_ttfa_ms)
        turn.caller = self._stashed.pop(event.caller_item_id, "") if event.caller_item_id else ""
        self._turns.append(turn)
        self._by_item[event.item_id] = turn
        if event.caller_item_id:
            self._by_item[event.caller_item_id] = turn
        while len(self._by_item) > 2 * MAX_STASHED_TEXTS:
            self._by_item.pop(next(iter(self._by_item)))

    def _transcript(self, event: TranscriptReceived) -> None:
        text = event.text[:MAX_TEXT_CHARS]
        turn = self._by_item.get(event.item_id)
        if event.role == "assistant":
            if turn is not None and turn.item_id == event.item_id:
                turn.agent = text
            return
        if turn is not None and turn.caller_item_id == event.item_id:
            turn.caller = text
        else:  # the caller's words arrive before the agent answers them: kept until the turn begins
            self._stashed[event.item_id] = text
            while len(self._stashed) > MAX_STASHED_TEXTS:
                self._stashed.popitem(last=False)

    def _usage(self, event: ResponseFinished) -> float:
        if event.response_id in self._seen_responses:
            return 0.0  # never counted twice
        self._seen_responses[event.response_id] = None
        while len(self._seen_responses) > MAX_SEEN_RESPONSES:
            self._seen_responses.popitem(last=False)
        usage = Usage.from_response(event.usage)
        self.usage.add(usage)
        cost = usage.cost_usd(self.prices)
        self.cost_usd += cost
        model = metrics.label("tokens", "model", self.model)
        for kind in KINDS:
            count = getattr(usage, kind)
            if count:
                metrics.TOKENS.labels(model, kind).inc(count)
        if cost:
            metrics.COST.labels(model).inc(cost)
        return cost

    def tool_finished(self, name: str, outcome: str, seconds: float, arguments: str | None = None,
                      result: str | None = None) -> None:
        """A tool run ended; its arguments and result are kept (cut, see :func:`tool_text`) for the call's page."""
        now_ms = time.monotonic() * 1000
        self.trace.tool(name, now_ms - seconds * 1000, now_ms, outcome)
        tool = metrics.label("tools", "tool", name)
        metrics.TOOL_CALLS.labels(tool, outcome).inc()
        metrics.TOOL_DURATION.labels(tool).observe(seconds)
        if len(self.tools) < MAX_RECORD_TOOLS:
            self.tools.append({"name": name[:64], "outcome": outcome, "duration_ms": round(seconds * 1000),
                               "t_ms": self._t_ms(now_ms - seconds * 1000),
                               "arguments": tool_text(arguments), "result": tool_text(result)})

    def marks_pending(self, count: int) -> None:
        if count != self._marks_pending:
            metrics.MARKS_PENDING.inc(count - self._marks_pending)
            self._marks_pending = count

    # ---- the end --------------------------------------------------------------------------------

    def finish(self, reason: str, now_ms: float, *, refused: bool = False) -> dict[str, Any]:
        """The call is over: the metrics are closed and its record returned."""
        who = ended_by(reason, refused)
        outcome = "refused" if who == "refused" else "completed" if who in _COMPLETED else "failed"
        duration_s = (now_ms - self.started_ms) / 1000 if self.started_ms is not None else 0.0
        metrics.CALLS_ACTIVE.dec()
        self.marks_pending(0)
        metrics.CALLS.labels(self.direction, outcome, who).inc()
        if self.started_ms is not None:
            metrics.CALL_DURATION.observe(duration_s)
            metrics.CALL_COST.observe(self.cost_usd)
        started = self.started_ms if self.started_ms is not None else now_ms
        self.trace.finished(now_ms, {"call.outcome": outcome, "call.ended_by": who, "call.cost_usd": self.cost_usd,
                                     "call.turns": len(self._turns)})
        return {
            "call_sid": self.call_sid,
            "stream_sid": self.stream_sid,
            "direction": self.direction,
            "from": mask_number(self.from_number, self.full_numbers),
            "to": mask_number(self.to_number, self.full_numbers),
            "started_at": self.started_at,
            "ended_at": self.started_at + duration_s,
            "duration_s": round(duration_s, 3),
            "outcome": outcome,
            "ended_by": who,
            "end_reason": reason[:200],
            "turns": [turn.as_dict(started) for turn in self._turns],
            "turns_not_recorded": self._turns_dropped,
            "tools": list(self.tools),
            "reconnects": list(self.reconnects),
            "rollovers": list(self.rollovers),
            "model": self.model,
            "usage": self.usage.as_dict(),
            "cost_usd": round(self.cost_usd, 6),
        }
