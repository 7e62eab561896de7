"""A call's timeline as an inline SVG, drawn on the server from its record (and its recording, when there is one).

Two lanes on one time axis (seconds since the stream started): the caller on top and the agent as the caller heard
it below, each a min/max envelope of the recording's audio (:func:`envelope`). Over them, from the record: each
turn's latency (a line from the caller's end of speech to the agent's first audio, ``NNN ms``), the agent's audio
cut by a barge-in, tool calls, and model reconnects and rollovers; under them the axis and a legend of every mark.

The console's script links it to the recording's player: the SVG says where its time axis lies (``data-left``,
``data-right`` in viewBox units, ``data-seconds``), a click on it seeks the player, and the playhead line
(``#playhead``) follows playback. Every text in it is escaped; it uses presentation attributes only (no ``style``),
so the console's Content-Security-Policy holds. This module draws for the console only: the replay harness has its
own PNG timeline (:mod:`gateway.tooling.replay.plot`), which the served app never imports.
"""

from __future__ import annotations

import os
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from gateway.store import CallRecord
from gateway.audio.wavio import PHONE_RATE, read_wav

WIDTH, HEIGHT = 1000, 262
LEFT, RIGHT = 118, 990  # the lanes' labels sit left of LEFT, right-aligned: "agent (heard)" fits whole
CALLER_ROW, AGENT_ROW, HALF = 50, 142, 38  # lane centres and half-heights
AXIS_Y = 190
LEGEND_Y = 244
COLUMNS = 460  # envelope columns: two SVG points each
MAX_WAVEFORM_BYTES = 64 * 1024 * 1024  # a longer recording is drawn without its waveforms (about 35 minutes)
LABEL_CHAR_PX = 7.0  # about one 11 px character: labels that would overlap the previous one in their row are left out

CALLER_COLOR = "#1f5fa8"
AGENT_COLOR = "#2e8b57"
LATENCY_COLOR = "#6a3d9a"
BARGE_COLOR = "#f4a259"
STOP_COLOR = "#d1495b"
ROLLOVER_COLOR = "#555555"
TOOL_COLOR = "#7b2cbf"
PLAYHEAD_COLOR = "#e4572e"

# (what, how it is drawn: "fill" a box, "line" a solid line, "dash" a dashed line, colour)
LEGEND = (
    ("caller", "fill", CALLER_COLOR), ("agent as heard", "fill", AGENT_COLOR),
    ("turn latency", "line", LATENCY_COLOR), ("barge-in (agent cut)", "fill", BARGE_COLOR),
    ("tool call", "dash", TOOL_COLOR), ("reconnect", "dash", STOP_COLOR), ("rollover", "dash", ROLLOVER_COLOR),
    ("playhead", "line", PLAYHEAD_COLOR),
)


