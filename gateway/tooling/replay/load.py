"""Load mode: many replayed calls at once, their measurements aggregated, and the gateway's forwarding figures.

:func:`run_load` starts ``calls`` callers (``run_one(i)`` each makes one call and returns its
:class:`CallReport`) spread evenly over ``ramp_s``, shows a one-line progress bar on stderr, and returns a
:class:`LoadReport`: p50/p95/p99/max of every measurement across calls (turn latency, barge-in stop,
talk-over, underruns, violations, marks never echoed, and the harness's own frame lag, which shows the
phones kept their 20 ms schedule, so the other figures are the gateway's and not the harness's).

:class:`ForwardingProbe` measures the caller -> model direction frame by frame where the backend is the
embedded server (``gateway.local.LocalRealtimeServer``): attach it with ``probe.attach(server)`` (it sets
``server.probe``) and the server reports, for every ``input_audio_buffer.append`` it reads, the monotonic
time the message came off the socket and the session's input-audio clock after it (ms of caller audio
received so far). That needs no hook in the phone, and gives, per frame:

* **inter-arrival** (ms): time since the previous append. The phone sends one 20 ms frame every 20 ms,
  and the gateway forwards each as one append, so this should sit at 20 ms; its spread is the jitter the
  gateway (and the event loop it shares) adds.
* **inter-arrival deviation** (ms): ``|inter-arrival - audio in the append|``, the instantaneous jitter
  of RFC 3550 (a frame carrying 40 ms after a lost packet is expected 40 ms after the previous one).
* **delay variation** (ms): how much later than the session's fastest frame each frame got through
  phone -> gateway -> model. The phone sends the frame ending at audio position ``p`` at stream time
  ``p`` (Twilio's schedule), so ``arrival - p`` is the one-way delay plus a per-session constant; minus
  its minimum over the session it is the one-way delay above the best case (packet delay variation,
  RFC 5481). It includes the phone's own send lag, bounded by ``max_frame_lag_ms`` in the same report,
  and caller audio the gateway held while it connected to the model (the first frames of a call).

The absolute one-way delay is not measured: it would need the phone's send time of each frame, which
``run_call`` does not expose. The model -> phone direction is covered by the caller-side measurements.

The probe is bounded: per live session a fixed numpy buffer of ``frames_per_session`` rows (reservoir
sampling beyond it, so percentiles stay unbiased), and closed sessions are folded into fixed reservoirs
of ``max_samples`` values per figure.
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from .report import CallReport

FRAME_MS = 20.0


# ---------------------------------------------------------------------- percentiles


@dataclass(slots=True)
class Percentiles:
    """p50/p95/p99/max of ``count`` values (linear interpolation between order statistics)."""

    count: int
    p50: float
    p95: float
    p99: float
    max: float
    mean: float

    @classmethod
    def of(cls, values: Iterable[float] | np.ndarray) -> Percentiles | None:
        data = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=np.float64)
        data = data[np.isfinite(data)]
        if data.size == 0:
            return None
        p50, p95, p99 = np.percentile(data, [50, 95, 99])
        return cls(int(data.size), float(p50), float(p95), float(p99), float(data.max()), float(data.mean()))

    def to_dict(self) -> dict[str, float | int]:
        return {
            "count": self.count,
            "p50": round(self.p50, 3),
            "p95": round(self.p95, 3),
            "p99": round(self.p99, 3),
            "max": round(self.max, 3),
            "mean": round(self.mean, 3),
        }


# ---------------------------------------------------------------------- the forwarding probe


class _Reservoir:
    """At most ``size`` rows of ``width`` floats; a uniform sample (algorithm R) once more were offered."""

    __slots__ = ("rows", "filled", "seen", "_rng")

    def __init__(self, size: int, width: int, rng: random.Random) -> None:
        self.rows = np.empty((size, width), dtype=np.float64)
        self.filled = 0
        self.seen = 0
        self._rng = rng

    def offer(self, *row: float) -> None:
        self.seen += 1
        if self.filled < len(self.rows):
            self.rows[self.filled] = row
            self.filled += 1
            return
        j = self._rng.randrange(self.seen)
        if j < len(self.rows):
            self.rows[j] = row

    def offer_many(self, block: np.ndarray) -> None:
        for row in block:  # only when a session closes: not on the per-frame path
            self.offer(*row)

    @property
    def data(self) -> np.ndarray:
        return self.rows[: self.filled]


class _Track:
    """One live session: the previous append, the minimum offset, and a sample of its frames."""

    __slots__ = ("frames", "last_arrival", "last_pos", "min_offset", "sample")

    # Columns of a sample row.
    OFFSET, INTERARRIVAL, STEP = 0, 1, 2

    def __init__(self, size: int, rng: random.Random) -> None:
        self.frames = 0
        self.last_arrival = math.nan
        self.last_pos = 0.0
        self.min_offset = math.inf
        self.sample = _Reservoir(size, 3, rng)

    def rows(self) -> np.ndarray:
        """(delay variation, inter-arrival, inter-arrival deviation) per sampled frame."""
        data = self.sample.data
        out = np.empty((len(data), 3))
        out[:, 0] = data[:, self.OFFSET] - self.min_offset
        out[:, 1] = data[:, self.INTERARRIVAL]
        out[:, 2] = np.abs(data[:, self.INTERARRIVAL] - data[:, self.STEP])
        return out


@dataclass(slots=True)
class ForwardingFigures:
    """The probe's figures (see the module docstring); each percentile is None when there was nothing to measure."""

    sessions: int
    frames: int
    frames_sampled: int
    interarrival_ms: Percentiles | None
    deviation_ms: Percentiles | None
    delay_variation_ms: Percentiles | None
    late_frame_pct: float  # frames whose delay variation exceeds one 20 ms frame, in percent of the sample

    def to_dict(self) -> dict[str, Any]:
        def p(value: Percentiles | None) -> dict[str, float | int] | None:
            return None if value is None else value.to_dict()

        return {
            "sessions": self.sessions,
            "frames": self.frames,
            "frames_sampled": self.frames_sampled,
            "interarrival_ms": p(self.interarrival_ms),
            "deviation_ms": p(self.deviation_ms),
            "delay_variation_ms": p(self.delay_variation_ms),
            "late_frame_pct": round(self.late_frame_pct, 3),
        }


