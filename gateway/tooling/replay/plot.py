"""The PNG timeline of one replayed call: what the caller said and heard, on one time axis.

Two waveform rows share the x axis (seconds since the stream started): the caller on top, the agent as
the caller heard it below, both decoded from the report's mu-law tracks and drawn as a min/max envelope
per pixel column, so a ten-minute call plots as fast as a ten-second one. On top of them:

* caller turns, shaded with their names (barge-in turns in orange);
* agent playback runs, shaded;
* each turn's latency: an arrow from the caller's speech end to the first agent audio heard, ``NNN ms``;
* each barge-in: a line at the caller's speech onset, a line where the agent stopped being heard, and the
  stop time between them;
* ``clear`` messages (dashed), DTMF digits sent, and protocol violations (red ticks).

On a long call, labels that would overlap the previous one in their row are left out (the shapes stay).

matplotlib is imported lazily with the Agg backend: no display is needed, and importing this module
costs nothing until a plot is drawn.
"""

from __future__ import annotations

from os import PathLike
import numpy as np

from gateway.audio.convert import mulaw_decode

from .report import CallReport

SAMPLE_RATE = 8000
FIG_SIZE = (12.0, 5.0)
DPI = 100
COLUMNS = 1100  # envelope columns: about one per pixel of the plot area

CALLER_COLOR = "#1f5fa8"
AGENT_COLOR = "#2e8b57"
TURN_COLOR = "#9cc3ef"
BARGE_COLOR = "#f4a259"
RUN_COLOR = "#b7e4c7"
LATENCY_COLOR = "#6a3d9a"
STOP_COLOR = "#d1495b"
CLEAR_COLOR = "#555555"
VIOLATION_COLOR = "#e00000"