def envelope(samples: np.ndarray, columns: int = COLUMNS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t_seconds, low, high): the min/max of PCM16 ``samples`` (scaled to [-1, 1]) over ``columns`` bins."""
    n = len(samples)
    if n == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    columns = max(1, min(columns, n))
    per = -(-n // columns)  # ceil: every column covers the same number of samples
    padded = np.zeros(per * columns, dtype=np.float32)
    padded[:n] = samples.astype(np.float32) / 32768.0
    blocks = padded.reshape(columns, per)
    t = (np.arange(columns) * per + per / 2) / PHONE_RATE
    return t, blocks.min(axis=1), blocks.max(axis=1)


def recording_envelopes(path: Path | None) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...], float] | None:
    """(caller envelope, agent envelope, seconds) of a stereo recording; None when there is none to draw."""
    if path is None or os.path.getsize(path) > MAX_WAVEFORM_BYTES:
        return None
    samples, rate = read_wav(path)
    if samples.ndim != 2 or samples.shape[1] != 2 or rate != PHONE_RATE or not len(samples):
        return None
    caller, agent = (envelope(samples[:, channel]) for channel in (0, 1))
    return caller, agent, len(samples) / rate


def _nice_step(seconds: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if seconds / step <= 12:
            return float(step)
    return 7200.0


def _wave(points: tuple[np.ndarray, ...], centre: float, x: Any, color: str) -> str:
    t, low, high = points
    if not len(t):
        return ""
    peak = max(float(np.max(np.abs(np.concatenate([low, high])))), 0.03)  # each lane to its own peak
    upper = " ".join(f"{x(s):.1f},{centre - h / peak * HALF:.1f}" for s, h in zip(t, high))
    lower = " ".join(f"{x(s):.1f},{centre - v / peak * HALF:.1f}" for s, v in zip(t[::-1], low[::-1]))
    return f'<polygon points="{upper} {lower}" fill="{color}" stroke="none"/>'


class _Room:
    """Which labels fit: a label is drawn only if it starts right of the previous one in its row."""

    def __init__(self) -> None:
        self.ends: dict[str, float] = {}

    def take(self, row: str, x: float, label: str) -> bool:
        if x < self.ends.get(row, float("-inf")):
            return False
        self.ends[row] = x + len(label) * LABEL_CHAR_PX + 6
        return True


def _legend() -> str:
    parts = ['<g id="timeline-legend" class="legend">']
    x = float(LEFT)
    for label, kind, color in LEGEND:
        if kind == "fill":
            parts.append(f'<rect x="{x:.0f}" y="{LEGEND_Y - 9}" width="14" height="10" fill="{color}"/>')
        else:
            dash = ' stroke-dasharray="3 2"' if kind == "dash" else ""
            parts.append(f'<line x1="{x:.0f}" y1="{LEGEND_Y - 4}" x2="{x + 14:.0f}" y2="{LEGEND_Y - 4}" '
                         f'stroke="{color}" stroke-width="2"{dash}/>')
        parts.append(f'<text x="{x + 19:.0f}" y="{LEGEND_Y}" font-size="11" fill="#333">{escape(label)}</text>')
        x += 19 + len(label) * 6.2 + 18
    parts.append("</g>")
    return "".join(parts)


def timeline_svg(record: CallRecord, waves: tuple[Any, Any, float] | None = None) -> str:
    """The SVG element (a string) of ``record``'s timeline; ``waves`` from :func:`recording_envelopes`."""
    turns, tools = record.turns, record.tool_calls
    changes = [("reconnect", c) for c in record.reconnects] + [("rollover", c) for c in record.rollovers]
    ends = [((t.t_ms or 0) + max(t.heard_ms or 0, 0)) / 1000 for t in turns] + \
           [(r.t_ms or 0) / 1000 for r in tools] + [(c.t_ms or 0) / 1000 for _, c in changes]
    length = record.ended_at - record.started_at if record.ended_at and record.started_at else 0.0
    end_s = max([1.0, length, waves[2] if waves else 0.0, *ends])
    scale = (RIGHT - LEFT) / end_s

    def x(seconds: float) -> float:
        return LEFT + max(0.0, seconds) * scale

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
             f'class="timeline" id="timeline" data-left="{LEFT}" data-right="{RIGHT}" data-seconds="{end_s:.3f}" '
             f'aria-label="timeline of call {escape(record.call_sid)}">']
    for centre, label, color in ((CALLER_ROW, "caller", CALLER_COLOR), (AGENT_ROW, "agent (heard)", AGENT_COLOR)):
        parts.append(f'<rect x="{LEFT}" y="{centre - HALF - 4}" width="{RIGHT - LEFT}" height="{2 * HALF + 8}" '
                     'fill="#fafafa" stroke="#e3e3e3"/>')
        parts.append(f'<text x="{LEFT - 10}" y="{centre + 4}" text-anchor="end" font-size="12" font-weight="bold" '
                     f'fill="{color}" class="lane-label">{escape(label)}</text>')
    step = _nice_step(end_s)
    tick = 0.0
    while tick <= end_s + 1e-9:
        parts.append(f'<line x1="{x(tick):.1f}" y1="{AXIS_Y - 4}" x2="{x(tick):.1f}" y2="{AXIS_Y}" stroke="#888"/>'
                     f'<text x="{x(tick):.1f}" y="{AXIS_Y + 14}" text-anchor="middle" font-size="11" fill="#444">'
                     f'{tick:g}</text>')
        tick += step
    parts.append(f'<text x="{(LEFT + RIGHT) / 2}" y="{AXIS_Y + 30}" text-anchor="middle" font-size="11" '
                 'fill="#444">time since the stream started (s)</text>')
    if waves is not None:
        parts.append(_wave(waves[0], CALLER_ROW, x, CALLER_COLOR))
        parts.append(_wave(waves[1], AGENT_ROW, x, AGENT_COLOR))
    else:
        parts.append(f'<text x="{(LEFT + RIGHT) / 2}" y="{CALLER_ROW + 4}" text-anchor="middle" font-size="11" '
                     'fill="#888">no recording</text>')

    room = _Room()
    for turn in turns:
        if turn.t_ms is None:
            continue
        at = turn.t_ms / 1000
        if turn.barged_in and turn.heard_ms is not None:
            stop = at + turn.heard_ms / 1000
            parts.append(f'<line x1="{x(stop):.1f}" y1="{AGENT_ROW - HALF}" x2="{x(stop):.1f}" y2="{AGENT_ROW + HALF}" '
                         f'stroke="{STOP_COLOR}" stroke-width="1.5"/>')
            parts.append(f'<rect x="{x(at):.1f}" y="{AGENT_ROW + HALF - 6}" width="{max(1.0, x(stop) - x(at)):.1f}" '
                         f'height="6" fill="{BARGE_COLOR}"><title>barge-in: {turn.heard_ms} ms heard</title></rect>')
        if turn.latency_ms is None:
            continue
        began = at - turn.latency_ms / 1000
        parts.append(f'<line x1="{x(began):.1f}" y1="{CALLER_ROW + HALF}" x2="{x(at):.1f}" y2="{AGENT_ROW - HALF}" '
                     f'stroke="{LATENCY_COLOR}" stroke-width="1.5"/>'
                     f'<circle cx="{x(at):.1f}" cy="{AGENT_ROW - HALF}" r="3" fill="{LATENCY_COLOR}"/>')
        label = f"{turn.latency_ms} ms"
        if room.take("latency", x(at), label):
            parts.append(f'<text x="{x(at) + 3:.1f}" y="{AGENT_ROW - HALF - 4}" font-size="11" font-weight="bold" '
                         f'fill="{LATENCY_COLOR}">{escape(label)}</text>')
    for run in tools:
        if run.t_ms is None:
            continue
        at = run.t_ms / 1000
        parts.append(f'<line x1="{x(at):.1f}" y1="{CALLER_ROW - HALF - 4}" x2="{x(at):.1f}" y2="{AGENT_ROW + HALF + 4}" '
                     f'stroke="{TOOL_COLOR}" stroke-dasharray="2 3"><title>{escape(f"tool {run.name}: {run.outcome}")}'
                     '</title></line>')
        if room.take("tools", x(at), run.name[:40]):
            parts.append(f'<text x="{x(at) + 3:.1f}" y="{CALLER_ROW - HALF + 10}" font-size="10" fill="{TOOL_COLOR}">'
                         f'{escape(run.name[:40])}</text>')
    for kind, change in changes:
        if change.t_ms is None:
            continue
        at = change.t_ms / 1000
        color = STOP_COLOR if kind == "reconnect" else ROLLOVER_COLOR
        parts.append(f'<line x1="{x(at):.1f}" y1="{CALLER_ROW - HALF - 4}" x2="{x(at):.1f}" y2="{AGENT_ROW + HALF + 4}" '
                     f'stroke="{color}" stroke-dasharray="6 3"><title>{escape(f"{kind}: {change.cause}")}</title></line>')
    # The playhead: placed and shown by the console's script while the recording plays.
    parts.append(f'<line id="playhead" x1="{LEFT}" y1="{CALLER_ROW - HALF - 6}" x2="{LEFT}" y2="{AGENT_ROW + HALF + 6}" '
                 f'stroke="{PLAYHEAD_COLOR}" stroke-width="2" visibility="hidden"/>')
    parts.append(_legend())
    parts.append("</svg>")
    return "".join(parts)
