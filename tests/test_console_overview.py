"""The console's views of many calls over HTTP, against the real app under uvicorn and a real store (memory, SQLite,
and PostgreSQL when one is reachable): the overview's figures and charts against records made in the store, the
listing's sort whitelist and its pages, and the CSV export (header, rows, formula-injection guard, scoping)."""

from __future__ import annotations

import contextlib
import csv
import io
import re
import time
from html import unescape
from typing import Any, AsyncIterator

import httpx
import pytest

from gateway.api.auth import key_id
from gateway.store import CallRecord, Turn

from .helpers import eventually
from .test_console import ALICE, BOB, OPERATOR, assert_no_active_content, client_for, console, login, sid
from .test_store_postgres import postgres_url  # noqa: F401  (a fixture: a fresh schema, or a skip with the reason)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store_url(request: Any, tmp_path: Any) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'records.db'}"
    return _pg_url(request.getfixturevalue("postgres_url"))


def _pg_url(conninfo: str) -> str:
    """The fixture's conninfo (key=value pairs) as the postgresql:// URL STORE_URL takes."""
    from urllib.parse import quote

    from psycopg.conninfo import conninfo_to_dict

    parts = conninfo_to_dict(conninfo)
    user = parts.get("user", "postgres")
    url = f"postgresql://{user}@{parts.get('host', '127.0.0.1')}:{parts.get('port', 5432)}/{parts.get('dbname', 'test')}"
    return url + "?options=" + quote(parts["options"], safe="")


def turns(*latencies: int, barge_ins: int = 0) -> tuple[Turn, ...]:
    return tuple(Turn("words", "answer", latency_ms=ms, t_ms=1000 * (n + 1), barged_in=n < barge_ins, heard_ms=200)
                 for n, ms in enumerate(latencies))


async def make_calls(store: Any, now: float) -> None:
    """Alice's and Bob's calls in the last 24 hours, one of Alice's three days ago, one 40 days ago (out of every
    range), and an inbound call nobody's key placed, still in progress."""
    alice, bob = key_id(ALICE), key_id(BOB)
    made = [
        (1, alice, now - 600, "completed", 0.10, turns(100, 300, barge_ins=1)),
        (2, alice, now - 7200, "failed", 0.05, turns(200)),
        (3, bob, now - 3 * 3600, "completed", 0.20, turns(400, 500, 900, barge_ins=2)),
        (4, None, now - 1800, None, None, ()),
        (5, alice, now - 3 * 86400, "completed", 1.00, turns(1000)),
        (6, alice, now - 40 * 86400, "completed", 5.00, turns(50, barge_ins=1)),
    ]
    for n, key, created, outcome, cost, call_turns in made:
        await store.upsert_call(CallRecord(
            call_sid=sid(n), to="+14155550123", from_="+14155550100", api_key_id=key,
            direction="inbound" if key is None else "outbound-api",
            status="in-progress" if outcome is None else "completed", created_at=created, started_at=created,
            ended_at=None if outcome is None else created + 10 * n, outcome=outcome, cost_usd=cost, turns=call_turns))


def figure(html: str, name: str) -> str:
    match = re.search(rf'id="total-{name}">([^<]*)<', html)
    assert match, name
    return unescape(match.group(1))


def outcomes(html: str) -> dict[str, int]:
    return {name: int(count) for name, count in
            re.findall(r'data-outcome="([^"]+)"><td>[^<]*</td><td class="count">(\d+)</td>', html)}


def chart_total(html: str, chart_id: str) -> float:
    """The sum of the values in a bar chart's tooltips ("label: N what")."""
    svg = html.split(f'id="{chart_id}"', 1)[1].split("</svg>", 1)[0]
    return sum(float(value) for value in re.findall(r'<rect class="bar"[^>]*><title>[^<]*?: \$?([0-9.]+)[^<]*</title>', svg))


@contextlib.asynccontextmanager
async def signed_in(gateway: Any, *keys: str) -> AsyncIterator[list[httpx.AsyncClient]]:
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(client_for(gateway)) for _ in keys]
        for client, key in zip(clients, keys):
            await login(client, key)
        yield clients