def envelope(mulaw: bytes, columns: int = COLUMNS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t_seconds, low, high): the min/max of the decoded audio (scaled to [-1, 1]) over ``columns`` bins."""
    n = len(mulaw)
    if n == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    samples = mulaw_decode(mulaw).astype(np.float32) / 32768.0
    columns = max(1, min(columns, n))
    per = -(-n // columns)  # ceil: every column covers the same number of samples
    pad = per * columns - n
    if pad:
        samples = np.concatenate([samples, np.zeros(pad, dtype=np.float32)])
    blocks = samples.reshape(columns, per)
    low, high = blocks.min(axis=1), blocks.max(axis=1)
    t = (np.arange(columns) * per + per / 2) / SAMPLE_RATE
    return t, low, high


def write_timeline_png(report: CallReport, path: str | PathLike[str], title: str = "") -> None:
    """Draw ``report`` as a timeline (see the module docstring) and write it to ``path`` as a PNG."""
    from gateway.extras import require

    require("plots", "the replay's timeline PNG")  # matplotlib: the plots extra
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import ConnectionPatch, Patch

    # A Figure without pyplot: no global state, safe from threads and from many calls in one process.
    fig = Figure(figsize=FIG_SIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(2, 1, hspace=0.08, left=0.055, right=0.985, top=0.86, bottom=0.17)
    ax_caller = fig.add_subplot(gs[0])
    ax_agent = fig.add_subplot(gs[1], sharex=ax_caller)

    n = max(len(report.caller_audio), len(report.heard_audio))
    end_s = max(n / SAMPLE_RATE, report.duration_ms / 1000.0, 1.0)
    columns = min(COLUMNS, max(1, n))

    for ax, audio, color, label in (
        (ax_caller, report.caller_audio, CALLER_COLOR, "caller"),
        (ax_agent, report.heard_audio, AGENT_COLOR, "agent (heard)"),
    ):
        t, low, high = envelope(audio, columns)
        if len(t):
            # Quiet audio would vanish at full scale: scale each row to its own peak (at least -30 dBFS).
            peak = max(float(np.max(np.abs(np.concatenate([low, high])))), 0.03)
            ax.fill_between(t, low / peak, high / peak, color=color, linewidth=0.4, step="mid", zorder=3)
        ax.set_ylim(-1.45, 1.45)
        ax.set_yticks([])
        ax.set_ylabel(label, fontsize=10, color=color, fontweight="bold")
        ax.set_xlim(0, end_s)
        ax.grid(axis="x", color="#e3e3e3", linewidth=0.6, zorder=0)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    ax_caller.tick_params(axis="x", labelbottom=False)
    ax_agent.set_xlabel("time since the stream started (s)", fontsize=9)
    ax_agent.tick_params(axis="x", labelsize=8)

    if n == 0:
        for ax in (ax_caller, ax_agent):
            ax.text(0.5, 0.5, "no audio", transform=ax.transAxes, ha="center", va="center", color="#888888")

    px_per_s = COLUMNS / end_s
    room = _Room(px_per_s)
    guides = len(report.turns) <= 20  # dotted guide lines help a short call and clutter a long one

    # Caller turns, with their names.
    for turn in report.turns:
        s, e = turn.start_ms / 1000.0, turn.end_ms / 1000.0
        ax_caller.axvspan(s, e, color=BARGE_COLOR if turn.barge_in else TURN_COLOR, alpha=0.45, lw=0, zorder=1)
        label = turn.name + ("" if turn.completed else " (cut)")
        if room.take("turns", s, label):
            ax_caller.text(s, 1.38, " " + label, fontsize=8.5, va="top", ha="left", zorder=5, clip_on=True,
                           color="#222222", fontweight="bold")

    # Agent playback runs.
    for run in report.runs:
        s = run.start_ms / 1000.0
        e = (run.end_ms if run.end_ms is not None else report.duration_ms) / 1000.0
        ax_agent.axvspan(s, e, color=RUN_COLOR, alpha=0.55, lw=0, zorder=1)

    # clear messages.
    for clear in report.clears:
        x = clear.time_ms / 1000.0
        ax_agent.axvline(x, color=CLEAR_COLOR, linestyle="--", linewidth=1.0, zorder=4)
        if room.take("clear", x, " clear"):
            ax_agent.text(x, -1.38, " clear", fontsize=7.5, color=CLEAR_COLOR, va="bottom", ha="left", zorder=5)

    # Latency: caller speech end -> first agent audio heard. The arrow crosses from one row to the other.
    for turn in report.turns:
        if turn.response_ms is None:
            continue
        x0 = turn.end_ms / 1000.0
        x1 = (turn.end_ms + turn.response_ms) / 1000.0
        if guides:
            ax_caller.axvline(x0, color=LATENCY_COLOR, linestyle=":", linewidth=1.0, zorder=4)
            ax_agent.axvline(x1, color=LATENCY_COLOR, linestyle=":", linewidth=1.0, zorder=4)
        arrow = ConnectionPatch(
            xyA=(x0, -1.1), coordsA=ax_caller.transData, xyB=(x1, 1.1), coordsB=ax_agent.transData,
            arrowstyle="-|>", mutation_scale=10, color=LATENCY_COLOR, linewidth=1.3, zorder=6,
        )
        fig.add_artist(arrow)
        if room.take("latency", x1, f" {turn.response_ms:.0f} ms"):
            ax_agent.text(x1, 1.12, f" {turn.response_ms:.0f} ms", fontsize=8.5, color=LATENCY_COLOR,
                          fontweight="bold", va="bottom", ha="left", zorder=6, clip_on=True)

    # Barge-ins: caller onset -> agent audio stops being heard.
    for turn in report.turns:
        if not turn.barge_in:
            continue
        x0 = turn.start_ms / 1000.0
        ax_caller.axvline(x0, color=STOP_COLOR, linewidth=1.4, zorder=4)
        ax_agent.axvline(x0, color=STOP_COLOR, linewidth=1.4, zorder=4)
        if turn.stop_ms is None:
            if turn.agent_playing_at_start:
                ax_agent.text(x0, -0.75, " never stopped", fontsize=8.5, color=STOP_COLOR, fontweight="bold")
            continue
        x1 = (turn.start_ms + turn.stop_ms) / 1000.0
        ax_agent.axvline(x1, color=STOP_COLOR, linewidth=1.4, linestyle="-", zorder=4)
        ax_agent.annotate("", xy=(x1, -0.85), xytext=(x0, -0.85), zorder=6,
                          arrowprops=dict(arrowstyle="-|>", color=STOP_COLOR, lw=1.3, shrinkA=0, shrinkB=0))
        if room.take("stop", x1, f" stop {turn.stop_ms:.0f} ms"):
            ax_agent.text(x1, -0.85, f" stop {turn.stop_ms:.0f} ms", fontsize=8.5, color=STOP_COLOR,
                          fontweight="bold", va="center", ha="left", zorder=6, clip_on=True,
                          bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=0.5))

    # DTMF digits the caller keyed.
    for time_ms, digit in report.dtmf_sent:
        ax_caller.text(time_ms / 1000.0, -1.38, digit, fontsize=8, color="#7b2cbf", ha="center", va="bottom",
                       fontweight="bold", zorder=5)

    # Violations: red ticks along the bottom of the agent row (they are what the gateway sent).
    if report.violations:
        xs = [v.time_ms / 1000.0 for v in report.violations]
        ax_agent.plot(xs, [-1.45] * len(xs), linestyle="none", marker="|", markersize=14,
                      markeredgewidth=2, color=VIOLATION_COLOR, zorder=7, clip_on=False)

    # Title and a one-line digest of the figures.
    heading = title or f"call {report.call_sid or '?'}"
    fig.text(0.055, 0.965, heading, fontsize=12, fontweight="bold", va="top", ha="left")
    fig.text(0.055, 0.915, _digest(report), fontsize=8.5, va="top", ha="left", color="#444444")

    legend = [
        Patch(color=TURN_COLOR, alpha=0.6, label="caller turn"),
        Patch(color=BARGE_COLOR, alpha=0.6, label="barge-in turn"),
        Patch(color=RUN_COLOR, alpha=0.8, label="agent playback"),
        Line2D([], [], color=LATENCY_COLOR, lw=1.3, label="latency"),
        Line2D([], [], color=STOP_COLOR, lw=1.4, label="barge-in stop"),
        Line2D([], [], color=CLEAR_COLOR, lw=1.0, ls="--", label="clear"),
        Line2D([], [], color=VIOLATION_COLOR, lw=0, marker="|", markersize=10, markeredgewidth=2,
               label=f"violation ({len(report.violations)})"),
    ]
    fig.legend(handles=legend, loc="lower center", bbox_to_anchor=(0.52, 0.0), ncol=len(legend), fontsize=8,
               frameon=False, handlelength=1.6, columnspacing=1.6)
    fig.savefig(path, format="png", dpi=DPI)


class _Room:
    """Which labels fit: a label is drawn only if it starts right of the previous one in its row."""

    CHAR_PX = 7.5  # about one bold character at 8.5 pt and 100 dpi

    def __init__(self, px_per_s: float) -> None:
        self.px_per_s = px_per_s
        self.ends: dict[str, float] = {}

    def take(self, row: str, x_s: float, label: str) -> bool:
        x = x_s * self.px_per_s
        if x < self.ends.get(row, float("-inf")):
            return False
        self.ends[row] = x + len(label) * self.CHAR_PX + 8
        return True


def _digest(report: CallReport) -> str:
    parts: list[str] = [f"{report.duration_ms / 1000.0:.1f} s", f"ended by {report.ended_by}"]
    latencies = report.response_ms
    if latencies:
        parts.append(f"latency max {max(latencies):.0f} ms")
    stops = report.barge_in_stop_ms
    if stops:
        parts.append(f"barge-in stop max {max(stops):.0f} ms")
    parts.append(f"marks {report.marks_echoed}/{report.marks_received} echoed")
    parts.append(f"underruns {report.underruns}")
    parts.append(f"violations {len(report.violations)}")
    parts.append(f"agent heard {report.agent_audio_played_ms / 1000.0:.1f} s")
    return "  ·  ".join(parts)


__all__ = ["envelope", "write_timeline_png"]