class ForwardingProbe:
    """Per-frame arrival times of caller audio at the embedded Realtime server (see the module docstring).

    ``probe.attach(server)``; ``probe.figures()`` at any time (live and closed sessions);
    ``probe.reset()`` forgets everything. Memory is bounded by ``frames_per_session`` rows per live
    session (at most ``max_live_sessions`` of them) and ``max_samples`` rows for all closed sessions.
    """

    def __init__(
        self,
        *,
        frames_per_session: int = 3000,
        max_samples: int = 200_000,
        max_live_sessions: int = 2000,
        seed: int = 0,
    ) -> None:
        self.frames_per_session = frames_per_session
        self.max_samples = max_samples
        self.max_live_sessions = max_live_sessions
        self._rng = random.Random(seed)
        self.reset()

    def reset(self) -> None:
        self._live: dict[str, _Track] = {}
        self._closed = _Reservoir(self.max_samples, 3, self._rng)
        self._closed_sessions = 0
        self._closed_frames = 0

    def attach(self, server: Any) -> ForwardingProbe:
        """Start observing ``server`` (a ``LocalRealtimeServer``)."""
        server.probe = self
        return self

    def detach(self, server: Any) -> None:
        if getattr(server, "probe", None) is self:
            server.probe = None

    # ---- called by the server, per frame

    def audio_appended(self, session_id: str, arrived_ms: float, audio_end_ms: float) -> None:
        track = self._live.get(session_id)
        if track is None:
            if len(self._live) >= self.max_live_sessions:
                return
            track = self._live[session_id] = _Track(self.frames_per_session, self._rng)
        offset = arrived_ms - audio_end_ms
        if offset < track.min_offset:
            track.min_offset = offset
        track.sample.offer(offset, arrived_ms - track.last_arrival, audio_end_ms - track.last_pos)
        track.frames += 1
        track.last_arrival = arrived_ms
        track.last_pos = audio_end_ms

    def session_closed(self, session_id: str) -> None:
        track = self._live.pop(session_id, None)
        if track is None:
            return
        self._closed.offer_many(track.rows())
        self._closed_sessions += 1
        self._closed_frames += track.frames

    # ---- figures

    def figures(self) -> ForwardingFigures:
        blocks = [self._closed.data] + [track.rows() for track in self._live.values()]
        rows = np.concatenate(blocks) if blocks else np.empty((0, 3))
        delay = rows[:, 0]
        return ForwardingFigures(
            sessions=self._closed_sessions + len(self._live),
            frames=self._closed_frames + sum(t.frames for t in self._live.values()),
            frames_sampled=len(rows),
            interarrival_ms=Percentiles.of(rows[:, 1]),  # NaN for each session's first frame: dropped
            deviation_ms=Percentiles.of(rows[:, 2]),
            delay_variation_ms=Percentiles.of(delay),
            late_frame_pct=float(np.mean(delay > FRAME_MS) * 100.0) if len(delay) else 0.0,
        )


