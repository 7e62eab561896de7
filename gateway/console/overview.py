"""The console's overview page (``/console/overview``): the calls of the last 24 hours, 7 days or 30 days at a glance.

Calls per hour and per day (stacked by outcome), the turn latency's p50 and p95, spend and barge-ins over time,
and the totals by outcome. The figures come from the store (:meth:`gateway.store.CallStore.overview`: SQL in
SQLite and PostgreSQL), scoped like the API: an operator key sees every call, another key the calls it placed.
Hours and days are UTC's; the range's ends are shown in the browser's time zone.
"""

from __future__ import annotations

import time
from html import escape

from gateway.console.charts import bar_chart, line_chart, outcome_colors, sparse_labels
from gateway.console.pages import page, time_html
from gateway.console.session import ConsoleSession
from gateway.store.figures import DAY_S, HOUR_S, Bucket, Overview

# range name -> (seconds, the latency/spend/barge-in series' bucket)
RANGES = {"24h": (DAY_S, HOUR_S), "7d": (7 * DAY_S, DAY_S), "30d": (30 * DAY_S, DAY_S)}
RANGE_LABELS = {"24h": "last 24 hours", "7d": "last 7 days", "30d": "last 30 days"}
DEFAULT_RANGE = "24h"
LATENCY_COLORS = {"p50": "#1f5fa8", "p95": "#d1495b"}


def overview_window(range_name: str, now: float | None = None) -> tuple[float, float, int]:
    """(since, until, bucket_s) of a range name (KeyError for another): it ends now."""
    span, bucket_s = RANGES[range_name]
    until = time.time() if now is None else now
    return until - span, until, bucket_s


def _label(start: int, size: int) -> str:
    """A bucket's name in its tooltip: its UTC day, and hour."""
    return time.strftime("%m-%d %H:00" if size == HOUR_S else "%m-%d", time.gmtime(start))


def _axis(buckets: list[Bucket], size: int) -> list[str]:
    """The labels under a chart's axis: a few round hours (the day at midnight), or days."""
    names = [time.strftime("%H:00" if size == HOUR_S and b.start % DAY_S else "%m-%d", time.gmtime(b.start))
             for b in buckets]
    return sparse_labels(names, [b.start for b in buckets], size)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _labels(buckets: list[Bucket], size: int) -> list[str]:
    return [_label(b.start, size) for b in buckets]


def _counts(buckets: list[Bucket], size: int, outcomes: list[str], chart_id: str, title: str) -> str:
    return bar_chart(chart_id, title, _labels(buckets, size),
                     [{name: float(count) for name, count in b.outcomes.items()} for b in buckets],
                     outcome_colors(outcomes), lambda v: f"{v:g}", lambda name, v: f"{v:g} {name}", whole=True,
                     axis=_axis(buckets, size))


def _summary(overview: Overview) -> str:
    total = overview.total
    rows = [("Calls", str(total.calls)), ("Spend", f"${total.spend_usd:.4f}"), ("Barge-ins", str(total.barge_ins)),
            ("Turn latency p50", _ms(total.p50_ms)), ("Turn latency p95", _ms(total.p95_ms)),
            ("Turns measured", str(total.turns))]
    cells = "".join(f'<tr><th>{escape(name)}</th><td id="total-{escape(name.lower().replace(" ", "-"))}">'
                    f"{escape(value)}</td></tr>" for name, value in rows)
    outcomes = sorted(total.outcomes.items(), key=lambda item: (-item[1], item[0]))
    by_outcome = "".join(
        f'<tr class="outcome" data-outcome="{escape(name)}"><td>{escape(name)}</td><td class="count">{count}</td>'
        f"<td>{100 * count / total.calls:.1f} %</td></tr>" for name, count in outcomes)
    table = ('<table class="by-outcome" id="by-outcome"><thead><tr><th>Outcome</th><th>Calls</th><th>Share</th>'
             f"</tr></thead><tbody>{by_outcome}</tbody></table>") if outcomes else '<p id="no-calls">No call in this range.</p>'
    return f'<div class="summary"><table class="facts" id="totals">{cells}</table>{table}</div>'


def overview_page(session: ConsoleSession, overview: Overview, range_name: str) -> str:
    chosen, other = ' class="range chosen" aria-current="page"', ' class="range"'
    links = "".join(
        f'<a href="/console/overview?range={name}"{chosen if name == range_name else other} '
        f'data-range="{name}">{escape(label)}</a>' for name, label in RANGE_LABELS.items())
    head = (f'<nav class="ranges" id="ranges">{links}</nav><p class="hint">From {time_html(overview.since)} to '
            f"{time_html(overview.until)}; hours and days are UTC's.</p>")
    outcomes = sorted(overview.total.outcomes, key=lambda name: (-overview.total.outcomes[name], name))
    size = overview.bucket_s
    series = overview.latency
    per = "hour" if size == HOUR_S else "day"
    labels, axis = _labels(series, size), _axis(series, size)
    charts = [
        _counts(overview.hours, HOUR_S, outcomes, "chart-calls-hour", "Calls per hour, by outcome"),
        _counts(overview.days, DAY_S, outcomes, "chart-calls-day", "Calls per day, by outcome"),
        line_chart("chart-latency", f"Turn latency per {per} (p50, p95)", labels,
                   {"p50": [b.p50_ms for b in series], "p95": [b.p95_ms for b in series]}, LATENCY_COLORS,
                   lambda v: f"{v:g} ms", lambda name, v: f"{name} {v:.0f} ms", axis),
        bar_chart("chart-spend", f"Spend per {per} (USD)", labels, [{"spend": b.spend_usd} for b in series],
                  {"spend": "#4e89ae"}, lambda v: f"${v:g}", lambda name, v: f"${v:.4f}", axis=axis),
        bar_chart("chart-barge-ins", f"Barge-ins per {per}", labels, [{"barge-ins": float(b.barge_ins)} for b in series],
                  {"barge-ins": "#f4a259"}, lambda v: f"{v:g}", lambda name, v: f"{v:g} barge-in(s)", whole=True,
                  axis=axis),
    ]
    body = head + _summary(overview) + "".join(f'<div class="chart-box">{chart}</div>' for chart in charts)
    return page("Overview", "overview", body, session)
