"""Checking a replayed call against its scenario's ``[expect]`` table.

:func:`evaluate` turns a :class:`~gateway.tooling.replay.report.CallReport` (and the assistant's transcripts, when
the backend gave any) into one :class:`ExpectationResult` per expectation the scenario sets:
``passed`` is True, False, or None when it could not be checked (e.g. no transcripts, no barge-in).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .report import CallReport
from .scenario import Scenario


@dataclass(frozen=True, slots=True)
class ExpectationResult:
    name: str
    passed: bool | None  # None: skipped
    detail: str

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


def _ms(value: float) -> str:
    return f"{value:.0f} ms"


def evaluate(scenario: Scenario, report: CallReport, transcripts: Sequence[str] | None) -> list[ExpectationResult]:
    """Every expectation of ``scenario`` checked against ``report``; ``transcripts``: the assistant's, or None."""
    expect = scenario.expect
    results: list[ExpectationResult] = []
    add = results.append

    if expect.no_violations:
        counts = report.violation_counts
        detail = "none" if not counts else ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
        if report.violations:
            detail += f"; first: {report.violations[0].reason}"
        add(ExpectationResult("no_violations", not report.violations, detail))

    if expect.all_turns_played and scenario.recording is None:
        scripted = [t for t in scenario.turns if t.kind in ("speech", "dtmf")]
        played = len(report.turns)
        ok = played == len(scripted) and all(t.completed for t in report.turns)
        detail = f"{played} of {len(scripted)} turns played"
        if any(not t.completed for t in report.turns):
            detail += " (the call ended during one)"
        if scenario.turns and scenario.turns[-1].hangup:
            hung_up = report.ended_by == "hangup"
            ok = ok and hung_up
            detail += "; the hang-up turn " + ("was played" if hung_up else f"was not (ended by {report.ended_by})")
        add(ExpectationResult("all_turns_played", ok, detail))

    if expect.max_turn_latency_ms is not None:
        limit = expect.max_turn_latency_ms
        due = [t for t in report.turns if t.expects_answer and t.completed]
        if not due:
            add(ExpectationResult("max_turn_latency_ms", None, "skipped: no caller turn to answer"))
        else:
            unanswered = [t.name for t in due if t.response_ms is None]
            slow = [t for t in due if t.response_ms is not None and t.response_ms > limit]
            # Negative: the agent started answering before the caller had finished talking: it talked over
            # them. (Keys are different: an agent may rightly answer the first of several digits.)
            early = [t for t in due if t.kind == "speech" and t.response_ms is not None and t.response_ms < 0]
            latencies = [t.response_ms for t in due if t.response_ms is not None]
            detail = (f"{len(latencies)} of {len(due)} turns answered, worst {_ms(max(latencies))}"
                      if latencies else f"0 of {len(due)} turns answered")
            detail += f" (limit {_ms(limit)})"
            if unanswered:
                detail += f"; no answer heard to {', '.join(map(repr, unanswered))}"
            if slow:
                detail += "; too slow: " + ", ".join(f"{t.name!r} {_ms(t.response_ms or 0)}" for t in slow)
            if early:
                detail += "; answered before the caller finished: " + ", ".join(repr(t.name) for t in early)
            add(ExpectationResult("max_turn_latency_ms", not unanswered and not slow and not early, detail))

    if expect.max_barge_in_stop_ms is not None:
        limit = expect.max_barge_in_stop_ms
        barge_ins = [t for t in report.turns if t.barge_in]
        if not barge_ins:
            add(ExpectationResult("max_barge_in_stop_ms", None, "skipped: no barge-in in this call"))
        else:
            problems = []
            for t in barge_ins:
                if not t.agent_playing_at_start:
                    problems.append(f"{t.name!r}: the agent was not talking when the caller barged in")
                elif t.stop_ms is None:
                    problems.append(f"{t.name!r}: the agent never stopped")
                elif t.stop_ms > limit:
                    problems.append(f"{t.name!r}: stopped after {_ms(t.stop_ms)} ({t.stopped_by})")
            stops = [t.stop_ms for t in barge_ins if t.stop_ms is not None]
            detail = f"{len(barge_ins)} barge-in(s)"
            if stops:
                detail += f", slowest stop {_ms(max(stops))}"
            detail += f" (limit {_ms(limit)})" + ("; " + "; ".join(problems) if problems else "")
            add(ExpectationResult("max_barge_in_stop_ms", not problems, detail))

    heard = report.agent_heard_ms
    if expect.min_agent_heard_ms is not None:
        add(ExpectationResult("min_agent_heard_ms", heard >= expect.min_agent_heard_ms,
                              f"heard {_ms(heard)} of agent audio (at least {_ms(expect.min_agent_heard_ms)})"))
    if expect.max_agent_heard_ms is not None:
        add(ExpectationResult("max_agent_heard_ms", heard <= expect.max_agent_heard_ms,
                              f"heard {_ms(heard)} of agent audio (at most {_ms(expect.max_agent_heard_ms)})"))

    if expect.all_marks_echoed:
        sent, echoed = report.marks_received, report.marks_echoed
        add(ExpectationResult("all_marks_echoed", echoed == sent, f"{echoed} of {sent} marks echoed"))

    if expect.max_underruns is not None:
        add(ExpectationResult("max_underruns", report.underruns <= expect.max_underruns,
                              f"{report.underruns} underrun(s), {_ms(report.underrun_ms)} of holes "
                              f"(at most {expect.max_underruns})"))

    if expect.ended_by is not None:
        add(ExpectationResult("ended_by", report.ended_by == expect.ended_by,
                              f"ended by {report.ended_by} (expected {expect.ended_by})"))

    for name, phrases, must in (("agent_says", expect.agent_says, True), ("agent_never_says", expect.agent_never_says, False)):
        if not phrases:
            continue
        if transcripts is None:
            add(ExpectationResult(name, None, "skipped: no transcripts"))
            continue
        text = "\n".join(transcripts).lower()
        found = [p for p in phrases if p.lower() in text]
        if must:
            missing = [p for p in phrases if p not in found]
            detail = "all said" if not missing else f"never said: {', '.join(map(repr, missing))}"
            add(ExpectationResult(name, not missing, f"{detail} ({len(transcripts)} transcripts)"))
        else:
            detail = "none said" if not found else f"said: {', '.join(map(repr, found))}"
            add(ExpectationResult(name, not found, f"{detail} ({len(transcripts)} transcripts)"))
    return results


def all_passed(results: Sequence[ExpectationResult], *, strict: bool = False) -> bool:
    """True when no expectation failed; with ``strict``, a skipped one (nothing to check it on) fails too."""
    return not any(r.passed is False or (strict and r.passed is None) for r in results)