async def test_the_overview_shows_the_stores_figures_scoped_by_key(store_url):
    async with console(store_url=store_url) as gateway:
        await make_calls(gateway.state.store, time.time())
        async with signed_in(gateway, OPERATOR, ALICE, BOB) as (operator, alice, bob):
            day = await operator.get("/console/overview")
            week = await operator.get("/console/overview", params={"range": "7d"})
            alices = await alice.get("/console/overview", params={"range": "24h"})
            bobs = await bob.get("/console/overview", params={"range": "30d"})
            bad = await operator.get("/console/overview", params={"range": "1y'; DROP TABLE calls; --"})
            nav = (await operator.get("/console/calls")).text
    assert day.status_code == week.status_code == alices.status_code == bobs.status_code == 200
    # The last 24 hours, every call: 4 calls, 6 measured turns [100 200 300 400 500 900]: p50 the 3rd, p95 the 6th.
    html = day.text
    assert (figure(html, "calls"), figure(html, "spend"), figure(html, "barge-ins")) == ("4", "$0.3500", "3")
    assert (figure(html, "turn-latency-p50"), figure(html, "turn-latency-p95"), figure(html, "turns-measured")) == (
        "300 ms", "900 ms", "6")
    assert outcomes(html) == {"completed": 2, "failed": 1, "in-progress": 1}
    assert chart_total(html, "chart-calls-hour") == 4 and chart_total(html, "chart-calls-day") == 4
    assert round(chart_total(html, "chart-spend"), 4) == 0.35 and chart_total(html, "chart-barge-ins") == 3
    assert html.count('<circle class="point"') >= 2  # p50 and p95 of at least one hour
    # Seven days: Alice's older call joins; 7 turns: p50 the 4th (400), p95 the 7th (1000).
    assert (figure(week.text, "calls"), figure(week.text, "spend")) == ("5", "$1.3500")
    assert (figure(week.text, "turn-latency-p50"), figure(week.text, "turn-latency-p95")) == ("400 ms", "1000 ms")
    assert chart_total(week.text, "chart-calls-day") == 5 and chart_total(week.text, "chart-calls-hour") == 5
    # A key that is not an operator's sees the calls it placed only.
    assert (figure(alices.text, "calls"), figure(alices.text, "spend"), figure(alices.text, "barge-ins")) == (
        "2", "$0.1500", "1")
    assert (figure(alices.text, "turn-latency-p50"), figure(alices.text, "turn-latency-p95")) == ("200 ms", "300 ms")
    assert outcomes(alices.text) == {"completed": 1, "failed": 1}
    assert (figure(bobs.text, "calls"), figure(bobs.text, "turn-latency-p50")) == ("1", "500 ms")
    assert bad.status_code == 400 and "DROP TABLE" not in bad.text
    assert 'href="/console/overview"' in nav


async def test_the_overview_of_an_empty_range_without_a_session_and_of_hostile_words():
    hostile = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
    async with console() as gateway, client_for(gateway) as client:
        assert (await client.get("/console/overview")).headers["location"] == "/console/login"
        await login(client, OPERATOR)
        empty = await client.get("/console/overview", params={"range": "30d"})
        await gateway.state.store.upsert_call(CallRecord(
            call_sid=sid(1), to="+14155550123", from_="+14155550100", direction="inbound", status="completed",
            outcome=hostile, created_at=time.time() - 60, cost_usd=0.5, turns=turns(700)))
        shown = await client.get("/console/overview")
    assert empty.status_code == 200 and figure(empty.text, "calls") == "0" and 'id="no-calls"' in empty.text
    assert figure(empty.text, "turn-latency-p50") == "-" and empty.text.count('class="chart"') == 5
    assert figure(shown.text, "calls") == "1" and "&lt;script&gt;alert(1)&lt;/script&gt;" in shown.text
    assert "<script>alert" not in shown.text and "<img src=x" not in shown.text
    assert_no_active_content(shown.text)
    assert_no_active_content(empty.text)


def listed(html: str) -> list[str]:
    return re.findall(r'<tr class="call" data-sid="([^"]+)"', html)


