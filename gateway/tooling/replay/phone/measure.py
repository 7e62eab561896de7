"""The report's measurements: what the caller lived, computed from the phone's timeline after (or during) a call.

Inputs are the caller's spoken turns (:mod:`.script`), the playback runs and the per-millisecond "heard" flags
(:mod:`gateway.twilio.playback`), and the key presses sent. Every figure is from the caller's side only; see
:class:`~gateway.tooling.replay.report.TurnReport` and :class:`~gateway.tooling.replay.report.Silence` for the definitions.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.twilio.playback import PlaybackRun

from ..report import Silence, TurnReport
from .script import _Turn, speech_bounds_ms


def _first(heard_ms: bytearray, since_ms: float, until_ms: float | None = None) -> int | None:
    start = max(0, int(since_ms))
    end = len(heard_ms) if until_ms is None else max(start, min(len(heard_ms), int(until_ms)))
    i = heard_ms.find(1, start, end)
    return None if i < 0 else i


def turn_reports(spoken: Sequence[_Turn], runs: Sequence[PlaybackRun], heard_ms: bytearray,
                 underrun_gap_ms: float) -> list[TurnReport]:
    """One :class:`TurnReport` per spoken turn (pauses left out): latency, barge-in stop, talk-over."""
    spoken = [s for s in spoken if s.turn.kind != "pause"]
    turns: list[TurnReport] = []
    for i, t in enumerate(spoken):
        next_start = spoken[i + 1].start_ms if i + 1 < len(spoken) else None
        lead, trail = speech_bounds_ms(t.turn.audio) if t.turn.audio else (0.0, 0.0)
        speech_start = t.start_ms + lead
        speech_end = max(speech_start, min(t.end_ms, t.start_ms + t.turn.duration_ms - trail))
        tr = TurnReport(
            index=t.index,
            name=t.turn.name or f"turn{t.index}",
            barge_in=t.turn.barge_in,
            kind=t.turn.kind,
            expects_answer=t.turn.expects_answer,
            start_ms=speech_start,
            end_ms=speech_end,
            completed=t.completed,
        )
        # The answer: the first agent audio heard from a playback that started after the speech start.
        for run in runs:
            if run.start_ms < t.start_ms:
                continue
            if next_start is not None and run.start_ms >= next_start:
                break
            end = run.end_ms if run.end_ms is not None else len(heard_ms)
            if next_start is not None:
                end = min(end, next_start)
            onset = _first(heard_ms, run.start_ms, end + 1)
            if onset is not None:
                tr.response_ms = onset - speech_end
                break
        tr.talk_over_ms = float(heard_ms.count(1, int(speech_start), int(speech_end)))
        if t.turn.barge_in:
            for k, run in enumerate(runs):
                if run.start_ms <= speech_start and (run.end_ms is None or run.end_ms > speech_start):
                    tr.agent_playing_at_start = True
                    # A drain refilled soon, while the caller still talks, is the same answer going on:
                    # the agent stops being heard only where its last such stretch ends.
                    last = run
                    for later in runs[k + 1:]:
                        if (last.end_ms is None or later.start_ms >= speech_end
                                or later.start_ms - last.end_ms >= underrun_gap_ms):
                            break
                        last = later
                    tr.stopped_by = "never" if last.end_ms is None else last.ended_by
                    tr.stop_ms = None if last.end_ms is None else last.end_ms - speech_start
                    break
        turns.append(tr)
    return turns


def underruns(runs: Sequence[PlaybackRun], caller_starts: Sequence[float], underrun_gap_ms: float) -> tuple[int, float]:
    """(count, total ms) of holes inside an answer: a drain refilled within ``underrun_gap_ms`` with no caller
    turn or key press (``caller_starts``) between."""
    count, total = 0, 0.0
    for before, after in zip(runs, runs[1:]):
        if before.ended_by != "drained" or before.end_ms is None:
            continue
        gap = after.start_ms - before.end_ms
        if gap < underrun_gap_ms and not any(before.end_ms <= s <= after.start_ms for s in caller_starts):
            count += 1
            total += gap
    return count, total


def silences(turns: Sequence[TurnReport], runs: Sequence[PlaybackRun], heard_ms: bytearray,
             keys_ms: Sequence[float], end_ms: float) -> list[Silence]:
    """Every stretch where the caller expected agent audio and heard none, in time order (see :class:`Silence`).

    ``turns`` are the caller's turns as reported (speech start and end found in the audio), ``keys_ms`` the times
    of the key presses sent, ``end_ms`` the end of the call."""
    acts = sorted([t.start_ms for t in turns] + list(keys_ms))

    def next_act(after_ms: float) -> float:
        """The caller's next action strictly after ``after_ms`` (or the end of the call)."""
        return min((a for a in acts if a > after_ms), default=end_ms)

    def caller_acted(lo: float, hi: float) -> bool:
        """Whether the caller spoke or pressed a key at any point in [lo, hi]."""
        return any(t.start_ms <= hi and t.end_ms >= lo for t in turns) or any(lo <= k <= hi for k in keys_ms)

    def turn_before(at_ms: float) -> str:
        return next((t.name for t in reversed(turns) if t.start_ms <= at_ms), "")

    out: list[Silence] = []
    # Waiting for an answer: the caller stopped speaking -> the first agent audio heard.
    for t in turns:
        if not t.expects_answer:
            continue
        limit = min(next_act(t.end_ms), end_ms)
        if limit <= t.end_ms:
            continue
        onset = _first(heard_ms, t.end_ms, limit)
        if onset is not None:
            if onset > t.end_ms:
                out.append(Silence(t.end_ms, onset - t.end_ms, "answer", t.name))
        else:
            out.append(Silence(t.end_ms, limit - t.end_ms, "answer", t.name, answered=False))
    # Holes inside an answer: a drained playback after which the agent was heard again, the caller silent all along.
    covered = -1.0
    for run in runs:
        if run.ended_by != "drained" or run.end_ms is None or run.end_ms < covered:
            continue
        last = heard_ms.rfind(1, max(0, int(run.start_ms)), max(0, min(len(heard_ms), int(run.end_ms) + 1)))
        if last < 0:
            continue  # nothing heard in it: part of a silence that began before it
        start = float(last + 1)
        onset = _first(heard_ms, run.end_ms, end_ms)
        if onset is None or onset <= start or caller_acted(run.start_ms, onset):
            continue
        covered = float(onset)
        out.append(Silence(start, onset - start, "inside_answer", turn_before(start)))
    out.sort(key=lambda s: s.start_ms)
    return out


__all__ = ["silences", "turn_reports", "underruns"]
