"""A call's timeline as an inline SVG, drawn on the server from its record (and its recording, when there is one).

The replay's timeline (:mod:`gateway.replay.plot`) in the browser's own vector format: two rows on one time axis
(seconds since the stream started), the caller on top and the agent as heard below, each a min/max envelope of the
recording's audio (the replay's :func:`~gateway.replay.plot.envelope`, in its colours). Over them, from the record:
each turn's latency (an arrow from the caller's end of speech to the agent's first audio, ``NNN ms``), the agent's
audio cut by a barge-in, tool calls, and model reconnects and rollovers. Every text in it is escaped; it uses
presentation attributes only (no ``style``), so the console's Content-Security-Policy holds.
"""

from __future__ import annotations

import os
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from gateway.audio import mulaw_encode
from gateway.store import CallRecord
from gateway.wavio import PHONE_RATE, read_wav

WIDTH, HEIGHT = 1000, 250
LEFT, RIGHT = 70, 990
CALLER_ROW, AGENT_ROW, HALF = 62, 162, 38  # row centres and half-heights
AXIS_Y = 215
COLUMNS = 460  # envelope columns: two SVG points each
MAX_WAVEFORM_BYTES = 64 * 1024 * 1024  # a longer recording is drawn without its waveforms (about 35 minutes)
TOOL_COLOR = "#7b2cbf"


def recording_envelopes(path: Path | None) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...], float] | None:
    """(caller envelope, agent envelope, seconds) of a stereo recording; None when there is none to draw."""
    if path is None or os.path.getsize(path) > MAX_WAVEFORM_BYTES:
        return None
    samples, rate = read_wav(path)
    if samples.ndim != 2 or samples.shape[1] != 2 or rate != PHONE_RATE or not len(samples):
        return None
    from gateway.replay.plot import envelope  # the replay harness, loaded when a page is drawn, not with the app

    # The recording was mu-law before it was PCM16: encoding it back is exact, and envelope() reads mu-law.
    caller, agent = (envelope(mulaw_encode(samples[:, channel]), COLUMNS) for channel in (0, 1))
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
    peak = max(float(np.max(np.abs(np.concatenate([low, high])))), 0.03)  # each row to its own peak, as the replay
    upper = " ".join(f"{x(s):.1f},{centre - h / peak * HALF:.1f}" for s, h in zip(t, high))
    lower = " ".join(f"{x(s):.1f},{centre - v / peak * HALF:.1f}" for s, v in zip(t[::-1], low[::-1]))
    return f'<polygon points="{upper} {lower}" fill="{color}" stroke="none"/>'


def timeline_svg(record: CallRecord, waves: tuple[Any, Any, float] | None = None) -> str:
    """The SVG element (a string) of ``record``'s timeline; ``waves`` from :func:`recording_envelopes`."""
    from gateway.replay.plot import (
        AGENT_COLOR, BARGE_COLOR, CALLER_COLOR, CLEAR_COLOR, LATENCY_COLOR, STOP_COLOR, _Room,
    )

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
             f'class="timeline" aria-label="timeline of call {escape(record.call_sid)}">']
    for centre, label, color in ((CALLER_ROW, "caller", CALLER_COLOR), (AGENT_ROW, "agent (heard)", AGENT_COLOR)):
        parts.append(f'<rect x="{LEFT}" y="{centre - HALF - 4}" width="{RIGHT - LEFT}" height="{2 * HALF + 8}" '
                     'fill="#fafafa" stroke="#e3e3e3"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{centre + 4}" text-anchor="end" font-size="12" font-weight="bold" '
                     f'fill="{color}">{escape(label)}</text>')
    step = _nice_step(end_s)
    tick = 0.0
    while tick <= end_s + 1e-9:
        parts.append(f'<line x1="{x(tick):.1f}" y1="{AXIS_Y - 4}" x2="{x(tick):.1f}" y2="{AXIS_Y}" stroke="#888"/>'
                     f'<text x="{x(tick):.1f}" y="{AXIS_Y + 14}" text-anchor="middle" font-size="11" fill="#444">'
                     f'{tick:g}</text>')
        tick += step
    parts.append(f'<text x="{(LEFT + RIGHT) / 2}" y="{HEIGHT - 4}" text-anchor="middle" font-size="11" fill="#444">'
                 'time since the stream started (s)</text>')
    if waves is not None:
        parts.append(_wave(waves[0], CALLER_ROW, x, CALLER_COLOR))
        parts.append(_wave(waves[1], AGENT_ROW, x, AGENT_COLOR))
    else:
        parts.append(f'<text x="{(LEFT + RIGHT) / 2}" y="{CALLER_ROW + 4}" text-anchor="middle" font-size="11" '
                     'fill="#888">no recording</text>')

    room = _Room(scale)
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
        if room.take("latency", at, label):
            parts.append(f'<text x="{x(at) + 3:.1f}" y="{AGENT_ROW - HALF - 4}" font-size="11" font-weight="bold" '
                         f'fill="{LATENCY_COLOR}">{escape(label)}</text>')
    for run in tools:
        if run.t_ms is None:
            continue
        at = run.t_ms / 1000
        parts.append(f'<line x1="{x(at):.1f}" y1="{CALLER_ROW - HALF - 4}" x2="{x(at):.1f}" y2="{AGENT_ROW + HALF + 4}" '
                     f'stroke="{TOOL_COLOR}" stroke-dasharray="2 3"><title>{escape(f"tool {run.name}: {run.outcome}")}'
                     '</title></line>')
        if room.take("tools", at, run.name):
            parts.append(f'<text x="{x(at) + 3:.1f}" y="{CALLER_ROW - HALF + 10}" font-size="10" fill="{TOOL_COLOR}">'
                         f'{escape(run.name[:40])}</text>')
    for kind, change in changes:
        if change.t_ms is None:
            continue
        at = change.t_ms / 1000
        color = STOP_COLOR if kind == "reconnect" else CLEAR_COLOR
        parts.append(f'<line x1="{x(at):.1f}" y1="{CALLER_ROW - HALF - 4}" x2="{x(at):.1f}" y2="{AGENT_ROW + HALF + 4}" '
                     f'stroke="{color}" stroke-dasharray="6 3"><title>{escape(f"{kind}: {change.cause}")}</title></line>')
    parts.append("</svg>")
    return "".join(parts)
