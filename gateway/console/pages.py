"""The console's HTML: the templates in ``templates/`` filled with escaped values (:func:`html.escape` on every
value that is not markup this module made). Transcripts, numbers, metadata and tool names are untrusted text."""

from __future__ import annotations

import statistics
from functools import cache
from html import escape
from importlib import resources
from string import Template
from typing import Any, Iterable
from urllib.parse import quote, urlencode

from gateway.console.session import ConsoleSession
from gateway.store import CallQuery, CallRecord
from gateway.store.model import _iso as iso_utc
from gateway.store.model import call_latency_ms

DIRECTIONS = (("", "any"), ("inbound", "inbound"), ("outbound", "outbound"))
SNIPPET_CHARS = 160  # of a tool's arguments or result, shown before "more"


@cache
def template(name: str) -> Template:
    return Template(resources.files("gateway.console").joinpath("templates", name).read_text(encoding="utf-8"))


def page(title: str, kind: str, main: str, session: ConsoleSession | None = None) -> str:
    nav = ""
    if session is not None:
        who = f"key {session.key_id}" + (" (operator)" if session.operator else "")
        nav = template("nav.html").substitute(who=escape(who), csrf=escape(session.csrf))
    return template("page.html").substitute(title=escape(title), page=escape(kind), nav=nav, main=main)


def login_page(error: str = "") -> str:
    shown = f'<p class="error" id="login-error">{escape(error)}</p>' if error else ""
    return page("Log in", "login", template("login.html").substitute(error=shown))


def live_page(session: ConsoleSession) -> str:
    return page("Live calls", "live", template("live.html").template, session)


def message_page(title: str, text: str, session: ConsoleSession | None = None) -> str:
    return page(title, "message", f'<p class="message">{escape(text)}</p>', session)


def call_url(call_sid: str) -> str:
    return "/console/calls/" + quote(call_sid, safe="")


def _cost(value: float | None) -> str:
    return "-" if value is None else f"${value:.4f}"


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else escape(str(value))


def time_html(epoch: float | None) -> str:
    """A moment as ``<time>``: ISO-8601 UTC in ``datetime`` (the console's script shows it in the browser's own time
    zone), the UTC text as the element's text (without script) and its tooltip."""
    if epoch is None:
        return "-"
    iso = iso_utc(epoch) or ""
    shown = iso.replace("T", " ").replace("Z", " UTC")
    return f'<time datetime="{iso}" title="{shown}">{shown}</time>'


def _duration(record: CallRecord) -> str:
    if record.started_at is None or record.ended_at is None:
        return "-"
    return f"{record.ended_at - record.started_at:.1f} s"


def _select(name: str, options: Iterable[tuple[str, str]], chosen: str) -> str:
    items = "".join(f'<option value="{escape(value)}"{" selected" if value == chosen else ""}>{escape(label)}</option>'
                    for value, label in options)
    return f'<select id="{name}" name="{name}">{items}</select>'


# The listing's sortable columns: (heading, sort name or None); the sort names are the store's whitelist.
COLUMNS = (("Call", None), ("Started", "started"), ("Direction", None), ("From", None), ("To", None),
           ("Outcome", "outcome"), ("Ended by", None), ("Turns", None), ("Latency", "latency"),
           ("Duration", "duration"), ("Cost", "cost"), ("Audio", None))


def _heading(label: str, sort: str | None, filters: dict[str, str], query: CallQuery) -> str:
    if sort is None:
        return f"<th>{escape(label)}</th>"
    current = query.sort == sort
    # A click on the current column turns its order round; on another, it sorts by it, largest (newest) first.
    descending = not query.descending if current else True
    link = {name: value for name, value in filters.items() if name not in ("cursor", "offset", "sort", "order")}
    link.update(sort=sort, order="desc" if descending else "asc")
    mark = (" ▼" if query.descending else " ▲") if current else ""
    state = ("descending" if query.descending else "ascending") if current else "none"
    return (f'<th aria-sort="{state}"><a class="sort" data-sort="{sort}" href="/console/calls?{escape(urlencode(link))}">'
            f"{escape(label)}{mark}</a></th>")


