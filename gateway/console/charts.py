"""The overview's charts as inline SVG, drawn on the server: stacked bars (calls by outcome), bars (spend,
barge-ins) and lines (turn latency p50 and p95). Presentation attributes only (no ``style``, no script), every text
escaped, so the console's Content-Security-Policy holds; each bar and point has a ``<title>`` (its tooltip)."""

from __future__ import annotations

import math
from html import escape
from typing import Callable, Sequence

WIDTH, HEIGHT = 960, 230
LEFT, RIGHT, TOP, BOTTOM = 64, 950, 30, 190  # the plot area; the y labels left of it, the x labels under it
MAX_X_LABELS = 12
# Outcome colours: the usual ones fixed, any other from the palette in order of first appearance.
OUTCOME_COLORS = {"completed": "#2e8b57", "failed": "#d1495b", "refused": "#f4a259", "lost": "#6c757d",
                  "in-progress": "#9cc3ef", "no-answer": "#b08ed1", "busy": "#e9c46a", "voicemail": "#4e89ae",
                  "canceled": "#adb5bd"}
PALETTE = ("#1f5fa8", "#8d6e63", "#00838f", "#c2185b", "#7cb342", "#5d4037", "#455a64", "#f06292")


def outcome_colors(outcomes: Sequence[str]) -> dict[str, str]:
    colors, spare = {}, iter(PALETTE * (len(outcomes) // len(PALETTE) + 1))
    for outcome in outcomes:
        colors[outcome] = OUTCOME_COLORS.get(outcome) or next(spare)
    return colors


def sparse_labels(labels: Sequence[str], starts: Sequence[int], size: int) -> list[str]:
    """At most about MAX_X_LABELS of ``labels`` kept (the others ""): those whose bucket start is a round multiple
    of a step (1, 2, 3, 6 or 12 hours, 1, 2, 7 or 14 days), so ticks fall on the same hours every time."""
    steps = (1, 2, 3, 6, 12, 24, 48, 72, 168, 336) if size < 86400 else (1, 2, 7, 14, 28)
    step = next((s for s in steps if len(labels) / s <= MAX_X_LABELS), steps[-1])
    return [label if (start // size) % step == 0 else "" for label, start in zip(labels, starts)]


def _nice_max(value: float, whole: bool = False) -> float:
    """The top of the y axis: 1, 2, 2.5 or 5 times a power of ten, at least ``value`` (at least 4 for counts,
    ``whole``, so that the gridlines fall on whole numbers)."""
    if whole:
        return max(4.0, math.ceil(value / 4) * 4) if value <= 20 else _nice_max(value)
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 2.5, 5, 10) if step * power >= value)


def _frame(chart_id: str, title: str, top: float, y_label: Callable[[float], str], x_labels: Sequence[str],
           legend: Sequence[tuple[str, str]]) -> list[str]:
    """The chart's element, title, legend, gridlines and axes; ``x_labels`` under the axis ("" for none)."""
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
              f'class="chart" id="{escape(chart_id)}" aria-label="{escape(title)}">'),
             f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold" fill="#222">{escape(title)}</text>']
    for index in range(5):
        value = top * index / 4
        y = BOTTOM - (BOTTOM - TOP) * index / 4
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{RIGHT}" y2="{y:.1f}" stroke="#e6e6e6"/>'
                     f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#555">'
                     f"{escape(y_label(value))}</text>")
    count = len(x_labels)
    width = (RIGHT - LEFT) / max(count, 1)
    for index in range(count):
        if not x_labels[index]:  # the caller left it out (see sparse_labels)
            continue
        x = LEFT + (index + 0.5) * width
        parts.append(f'<text x="{x:.1f}" y="{BOTTOM + 16}" text-anchor="middle" font-size="11" fill="#555">'
                     f"{escape(x_labels[index])}</text>")
    parts.append(f'<line x1="{LEFT}" y1="{BOTTOM}" x2="{RIGHT}" y2="{BOTTOM}" stroke="#888"/>')
    x = float(RIGHT)
    for label, color in reversed(legend):  # right-aligned, in the title's row
        x -= len(label) * 6.2 + 4
        parts.append(f'<text x="{x:.1f}" y="16" font-size="11" fill="#333">{escape(label)}</text>')
        x -= 16
        parts.append(f'<rect x="{x:.1f}" y="7" width="12" height="10" fill="{color}"/>')
        x -= 14
    return parts


def bar_chart(chart_id: str, title: str, x_labels: Sequence[str], stacks: Sequence[dict[str, float]],
              colors: dict[str, str], y_label: Callable[[float], str], tip: Callable[[str, float], str],
              whole: bool = False, axis: Sequence[str] | None = None) -> str:
    """One bar per x label (its tooltip's), stacked by series (``stacks[i]``: series -> value; series in
    ``colors``' order); ``whole``: the values are counts; ``axis``: the labels under the axis ("" for none)."""
    top = _nice_max(max((sum(stack.values()) for stack in stacks), default=0.0), whole)
    legend = [(name, color) for name, color in colors.items()] if len(colors) > 1 else []
    parts = _frame(chart_id, title, top, y_label, x_labels if axis is None else axis, legend)
    width = (RIGHT - LEFT) / max(len(x_labels), 1)
    gap = min(2.0, width * 0.2)
    for index, (label, stack) in enumerate(zip(x_labels, stacks)):
        base = 0.0
        for name, color in colors.items():
            value = stack.get(name, 0.0)
            if value <= 0:
                continue
            y1 = BOTTOM - (BOTTOM - TOP) * (base + value) / top
            height = (BOTTOM - TOP) * value / top
            parts.append(f'<rect class="bar" x="{LEFT + index * width + gap / 2:.1f}" y="{y1:.1f}" '
                         f'width="{max(width - gap, 0.5):.1f}" height="{max(height, 0.5):.1f}" fill="{color}">'
                         f"<title>{escape(label)}: {escape(tip(name, value))}</title></rect>")
            base += value
    parts.append("</svg>")
    return "".join(parts)


def line_chart(chart_id: str, title: str, x_labels: Sequence[str], series: dict[str, Sequence[float | None]],
               colors: dict[str, str], y_label: Callable[[float], str], tip: Callable[[str, float], str],
               axis: Sequence[str] | None = None) -> str:
    """One line per series; a missing value (None) breaks the line; each point a dot with its tooltip."""
    values = [value for points in series.values() for value in points if value is not None]
    top = _nice_max(max(values, default=0.0))
    parts = _frame(chart_id, title, top, y_label, x_labels if axis is None else axis, list(colors.items()))
    width = (RIGHT - LEFT) / max(len(x_labels), 1)
    for name, points in series.items():
        color = colors[name]
        run: list[str] = []
        for index, value in enumerate([*points, None]):
            if value is None:
                if len(run) > 1:
                    parts.append(f'<polyline points="{" ".join(run)}" fill="none" stroke="{color}" stroke-width="2"/>')
                run = []
                continue
            x, y = LEFT + (index + 0.5) * width, BOTTOM - (BOTTOM - TOP) * value / top
            run.append(f"{x:.1f},{y:.1f}")
            parts.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}">'
                         f"<title>{escape(x_labels[index])}: {escape(tip(name, value))}</title></circle>")
    if not values:
        parts.append(f'<text x="{(LEFT + RIGHT) / 2}" y="{(TOP + BOTTOM) / 2}" text-anchor="middle" font-size="12" '
                     'fill="#888">no turn latency measured in this range</text>')
    parts.append("</svg>")
    return "".join(parts)