async def test_the_listing_sorts_by_whitelisted_columns_only(store_url):
    async with console(store_url=store_url) as gateway:
        now = time.time()
        await make_calls(gateway.state.store, now)
        async with signed_in(gateway, OPERATOR) as (operator,):
            async def order(**params: str) -> list[str]:
                response = await operator.get("/console/calls", params=params)
                assert response.status_code == 200, response.text
                return listed(response.text)

            newest = [sid(n) for n in (1, 4, 2, 3, 5, 6)]
            assert await order() == newest
            assert await order(sort="started", order="asc") == newest[::-1]
            # Costs 0.10 0.05 0.20 - 1.00 5.00; no cost sorts as the smallest.
            assert await order(sort="cost", order="desc") == [sid(n) for n in (6, 5, 3, 1, 2, 4)]
            assert await order(sort="cost", order="asc") == [sid(n) for n in (4, 2, 1, 3, 5, 6)]
            # Durations 10 n s; call 4 has none.
            assert await order(sort="duration") == [sid(n) for n in (6, 5, 3, 2, 1, 4)]
            # The call's median turn latency: 1: 100, 2: 200, 3: 500, 4: none, 5: 1000, 6: 50.
            assert await order(sort="latency", order="asc") == [sid(n) for n in (4, 6, 1, 2, 3, 5)]
            assert (await order(sort="outcome", order="asc"))[-1] == sid(4)  # "in-progress" after "failed"
            # A sorted listing pages by offset; the links keep the sort.
            first = await operator.get("/console/calls", params={"sort": "cost", "order": "asc", "limit": "4"})
            assert listed(first.text) == [sid(n) for n in (4, 2, 1, 3)]
            following = unescape(first.text.split('id="next-page" href="')[1].split('"')[0])
            assert "offset=4" in following and "sort=cost" in following and "order=asc" in following
            assert listed((await operator.get(following)).text) == [sid(5), sid(6)]
            heading = unescape(re.search(r'data-sort="cost" href="([^"]+)"', first.text).group(1))
            assert "order=desc" in heading and "offset" not in heading  # a click turns the current order round

            for hostile in ({"sort": "created_at; DROP TABLE calls"}, {"sort": "cost_usd"}, {"sort": "1"},
                            {"sort": "(SELECT 1)"}, {"order": "desc; DELETE FROM calls"}, {"order": "sideways"},
                            {"offset": "-1"}, {"offset": "99999999"}, {"offset": "1e3"}):
                refused = await operator.get("/console/calls", params=hostile)
                assert refused.status_code == 400 and 'id="search-error"' in refused.text, hostile
                if "offset" not in hostile:  # the export has no pages: it ignores offsets
                    assert (await operator.get("/console/calls.csv", params=hostile)).status_code == 400
            assert await order() == newest  # every record still there
            assert_no_active_content((await operator.get("/console/calls", params={"sort": "latency"})).text)


def rows_of(response: httpx.Response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(response.text)))


async def test_the_csv_export_holds_the_filtered_sorted_calls_scoped_and_defused(store_url):
    async with console(store_url=store_url) as gateway:
        now = time.time()
        store = gateway.state.store
        await make_calls(store, now)
        await store.upsert_call(CallRecord(
            call_sid=sid(7), to="=HYPERLINK(\"http://evil.example\",\"click\")", from_="@SUM(A1:A9)",
            direction="inbound", status="completed", outcome="completed", end_reason="-2+3 \"quoted\", comma",
            model="\tcmd|' /C calc'!A0", created_at=now - 60, started_at=now - 60, ended_at=now - 30))
        async with signed_in(gateway, OPERATOR, ALICE) as (operator, alice):
            everything = await operator.get("/console/calls.csv")
            sorted_ = await operator.get("/console/calls.csv", params={"sort": "cost", "order": "desc",
                                                                       "limit": "1", "cursor": "x"})
            filtered = await operator.get("/console/calls.csv", params={"outcome": "failed"})
            alices = await alice.get("/console/calls.csv")
        async with client_for(gateway) as stranger:
            assert (await stranger.get("/console/calls.csv")).status_code == 401
    assert everything.status_code == 200 and everything.headers["content-type"].startswith("text/csv")
    assert everything.headers["content-disposition"].startswith("attachment; filename=\"calls-")
    rows = rows_of(everything)
    header, body = rows[0], rows[1:]
    assert header[:3] == ["call_sid", "started_at_utc", "ended_at_utc"] and "cost_usd" in header
    assert [row[0] for row in body] == [sid(n) for n in (7, 1, 4, 2, 3, 5, 6)]
    hostile = dict(zip(header, body[0]))
    assert hostile["to"] == "'=HYPERLINK(\"http://evil.example\",\"click\")"
    assert hostile["from"] == "'@SUM(A1:A9)" and hostile["model"] == "'\tcmd|' /C calc'!A0"
    assert hostile["end_reason"] == "'-2+3 \"quoted\", comma"
    first = dict(zip(header, body[1]))
    assert first["from"] == "'+14155550100" and first["cost_usd"] == "0.1" and first["latency_ms"] == "100"
    assert first["started_at_utc"].endswith("Z") and first["duration_s"] == "10.0" and first["barge_ins"] == "1"
    assert all(not cell or cell[0] not in "=+-@\t\r" for row in body for cell in row)
    # The listing's sort applies; its page size and cursor do not (the export is every matching call).
    assert [row[0] for row in rows_of(sorted_)[1:]] == [sid(n) for n in (6, 5, 3, 1, 2, 7, 4)]  # no cost: last, newest first
    assert [row[0] for row in rows_of(filtered)[1:]] == [sid(2)]
    assert [row[0] for row in rows_of(alices)[1:]] == [sid(n) for n in (1, 2, 5, 6)]