def calls_page(session: ConsoleSession, records: list[CallRecord], filters: dict[str, str], query: CallQuery,
               next_query: dict[str, str] | None, error: str = "") -> str:
    """The listing; ``next_query`` the query string of the next page (None: the last)."""
    def field(name: str, label: str, kind: str = "text", hint: str = "") -> str:
        return (f'<label for="{name}">{escape(label)}</label><input type="{kind}" id="{name}" name="{name}" '
                f'value="{escape(filters.get(name, ""))}" placeholder="{escape(hint)}">')

    kept = "".join(f'<input type="hidden" name="{name}" value="{escape(filters[name])}">'
                   for name in ("sort", "order") if filters.get(name))
    form = ('<form method="get" action="/console/calls" class="search" id="search">'
            + field("since", "From (UTC)", hint="2025-01-31T09:00:00Z")
            + field("until", "Until (UTC)", hint="2025-02-01")
            + '<label for="direction">Direction</label>' + _select("direction", DIRECTIONS, filters.get("direction", ""))
            + field("outcome", "Outcome", hint="completed")
            + field("number", "Number", hint="+14155550100")
            + field("limit", "Per page", "number", "50")
            + kept + '<button type="submit">Search</button></form>')
    exported = {name: value for name, value in filters.items() if name not in ("cursor", "offset", "limit")}
    export = (f'<p class="export"><a id="export-csv" href="/console/calls.csv?{escape(urlencode(exported))}" download>'
              "Export these calls as CSV</a></p>")
    shown_error = f'<p class="error" id="search-error">{escape(error)}</p>' if error else ""
    rows = []
    for record in records:
        latency = call_latency_ms(record)
        rows.append(
            f'<tr class="call" data-sid="{escape(record.call_sid)}">'
            f'<td><a href="{escape(call_url(record.call_sid))}">{escape(record.call_sid)}</a></td>'
            f"<td>{time_html(record.created_at)}</td><td>{_text(record.direction)}</td>"
            f"<td>{_text(record.from_)}</td><td>{_text(record.to)}</td><td>{_text(record.outcome or record.status)}</td>"
            f"<td>{_text(record.ended_by)}</td><td>{len(record.turns) + record.turns_not_recorded}</td>"
            f'<td>{"-" if latency is None else f"{latency:.0f} ms"}</td>'
            f"<td>{_duration(record)}</td><td>{_cost(record.cost_usd)}</td>"
            f"<td>{'yes' if record.recording else ''}</td></tr>")
    headings = "".join(_heading(label, sort, filters, query) for label, sort in COLUMNS)
    table = (f'<div class="table-scroll"><table class="calls" id="calls"><thead><tr>{headings}</tr></thead><tbody>'
             + "".join(rows) + "</tbody></table></div>")
    if not records:
        table = '<p id="no-calls">No call matches.</p>'
    more = ""
    if next_query:
        more = f'<p><a id="next-page" href="/console/calls?{escape(urlencode(next_query))}">Next page</a></p>'
    return page("Past calls", "calls", form + shown_error + export + table + more, session)


def _facts(record: CallRecord) -> str:
    usage = ", ".join(f"{escape(str(kind))} {int(count)}" for kind, count in sorted(record.usage.items())) or "-"
    rows = [
        ("Call SID", _text(record.call_sid)), ("Direction", _text(record.direction)),
        ("From", _text(record.from_)), ("To", _text(record.to)),
        ("Started", time_html(record.started_at if record.started_at is not None else record.created_at)),
        ("Ended", time_html(record.ended_at)), ("Duration", _duration(record)),
        ("Outcome", _text(record.outcome or record.status)), ("Ended by", _text(record.ended_by)),
        ("Why", _text(record.end_reason)), ("Model", _text(record.model)),
        ("Reconnects / rollovers", f"{len(record.reconnects)} / {len(record.rollovers)}"),
        ("Tokens", usage),
    ]
    cells = "".join(f"<tr><th>{escape(name)}</th><td>{value}</td></tr>" for name, value in rows)
    cost = f'<tr><th>Cost</th><td id="cost">{escape(_cost(record.cost_usd))}</td></tr>'
    return f'<table class="facts" id="facts">{cells}{cost}</table>'


