"""``gateway demo``: one sample call, offline, through the real gateway and the embedded model.

It starts the gateway under uvicorn on 127.0.0.1 (which starts the embedded Realtime server, as there
is no API key), calls it with the replay phone playing bundled speech (including one barge-in), prints
what the caller lived (latencies measured on the caller's side) and writes what the caller heard.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from gateway.call import BargeIn, Call, CallEvent, ModelReportedError
from gateway.config import Settings
from gateway.tooling.replay import CallerTurn, CallReport, load_sample, run_call
from gateway.tooling.replay.target import local_gateway


def demo_turns() -> list[CallerTurn]:
    """The sample call: the agent greets, two questions, a barge-in over the third answer, goodbye."""
    return [
        CallerTurn(load_sample("caller_hello"), after_silence_ms=600, wait_for_agent=True, name="hello"),
        CallerTurn(load_sample("caller_question"), after_silence_ms=600, name="question"),
        CallerTurn(load_sample("caller_bargein"), after_agent_heard_ms=900, name="barge-in"),
        CallerTurn(load_sample("caller_goodbye"), after_silence_ms=600, name="goodbye"),
    ]


@dataclass
class GatewaySide:
    """What the gateway reported during the call (collected by the app's call observer)."""

    barge_ins: list[BargeIn] = field(default_factory=list)
    model_errors: list[ModelReportedError] = field(default_factory=list)

    def observe(self, call: Call, event: CallEvent) -> None:
        if isinstance(event, BargeIn):
            self.barge_ins.append(event)
        elif isinstance(event, ModelReportedError):
            self.model_errors.append(event)

    @property
    def truncate_errors(self) -> int:
        return sum(1 for e in self.model_errors if "truncat" in (e.code + e.message).lower() or "shorter" in e.message)


async def run_demo_call(settings: Settings, turns: list[CallerTurn]) -> tuple[CallReport, GatewaySide]:
    """Serve the gateway on a free local port, make one call to it, return both sides' records."""
    gateway_side = GatewaySide()
    async with local_gateway(settings=settings, observer=gateway_side.observe) as target:
        report = await run_call(target.ws_url, turns, custom_parameters={"CallSid": "CAdemo", "From": "+15550100"},
                                timeout_s=90)
    return report, gateway_side


def format_report(report: CallReport, gateway_side: GatewaySide) -> str:
    lines = ["", "Demo call (times measured on the caller's side of the line)"]
    for turn in report.turns:
        if turn.barge_in:
            stop = f"{turn.stop_ms:.0f} ms" if turn.stop_ms is not None else "never"
            lines.append(f"  barge-in '{turn.name}': caller started -> agent audio stopped: {stop}"
                         f" (talk-over {turn.talk_over_ms:.0f} ms)")
        latency = f"{turn.response_ms:.0f} ms" if turn.response_ms is not None else "no answer heard"
        lines.append(f"  turn '{turn.name}': caller stopped -> first agent audio heard: {latency}")
    for barge_in in gateway_side.barge_ins:
        lines.append(f"  gateway truncated {barge_in.item_id} at {barge_in.heard_ms} ms of {barge_in.received_ms} ms received")
    lines.append(f"  truncate errors: {gateway_side.truncate_errors}")
    lines.append(f"  model errors: {len(gateway_side.model_errors)}")
    lines.append(f"  marks sent {report.marks_received}, echoed {report.marks_echoed}; protocol violations: {len(report.violations)}")
    return "\n".join(lines)


async def run_demo(settings: Settings, *, output: str = "demo-heard.wav", audio_format: str | None = None) -> int:
    settings = replace(settings, agent_speaks_first=True, audio_format=audio_format or settings.audio_format)
    report, gateway_side = await run_demo_call(settings, demo_turns())
    report.write_heard_wav(output)
    print(format_report(report, gateway_side))
    print(f"  what the caller heard: {output}")
    summary = {"turns": [t.response_ms for t in report.turns], "violations": len(report.violations),
               "truncate_errors": gateway_side.truncate_errors}
    print("  " + json.dumps(summary))
    failed = gateway_side.truncate_errors or report.violations or any(t.response_ms is None for t in report.turns)
    return 1 if failed else 0