# ---------------------------------------------------------------------- the load report

# (key, label, per): "turn" figures have one value per turn of every call, "call" figures one per call.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("turn_latency_ms", "turn latency (ms)", "turn"),
    ("barge_in_stop_ms", "barge-in stop (ms)", "turn"),
    ("talk_over_ms", "talk-over (ms)", "turn"),
    ("unanswered_turns", "turns unanswered / call", "call"),
    ("underruns", "underruns / call", "call"),
    ("underrun_ms", "underrun holes (ms) / call", "call"),
    ("violations", "violations / call", "call"),
    ("marks_not_echoed", "marks not echoed / call", "call"),
    ("agent_heard_ms", "agent audio heard (ms) / call", "call"),
    ("call_duration_ms", "call duration (ms)", "call"),
    ("max_frame_lag_ms", "harness frame lag (ms), max / call", "call"),
)


def _values(reports: list[CallReport]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {key: [] for key, _, _ in METRICS}
    for r in reports:
        out["turn_latency_ms"].extend(r.response_ms)
        out["barge_in_stop_ms"].extend(r.barge_in_stop_ms)
        out["talk_over_ms"].extend(t.talk_over_ms for t in r.turns)
        out["unanswered_turns"].append(sum(1 for t in r.turns if t.response_ms is None))
        out["underruns"].append(r.underruns)
        out["underrun_ms"].append(r.underrun_ms)
        out["violations"].append(len(r.violations))
        out["marks_not_echoed"].append(r.marks_received - r.marks_echoed)
        out["agent_heard_ms"].append(r.agent_audio_played_ms)
        out["call_duration_ms"].append(r.duration_ms)
        out["max_frame_lag_ms"].append(r.max_frame_lag_ms)
    return out


@dataclass(slots=True)
class CallFailure:
    """A call whose ``run_one`` raised."""

    index: int
    error: str  # "ExceptionType: message"
    after_s: float  # since the load run started


@dataclass
class LoadReport:
    """The outcome of :func:`run_load`."""

    calls: int
    ramp_s: float
    wall_s: float
    reports: list[CallReport] = field(default_factory=list)  # the calls that completed, in start order
    failures: list[CallFailure] = field(default_factory=list)
    metrics: dict[str, Percentiles | None] = field(default_factory=dict)
    forwarding: ForwardingFigures | None = None

    @property
    def succeeded(self) -> int:
        return len(self.reports)

    @property
    def failed(self) -> int:
        return len(self.failures)

    @classmethod
    def build(
        cls,
        calls: int,
        ramp_s: float,
        wall_s: float,
        reports: list[CallReport],
        failures: list[CallFailure],
        forwarding: ForwardingFigures | None = None,
    ) -> LoadReport:
        values = _values(reports)
        metrics = {key: Percentiles.of(values[key]) for key, _, _ in METRICS}
        return cls(calls, ramp_s, wall_s, reports, failures, metrics, forwarding)

    def to_dict(self, include_reports: bool = True) -> dict[str, Any]:
        """JSON-ready: the aggregate figures, the failures, and (unless told not to) each call's report without audio."""
        return {
            "calls": self.calls,
            "ramp_s": self.ramp_s,
            "wall_s": round(self.wall_s, 3),
            "succeeded": self.succeeded,
            "failed": self.failed,
            "metrics": {k: (None if v is None else v.to_dict()) for k, v in self.metrics.items()},
            "forwarding": None if self.forwarding is None else self.forwarding.to_dict(),
            "failures": [{"index": f.index, "error": f.error, "after_s": round(f.after_s, 3)} for f in self.failures],
            "reports": [r.to_dict() for r in self.reports] if include_reports else [],
        }

    def format(self) -> str:
        """A plain-text table of the aggregate figures."""
        lines = [
            f"load: {self.calls} calls (ramp {self.ramp_s:g} s) in {self.wall_s:.1f} s: "
            f"{self.succeeded} completed, {self.failed} failed"
        ]
        rows: list[tuple[str, Percentiles | None]] = [(label, self.metrics.get(key)) for key, label, _ in METRICS]
        fw = self.forwarding
        if fw is not None:
            rows.append(("", None))
            rows += [
                ("append inter-arrival (ms)", fw.interarrival_ms),
                ("inter-arrival deviation (ms)", fw.deviation_ms),
                ("delay variation (ms)", fw.delay_variation_ms),
            ]
        width = max(len(label) for label, _ in rows)
        head = f"  {'measurement':<{width}}  {'n':>6}  {'p50':>8}  {'p95':>8}  {'p99':>8}  {'max':>8}"
        lines.append(head)
        lines.append("  " + "-" * (len(head) - 2))
        for label, p in rows:
            if not label:
                lines.append(
                    f"  forwarding through the gateway, at the embedded server: {fw.frames} frames in "  # type: ignore[union-attr]
                    f"{fw.sessions} sessions, {fw.late_frame_pct:.1f}% later than one frame"  # type: ignore[union-attr]
                )
                continue
            if p is None:
                lines.append(f"  {label:<{width}}  {0:>6}  {'-':>8}  {'-':>8}  {'-':>8}  {'-':>8}")
            else:
                lines.append(
                    f"  {label:<{width}}  {p.count:>6}  {_num(p.p50):>8}  {_num(p.p95):>8}  {_num(p.p99):>8}  {_num(p.max):>8}"
                )
        for f in self.failures:
            lines.append(f"  failed: call {f.index} after {f.after_s:.1f} s: {f.error}")
        return "\n".join(lines)


def _num(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 or value == int(value) else f"{value:.1f}"


# ---------------------------------------------------------------------- the progress bar


class _Progress:
    """One line on stderr: ``[####......] started 4/10  done 3  failed 0  12.3 s``.

    On a terminal it is redrawn in place (at most 10 times a second, and at the end); elsewhere (CI logs)
    one line is written every 5 s and at the end, so logs stay readable.
    """

    WIDTH = 30

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = self.finished = self.failed = 0
        self.t0 = time.monotonic()
        self._last = -math.inf

    def line(self) -> str:
        done = self.finished + self.failed
        filled = int(self.WIDTH * done / self.total) if self.total else self.WIDTH
        bar = "#" * filled + "." * (self.WIDTH - filled)
        return (
            f"[{bar}] started {self.started}/{self.total}  done {self.finished}  failed {self.failed}"
            f"  {time.monotonic() - self.t0:.1f} s"
        )

    def update(self, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self._last < (0.1 if self.tty else 5.0):
            return
        self._last = now
        if self.tty:
            self.stream.write("\r" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()


# ---------------------------------------------------------------------- the runner


async def run_load(
    run_one: Callable[[int], Awaitable[CallReport]],
    calls: int,
    ramp_s: float = 0.0,
    progress: bool = True,
    forwarding: ForwardingProbe | None = None,
    *,
    progress_stream: TextIO | None = None,
) -> LoadReport:
    """Run ``calls`` calls concurrently, call ``i`` starting at ``i * ramp_s / calls`` s; aggregate them.

    A call whose ``run_one`` raises counts as failed (with its error); the others go on. With
    ``forwarding``, the probe is reset first and its figures cover this run. Cancelling ``run_load``
    cancels every call still running.
    """
    if calls < 0:
        raise ValueError("calls must be >= 0")
    if ramp_s < 0:
        raise ValueError("ramp_s must be >= 0")
    if forwarding is not None:
        forwarding.reset()
    bar = _Progress(calls, progress_stream, progress)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    results: list[CallReport | None] = [None] * calls
    failures: list[CallFailure] = []
    interval = ramp_s / calls if calls else 0.0

    async def one(i: int) -> None:
        delay = t0 + i * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        bar.started += 1
        bar.update()
        try:
            results[i] = await run_one(i)
        except Exception as exc:  # noqa: BLE001 - a failed call is a result, not a crash of the run
            failures.append(CallFailure(i, f"{type(exc).__name__}: {exc}", loop.time() - t0))
            bar.failed += 1
        else:
            bar.finished += 1
        bar.update()

    async def ticker() -> None:
        while True:
            await asyncio.sleep(0.1 if bar.tty else 1.0)
            bar.update()

    tasks = [asyncio.create_task(one(i), name=f"load-call-{i}") for i in range(calls)]
    tick = asyncio.create_task(ticker())
    try:
        await asyncio.gather(*tasks)
    finally:
        tick.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(tick, *tasks, return_exceptions=True)
    bar.update(final=True)
    failures.sort(key=lambda f: f.index)
    reports = [r for r in results if r is not None]
    figures = forwarding.figures() if forwarding is not None else None
    return LoadReport.build(calls, ramp_s, loop.time() - t0, reports, failures, figures)


__all__ = [
    "CallFailure",
    "ForwardingFigures",
    "ForwardingProbe",
    "LoadReport",
    "METRICS",
    "Percentiles",
    "run_load",
]