async def test_a_calls_page_shows_tool_runs_with_arguments_and_results_and_no_empty_lines():
    hostile = '<script>alert(1)</script>'
    long_result = '{"rows": "' + "x" * 1500 + '"}'
    async with console() as gateway:
        record = CallRecord(
            call_sid=sid(8), to="+14155550123", from_="+14155550100", direction="inbound", status="completed",
            outcome="completed", started_at=time.time() - 20, ended_at=time.time(),
            turns=(Turn(None, "Hello, how can I help?", latency_ms=300, t_ms=500),
                   Turn("", "Anything else?", latency_ms=350, t_ms=4000),
                   Turn("What time is it?", "", latency_ms=None, t_ms=9000)),
            tool_calls=(), )
        from gateway.store.model import as_final_record

        final = as_final_record({**record.to_json(), "from": record.from_, "tools": [
            {"name": "lookup_order", "outcome": "ok", "duration_ms": 41, "t_ms": 4200,
             "arguments": '{"order": "' + hostile + '"}', "result": long_result},
            {"name": "get_time", "outcome": "error", "duration_ms": 3, "t_ms": 9100, "arguments": "{}",
             "result": '{"error": "' + "y" * 5000 + '"}'}]})
        await gateway.state.store.finish_call(final)
        async with signed_in(gateway, OPERATOR) as (operator,):
            page = await operator.get(f"/console/calls/{sid(8)}")
    html = page.text
    assert page.status_code == 200
    tools = html.split('id="tools"', 1)[1].split("</table>", 1)[0]
    assert "<th>Arguments</th><th>Result</th>" in tools
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in tools and "<script>alert" not in html
    assert "<details>" in tools and "(1512 characters)" in tools  # long: the start, the rest behind "more"
    assert "(2000 characters)" in tools and "y" * 2001 not in html  # the record keeps 2000 characters at most
    transcript = html.split('id="transcript"', 1)[1].split("</ol>", 1)[0]
    assert transcript.count('class="line caller"') == 1 and transcript.count('class="line agent"') == 2
    assert '<span class="text"></span>' not in transcript
    svg = html.split("<svg", 1)[1].split("</svg>", 1)[0]
    assert ">agent (heard)</text>" in svg and 'text-anchor="end"' in svg
    label_x = int(re.search(r'<text x="(\d+)" y="\d+" text-anchor="end"[^>]*>agent \(heard\)', svg).group(1))
    assert label_x - len("agent (heard)") * 8 > 0  # the whole label inside the drawing, even at 8 px a character
    assert 'id="timeline-legend"' in svg and all(f">{what}</text>" in svg for what in (
        "caller", "agent as heard", "turn latency", "barge-in (agent cut)", "tool call", "playhead"))
    assert 'id="playhead"' in svg and 'data-seconds="' in html
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ" title="[^"]+ UTC">', html)


def test_the_console_draws_its_timeline_without_the_replay_harness():
    import subprocess
    import sys

    code = ("import sys, gateway.server.app\n"
            "from gateway.console.timeline import timeline_svg, recording_envelopes\n"
            "from gateway.store import CallRecord, Turn\n"
            "svg = timeline_svg(CallRecord(call_sid='CA' + '0' * 32, to='', from_='', turns=(Turn('a', 'b', "
            "latency_ms=3, t_ms=5),)))\n"
            "assert svg.startswith('<svg')\n"
            "print(sorted(m for m in sys.modules if m.startswith(('gateway.tooling.replay', 'matplotlib'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


TOOL_SCRIPT = """
[[replies]]
say = "Let me look that up."
function_call = { name = "check_order", arguments = { order_id = "A-1234<b>", include_items = true } }
[[replies]]
when_function_output = true
say = "Your order has shipped."
"""


async def test_a_calls_record_keeps_its_tool_runs_arguments_and_result_for_its_page(tmp_path):
    from gateway.tooling.replay import CallerTurn, load_sample, run_call

    script = tmp_path / "script.toml"
    script.write_text(TOOL_SCRIPT)
    async with console(local_agent=f"scripted:{script}", tools_module="tests.sample_tools") as gateway:
        turns = [CallerTurn(load_sample("caller_question"), after_silence_ms=300)]
        report = await run_call(gateway.ws_url, turns, timeout_s=40, hangup_after_ms=2500)
        async def final_record() -> Any:
            record = await gateway.state.store.get_call(report.call_sid)
            return record if record is not None and record.ended_at is not None else None
        record = await eventually(final_record, what="the final record (written as the stream closes)")
        async with signed_in(gateway, OPERATOR) as (operator,):
            page = await operator.get(f"/console/calls/{report.call_sid}")
    run = record.tool_calls[0]
    assert run.name == "check_order" and run.outcome == "ok"
    assert '"order_id": "A-1234<b>"' in run.arguments and '"include_items": true' in run.arguments
    assert '"status": "shipped"' in run.result and "kettle" in run.result
    tools = page.text.split('id="tools"', 1)[1].split("</table>", 1)[0]
    assert "A-1234&lt;b&gt;" in tools and "kettle" in tools and "A-1234<b>" not in tools
