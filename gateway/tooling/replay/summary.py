"""The terminal summary of one replayed call: the figures a caller lived, then the expectations, then a verdict.

``format_summary(report, results)`` returns plain text (ANSI colors only when asked, or when stdout is a
terminal and ``NO_COLOR`` is unset). ``results`` are any objects with ``.name``, ``.passed`` (True, False,
or None when the expectation was skipped, e.g. no transcript to check) and ``.detail``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, Protocol

from .report import CallReport


class ExpectationResult(Protocol):
    """What the summary reads of a result (read-only: expectations.ExpectationResult is frozen)."""

    @property
    def name(self) -> str: ...

    @property
    def passed(self) -> bool | None: ...  # None: skipped

    @property
    def detail(self) -> str: ...


_GREEN, _RED, _YELLOW, _BOLD, _DIM, _RESET = "\033[32m", "\033[31m", "\033[33m", "\033[1m", "\033[2m", "\033[0m"


def use_color(stream: Any = None) -> bool:
    """Colors on a terminal only, and never with ``NO_COLOR`` set (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _s(ms: float) -> str:
    return f"{ms / 1000.0:.1f} s"


def _silence(report: CallReport) -> str:
    """The longest silence where the caller expected agent audio, and where it was."""
    silence = report.longest_silence
    if silence is None:
        return "longest silence: none (the caller never waited for agent audio)"
    turn = f"'{silence.after_turn}'" if silence.after_turn else ""
    if silence.kind == "inside_answer":
        where = f"a hole inside the answer to {turn}" if turn else "a hole inside the greeting"
    elif silence.answered:
        where = f"waiting for the answer to {turn}"
    else:
        where = f"after {turn}, no answer came"
    return f"longest silence: {silence.duration_ms:.0f} ms ({where}, from {_s(silence.start_ms)})"


def format_summary(report: CallReport, results: Iterable[ExpectationResult] | None = None,
                   *, color: bool | None = None) -> str:
    """The summary of ``report`` (and of the expectation ``results``, if any) as text, one fact per line."""
    paint = use_color() if color is None else color

    def c(text: str, code: str) -> str:
        return f"{code}{text}{_RESET}" if paint else text

    lines: list[str] = []
    lines.append(c(f"call {report.call_sid or '?'}", _BOLD)
                 + f"  {_s(report.duration_ms)}, ended by {report.ended_by}")

    # Per turn.
    if report.turns:
        width = max(12, *(len(t.name) + (6 if not t.completed else 0) for t in report.turns))
        lines.append(f"  {'turn':<{width}}  {'latency':>9}  {'barge-in stop':>22}  {'talk-over':>9}")
        for t in report.turns:
            name = t.name + ("" if t.completed else " (cut)")
            latency = _ms(t.response_ms) if t.response_ms is not None else "no answer"
            if not t.barge_in:
                stop = "-"
            elif t.stop_ms is not None:
                stop = f"{t.stop_ms:.0f} ms ({t.stopped_by})"
            elif t.agent_playing_at_start:
                stop = "never stopped"
            else:
                stop = "agent was silent"
            lines.append(f"  {name:<{width}}  {latency:>9}  {stop:>22}  {_ms(t.talk_over_ms):>9}")
    else:
        lines.append("  no caller turns")

    # The line's figures.
    pending = report.marks_received - report.marks_echoed
    marks = f"marks: {report.marks_received} sent, {report.marks_echoed} echoed"
    if pending:
        marks += c(f", {pending} never echoed", _YELLOW)
    lines.append("  " + marks)
    counts = report.violation_counts
    if counts:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        lines.append("  " + c(f"violations: {len(report.violations)} ({kinds})", _RED))
    else:
        lines.append("  violations: none")
    lines.append(f"  underruns: {report.underruns}" + (f" ({report.underrun_ms:.0f} ms of holes)" if report.underruns else ""))
    lines.append("  " + _silence(report))
    heard = f"  agent audio heard: {_s(report.agent_audio_played_ms)}"
    if report.agent_audio_cleared_ms:
        heard += f" ({_s(report.agent_audio_received_ms)} received, {_s(report.agent_audio_cleared_ms)} cleared)"
    lines.append(heard)
    if report.dtmf_sent:
        lines.append("  dtmf sent: " + "".join(d for _, d in report.dtmf_sent))
    harness = f"  harness: {report.frames_sent} frames sent"
    if report.frames_dropped:
        harness += f", {report.frames_dropped} dropped (packet loss)"
    harness += f", max frame lag {report.max_frame_lag_ms:.0f} ms"
    if report.reader_paused_ms:
        harness += f", socket left unread {_s(report.reader_paused_ms)} (up to {report.max_unread_bytes} bytes waiting)"
    lines.append(c(harness, _DIM))

    # Expectations and the verdict.
    checked = list(results or [])
    if checked:
        lines.append("expectations")
        width = max(len(r.name) for r in checked)
        for r in checked:
            if r.passed is True:
                tag = c("PASS", _GREEN)
            elif r.passed is False:
                tag = c("FAIL", _RED + _BOLD)
            else:
                tag = c("SKIP", _YELLOW)
            detail = f"  {r.detail}" if r.detail else ""
            lines.append(f"  {tag}  {r.name:<{width}}{detail}")
        passed = sum(1 for r in checked if r.passed is True)
        failed = sum(1 for r in checked if r.passed is False)
        skipped = len(checked) - passed - failed
        verdict = c("FAIL", _RED + _BOLD) if failed else c("PASS", _GREEN + _BOLD)
        lines.append(f"result: {verdict} ({passed} passed, {failed} failed, {skipped} skipped)")
    else:
        lines.append("result: no expectations checked")
    return "\n".join(lines)


__all__ = ["ExpectationResult", "format_summary", "use_color"]
