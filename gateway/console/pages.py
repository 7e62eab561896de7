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
from gateway.store import CallRecord

DIRECTIONS = (("", "any"), ("inbound", "inbound"), ("outbound", "outbound"))


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


def _duration(record: CallRecord) -> str:
    if record.started_at is None or record.ended_at is None:
        return "-"
    return f"{record.ended_at - record.started_at:.1f} s"


def _select(name: str, options: Iterable[tuple[str, str]], chosen: str) -> str:
    items = "".join(f'<option value="{escape(value)}"{" selected" if value == chosen else ""}>{escape(label)}</option>'
                    for value, label in options)
    return f'<select id="{name}" name="{name}">{items}</select>'


def calls_page(session: ConsoleSession, records: list[CallRecord], filters: dict[str, str], next_cursor: str | None,
               error: str = "") -> str:
    def field(name: str, label: str, kind: str = "text", hint: str = "") -> str:
        return (f'<label for="{name}">{escape(label)}</label><input type="{kind}" id="{name}" name="{name}" '
                f'value="{escape(filters.get(name, ""))}" placeholder="{escape(hint)}">')

    form = ('<form method="get" action="/console/calls" class="search" id="search">'
            + field("since", "From (UTC)", hint="2025-01-31T09:00:00Z")
            + field("until", "Until (UTC)", hint="2025-02-01")
            + '<label for="direction">Direction</label>' + _select("direction", DIRECTIONS, filters.get("direction", ""))
            + field("outcome", "Outcome", hint="completed")
            + field("number", "Number", hint="+14155550100")
            + field("limit", "Per page", "number", "50")
            + '<button type="submit">Search</button></form>')
    shown_error = f'<p class="error" id="search-error">{escape(error)}</p>' if error else ""
    rows = []
    for record in records:
        rows.append(
            f'<tr class="call" data-sid="{escape(record.call_sid)}">'
            f'<td><a href="{escape(call_url(record.call_sid))}">{escape(record.call_sid)}</a></td>'
            f"<td>{_text(record.summary_json()['created_at'])}</td><td>{_text(record.direction)}</td>"
            f"<td>{_text(record.from_)}</td><td>{_text(record.to)}</td><td>{_text(record.outcome or record.status)}</td>"
            f"<td>{_text(record.ended_by)}</td><td>{len(record.turns) + record.turns_not_recorded}</td>"
            f"<td>{_duration(record)}</td><td>{_cost(record.cost_usd)}</td>"
            f"<td>{'yes' if record.recording else ''}</td></tr>")
    table = ('<table class="calls" id="calls"><thead><tr><th>Call</th><th>Started (UTC)</th><th>Direction</th>'
             '<th>From</th><th>To</th><th>Outcome</th><th>Ended by</th><th>Turns</th><th>Duration</th><th>Cost</th>'
             '<th>Recording</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>")
    if not records:
        table = '<p id="no-calls">No call matches.</p>'
    more = ""
    if next_cursor:
        query = {name: value for name, value in filters.items() if value and name != "cursor"}
        query["cursor"] = next_cursor
        more = f'<p><a id="next-page" href="/console/calls?{escape(urlencode(query))}">Next page</a></p>'
    return page("Past calls", "calls", form + shown_error + table + more, session)


def _facts(record: CallRecord) -> str:
    summary = record.summary_json()
    usage = ", ".join(f"{escape(str(kind))} {int(count)}" for kind, count in sorted(record.usage.items())) or "-"
    rows = [
        ("Call SID", _text(record.call_sid)), ("Direction", _text(record.direction)),
        ("From", _text(record.from_)), ("To", _text(record.to)),
        ("Started (UTC)", _text(summary["started_at"] or summary["created_at"])),
        ("Ended (UTC)", _text(summary["ended_at"])), ("Duration", _duration(record)),
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


def _transcript(record: CallRecord) -> str:
    if not record.turns:
        return '<p id="transcript">No turn was recorded.</p>'
    items = []
    for index, turn in enumerate(record.turns):
        when = "" if turn.t_ms is None else f"{turn.t_ms / 1000:.1f} s"
        badges = []
        if turn.latency_ms is not None:
            badges.append(f'<span class="badge latency">{turn.latency_ms} ms</span>')
        if turn.barged_in:
            badges.append('<span class="badge barge">barged in</span>')
        caller = turn.caller_transcript
        caller_line = ("" if caller is None else
                       f'<p class="line caller"><span class="who">Caller</span> <span class="text">{escape(caller)}</span></p>')
        items.append(
            f'<li class="turn" data-turn="{index}"><span class="when">{escape(when)}</span> {"".join(badges)}'
            f'{caller_line}<p class="line agent"><span class="who">Agent</span> '
            f'<span class="text">{escape(turn.agent_transcript)}</span></p></li>')
    more = (f"<p>{record.turns_not_recorded} more turn(s) were not recorded (a very long call).</p>"
            if record.turns_not_recorded else "")
    return '<ol class="transcript" id="transcript">' + "".join(items) + "</ol>" + more


def _tools(record: CallRecord) -> str:
    if not record.tool_calls:
        return ""
    rows = "".join(f"<tr><td>{_text(None if run.t_ms is None else f'{run.t_ms / 1000:.1f} s')}</td>"
                   f"<td>{escape(run.name)}</td><td>{escape(run.outcome)}</td><td>{_text(run.duration_ms)}</td></tr>"
                   for run in record.tool_calls)
    return ('<h2>Tool calls</h2><table class="tools" id="tools"><thead><tr><th>When</th><th>Tool</th><th>Outcome</th>'
            f"<th>ms</th></tr></thead><tbody>{rows}</tbody></table>")


def call_page(session: ConsoleSession, record: CallRecord, svg: str, has_recording: bool) -> str:
    player = ""
    if has_recording:
        src = escape(call_url(record.call_sid) + "/recording")
        player = (f'<h2>Recording</h2><audio id="recording" controls preload="metadata" src="{src}"></audio>'
                  '<p class="hint">Caller left, agent right, as the caller heard it.</p>')
    main = (_facts(record) + '<h2>Timeline</h2><div class="timeline-box">' + svg + "</div>" + player
            + "<h2>Latencies</h2>" + _latencies(record) + "<h2>Transcript</h2>" + _transcript(record) + _tools(record))
    return page(f"Call {record.call_sid}", "call", main, session)