def _latencies(record: CallRecord) -> str:
    values = [turn.latency_ms for turn in record.turns if turn.latency_ms is not None]
    ttfa = [turn.model_ttfa_ms for turn in record.turns if turn.model_ttfa_ms is not None]
    if not values and not ttfa:
        return '<p id="latencies">No turn latency was measured.</p>'
    parts = []
    if values:
        parts.append(f"turn latency (caller stopped to first agent audio): median {statistics.median(values):.0f} ms, "
                     f"max {max(values)} ms over {len(values)} turn(s)")
    if ttfa:
        parts.append(f"model time to first audio: median {statistics.median(ttfa):.0f} ms, max {max(ttfa)} ms")
    return '<p id="latencies">' + escape("; ".join(parts)) + "</p>"


def _line(kind: str, who: str, text: str | None) -> str:
    """One side of a turn; nothing when it has no words (no transcription, or nothing said)."""
    if text is None or not text.strip():
        return ""
    return f'<p class="line {kind}"><span class="who">{who}</span> <span class="text">{escape(text)}</span></p>'


def _transcript(record: CallRecord) -> str:
    if not record.turns:
        return '<p id="transcript">No turn was recorded.</p>'
    items = []
    for index, turn in enumerate(record.turns):
        when = "" if turn.t_ms is None else f"{turn.t_ms / 1000:.1f} s"
        seek = "" if turn.t_ms is None else f' data-seek="{turn.t_ms / 1000:.3f}"'  # the script plays from there
        badges = []
        if turn.latency_ms is not None:
            badges.append(f'<span class="badge latency">{turn.latency_ms} ms</span>')
        if turn.barged_in:
            badges.append('<span class="badge barge">barged in</span>')
        items.append(
            f'<li class="turn" data-turn="{index}"><span class="when"{seek}>{escape(when)}</span> {"".join(badges)}'
            f'{_line("caller", "Caller", turn.caller_transcript)}{_line("agent", "Agent", turn.agent_transcript)}</li>')
    more = (f"<p>{record.turns_not_recorded} more turn(s) were not recorded (a very long call).</p>"
            if record.turns_not_recorded else "")
    return '<ol class="transcript" id="transcript">' + "".join(items) + "</ol>" + more


def _tools(record: CallRecord) -> str:
    if not record.tool_calls:
        return ""
    rows = "".join(f'<tr class="tool-call"><td>{_text(None if run.t_ms is None else f"{run.t_ms / 1000:.1f} s")}</td>'
                   f"<td>{escape(run.name)}</td><td>{escape(run.outcome)}</td><td>{_text(run.duration_ms)}</td>"
                   f'<td class="arguments">{_snippet(run.arguments)}</td><td class="result">{_snippet(run.result)}</td>'
                   "</tr>" for run in record.tool_calls)
    return ('<h2>Tool calls</h2><table class="tools" id="tools"><thead><tr><th>When</th><th>Tool</th><th>Outcome</th>'
            f"<th>ms</th><th>Arguments</th><th>Result</th></tr></thead><tbody>{rows}</tbody></table>")


def _snippet(text: str | None) -> str:
    """A tool's arguments or result (untrusted): escaped, the first SNIPPET_CHARS shown, the rest (as much as the
    record keeps) behind a "more" toggle."""
    if text is None or text == "":
        return '<span class="none">-</span>'
    if len(text) <= SNIPPET_CHARS:
        return f"<code>{escape(text)}</code>"
    return (f"<details><summary><code>{escape(text[:SNIPPET_CHARS])}…</code> ({len(text)} characters)</summary>"
            f"<pre>{escape(text)}</pre></details>")


def call_page(session: ConsoleSession, record: CallRecord, svg: str, has_recording: bool) -> str:
    player = ""
    if has_recording:
        src = escape(call_url(record.call_sid) + "/recording")
        player = (f'<audio id="recording" controls preload="metadata" src="{src}"></audio>'
                  '<p class="hint">Caller left, agent right, as the caller heard it. Click the timeline to play from '
                  'there; the orange line follows the playback.</p>')
    main = (_facts(record) + '<h2>Timeline</h2><div class="timeline-box">' + svg + "</div>" + player
            + "<h2>Latencies</h2>" + _latencies(record) + "<h2>Transcript</h2>" + _transcript(record) + _tools(record))
    return page(f"Call {record.call_sid}", "call", main, session)
