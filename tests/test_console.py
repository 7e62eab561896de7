"""The web console (issue 9 part 8) over HTTP, against the real app under uvicorn: login and its cookie, CSRF and
origin checks, the throttle on failed logins, scoping, escaping, search and paging, the live view's event stream
while a call runs, and the live hub's fan-out (a slow browser is dropped, never waited for)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from html.parser import HTMLParser
from types import SimpleNamespace
from typing import Any, AsyncIterator

import httpx
import pytest

from gateway.api.auth import key_id
from gateway.call import BargeIn, CallStarted, TranscriptReceived
from gateway.console.hub import LiveHub
from gateway.console.session import ConsoleSessions
from gateway.tooling.replay import CallerTurn, load_sample, run_call
from gateway.state import MemoryState
from gateway.store import CallRecord, SessionChange, ToolRun, Turn

from .conftest import PRICED_AS_GPT_REALTIME, GatewayUnderTest, start_gateway
from .helpers import eventually

OPERATOR = "operator-key-aaaaaaaaaaaaaaaaaaaa"
ALICE = "alice-key-bbbbbbbbbbbbbbbbbbbbbbbb"
BOB = "bob-key-cccccccccccccccccccccccccc"
KEYS = dict(api_keys=(ALICE, BOB), operator_api_keys=(OPERATOR,), model_prices=PRICED_AS_GPT_REALTIME)


def sid(n: int) -> str:
    return "CA" + f"{n:032x}"


@contextlib.asynccontextmanager
async def console(**overrides: Any) -> AsyncIterator[GatewayUnderTest]:
    async with start_gateway(**{**KEYS, **overrides}) as gateway:
        yield gateway


def client_for(gateway: GatewayUnderTest) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway.http_url, headers={"Origin": gateway.http_url}, timeout=30)


async def login(client: httpx.AsyncClient, key: str) -> httpx.Response:
    response = await client.post("/console/login", data={"api_key": key})
    assert response.status_code == 303 and response.headers["location"] == "/console/live", response.text
    return response


def csrf_of(html: str) -> str:
    marker = 'name="csrf" value="'
    start = html.index(marker) + len(marker)
    return html[start:html.index('"', start)]


class Tags(HTMLParser):
    """Every start tag of a page, with its attributes."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def assert_no_active_content(html: str) -> None:
    """No script but the console's own file, no event-handler attribute, no javascript: URL."""
    for tag, attrs in Tags(html).tags:
        assert tag not in ("img", "iframe", "object", "embed"), tag
        if tag == "script":
            assert attrs.get("src") == "/console/static/console.js", attrs
        assert not [name for name in attrs if name.startswith("on")], (tag, attrs)
        assert not any((value or "").strip().lower().startswith("javascript:") for value in attrs.values())


async def test_login_sets_a_secure_http_only_strict_session_cookie_and_pages_need_it():
    async with console() as gateway, client_for(gateway) as client:
        assert (await client.get("/console/live")).headers["location"] == "/console/login"
        assert (await client.get("/console/live/events")).status_code == 401
        page = await client.get("/console/login")
        assert page.status_code == 200 and 'name="api_key"' in page.text
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
        assert_no_active_content(page.text)

        wrong = await client.post("/console/login", data={"api_key": "not-a-key-xxxxxxxxxxxxxxxxxx"})
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        assert "not a valid API key" in wrong.text

        response = await login(client, OPERATOR)
        cookie = response.headers["set-cookie"]
        flags = [part.strip().lower() for part in cookie.split(";")]
        name, _, value = flags[0].partition("=")
        assert name == "gateway_console" and len(value) >= 40
        assert "httponly" in flags and "samesite=strict" in flags and "path=/console" in flags
        assert "max-age=28800" in flags and "secure" not in flags  # plain http on 127.0.0.1, no https PUBLIC_URL
        assert OPERATOR.lower() not in cookie.lower() and key_id(OPERATOR) not in cookie
        live = await client.get("/console/live")
        assert live.status_code == 200 and f"key {key_id(OPERATOR)} (operator)" in live.text
        assert_no_active_content(live.text)
        assert (await client.get("/console/login")).headers["location"] == "/console/live"
        script = await client.get("/console/static/console.js")
        assert script.status_code == 200 and "EventSource" in script.text and "innerHTML" not in script.text

    async with console(public_url="https://console.example.test") as gateway:
        async with httpx.AsyncClient(base_url=gateway.http_url,
                                     headers={"Origin": "https://console.example.test"}) as client:
            response = await login(client, ALICE)
    assert "secure" in [part.strip().lower() for part in response.headers["set-cookie"].split(";")]


async def test_posts_need_the_consoles_origin_and_logout_its_csrf_token():
    async with console() as gateway, client_for(gateway) as client:
        async with httpx.AsyncClient(base_url=gateway.http_url) as bare:
            assert (await bare.post("/console/login", data={"api_key": ALICE})).status_code == 403  # no Origin
            foreign = await bare.post("/console/login", data={"api_key": ALICE},
                                      headers={"Origin": "https://evil.example"})
            assert foreign.status_code == 403 and "set-cookie" not in foreign.headers
            by_referer = await bare.post("/console/login", data={"api_key": ALICE},
                                         headers={"Referer": f"{gateway.http_url}/console/login"})
            assert by_referer.status_code == 303
        await login(client, ALICE)
        cookie = client.cookies["gateway_console"]
        token = csrf_of((await client.get("/console/live")).text)
        assert (await client.post("/console/logout", data={})).status_code == 403
        assert (await client.post("/console/logout", data={"csrf": "x" * 43})).status_code == 403
        forged = await client.post("/console/logout", data={"csrf": token}, headers={"Origin": "https://evil.example"})
        assert forged.status_code == 403
        assert (await client.get("/console/live")).status_code == 200  # still signed in

        # A live stream of this session ends with its logout.
        async with client.stream("GET", "/console/live/events") as stream:
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith("retry:")
            out = await client.post("/console/logout", data={"csrf": token})
            assert out.status_code == 303 and out.headers["location"] == "/console/login"
            assert 'gateway_console=""' in out.headers["set-cookie"] or "max-age=0" in out.headers["set-cookie"].lower()
            rest = await asyncio.wait_for(_drain(lines), 5)
        assert "event: snapshot" in rest
        # The old cookie is dead on the server, whoever still holds it.
        async with httpx.AsyncClient(base_url=gateway.http_url, cookies={"gateway_console": cookie}) as stale:
            assert (await stale.get("/console/live")).headers["location"] == "/console/login"


async def _drain(lines: Any) -> str:
    return "\n".join([line async for line in lines])


async def test_failed_logins_are_throttled_with_the_apis_own_limiter():
    async with console(api_auth_failures_per_minute=2) as gateway, client_for(gateway) as client:
        for _ in range(2):
            assert (await client.post("/console/login", data={"api_key": "wrong-key-zzzzzzzzzzzzzzzzz"})).status_code == 401
        throttled = await client.post("/console/login", data={"api_key": "wrong-key-zzzzzzzzzzzzzzzzz"})
        assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1
        assert "set-cookie" not in throttled.headers
        api = await client.get("/calls", headers={"authorization": "Bearer wrong-key-zzzzzzzzzzzzzzzzz"})
        assert api.status_code == 429  # one count per address and key, for the API and the console alike
        # A valid key is never throttled (issue 17): the same address logs in and uses the API.
        assert (await client.get("/calls", headers={"authorization": f"Bearer {OPERATOR}"})).status_code == 200
        assert (await client.post("/console/login", data={"api_key": OPERATOR})).status_code == 303


async def _store_calls(gateway: GatewayUnderTest) -> None:
    store = gateway.state.store
    now = time.time()
    for n in range(5):
        await store.finish_call(CallRecord(
            call_sid=sid(n), to="+14155550123", from_="+14155550100", direction="outbound-api", status="completed",
            api_key_id=key_id(ALICE), created_at=now - 100 + n, started_at=now - 100 + n, ended_at=now - 90 + n,
            outcome="completed", cost_usd=0.0123, turns=(Turn("hi", "hello there", latency_ms=480, t_ms=1200),)))
    await store.finish_call(CallRecord(call_sid=sid(9), to="+14155550100", from_="+14155550111", direction="inbound",
                                       status="completed", created_at=now - 50, outcome="failed"))


async def test_scoping_search_and_paging_are_the_apis():
    async with console() as gateway:
        await _store_calls(gateway)
        async with client_for(gateway) as alice, client_for(gateway) as bob, client_for(gateway) as operator:
            for client, key in ((alice, ALICE), (bob, BOB), (operator, OPERATOR)):
                await login(client, key)
            everything = (await operator.get("/console/calls")).text
            assert all(sid(n) in everything for n in (0, 1, 2, 3, 4, 9))
            mine = (await alice.get("/console/calls")).text
            assert all(sid(n) in mine for n in range(5)) and sid(9) not in mine
            assert 'id="no-calls"' in (await bob.get("/console/calls")).text
            assert (await alice.get(f"/console/calls/{sid(0)}")).status_code == 200
            assert (await operator.get(f"/console/calls/{sid(9)}")).status_code == 200
            for client, call_sid in ((bob, sid(0)), (alice, sid(9)), (alice, "CA../../etc")):
                hidden = await client.get(f"/console/calls/{call_sid}")
                assert hidden.status_code == 404
                assert (await client.get(f"/console/calls/{call_sid}/recording")).status_code == 404

            first = await operator.get("/console/calls", params={"limit": "2", "direction": "outbound", "outcome": ""})
            assert first.text.count('<tr class="call"') == 2 and sid(4) in first.text and sid(3) in first.text
            next_url = first.text.split('id="next-page" href="')[1].split('"')[0].replace("&amp;", "&")
            assert "direction=outbound" in next_url and "outcome" not in next_url
            second = await operator.get(next_url)
            assert sid(2) in second.text and sid(1) in second.text and sid(4) not in second.text
            inbound = await operator.get("/console/calls", params={"direction": "inbound"})
            assert sid(9) in inbound.text and sid(0) not in inbound.text
            bad = await operator.get("/console/calls", params={"number": "<script>"})
            assert bad.status_code == 400 and 'id="search-error"' in bad.text and "<script>" not in bad.text


async def test_untrusted_text_is_escaped_everywhere():
    hostile = '</p><script>alert(1)</script><img src=x onerror="alert(2)">'
    async with console() as gateway:
        await gateway.state.store.finish_call(CallRecord(
            call_sid=sid(7), to=hostile, from_='"><svg onload=alert(3)>', direction="inbound", status="completed",
            outcome="completed", end_reason=hostile, model=hostile, usage={hostile: 3},
            turns=(Turn(hostile, hostile, latency_ms=300, t_ms=500, barged_in=True, heard_ms=200),),
            tool_calls=(ToolRun(hostile, outcome=hostile, t_ms=700),),
            reconnects=(SessionChange(hostile, t_ms=900),), started_at=time.time() - 5, ended_at=time.time()))
        async with client_for(gateway) as client:
            await login(client, OPERATOR)
            page = await client.get(f"/console/calls/{sid(7)}")
            listing = await client.get("/console/calls")
    for html in (page.text, listing.text):
        assert "<script>alert" not in html and "<img src=x" not in html and "<svg onload" not in html
        assert_no_active_content(html)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert page.text.count("<svg") == 1  # the timeline, and only it


async def read_events(stream: httpx.Response, into: list[tuple[str, Any]]) -> None:
    kind = ""
    async for line in stream.aiter_lines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            into.append((kind, json.loads(line[6:])))


async def wait_for(events: list[tuple[str, Any]], check: Any, timeout_s: float = 30) -> None:
    """One of the live stream's ``events`` (kind, data) passes ``check``."""
    await eventually(lambda: any(check(kind, data) for kind, data in events), timeout_s, "a live stream event")


async def test_the_live_stream_shows_a_running_calls_transcript_and_its_page_follows(tmp_path):
    async with console(transcription_model="gpt-4o-mini-transcribe", record_calls_dir=str(tmp_path),
                       record_audio=True) as gateway:
        async with client_for(gateway) as operator, client_for(gateway) as bob:
            await login(operator, OPERATOR)
            await login(bob, BOB)
            seen: list[tuple[str, Any]] = []
            bobs: list[tuple[str, Any]] = []
            async with operator.stream("GET", "/console/live/events") as stream, \
                    bob.stream("GET", "/console/live/events") as bob_stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                readers = [asyncio.create_task(read_events(stream, seen)),
                           asyncio.create_task(read_events(bob_stream, bobs))]
                await wait_for(seen, lambda kind, data: kind == "snapshot")
                turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300),
                         CallerTurn(load_sample("caller_question"), after_silence_ms=2000)]
                call = asyncio.create_task(run_call(gateway.ws_url, turns, timeout_s=40, hangup_after_ms=500))
                # The caller's words arrive while the call still runs.
                await wait_for(seen, lambda kind, data: kind == "line" and data["who"] == "caller")
                assert not call.done()
                report = await call
                await wait_for(seen, lambda kind, data: kind == "ended" and data["call_sid"] == report.call_sid)
                for reader in readers:
                    reader.cancel()
        lines = [data for kind, data in seen if kind == "line" and data["call_sid"] == report.call_sid]
        assert {"caller", "agent"} <= {line["who"] for line in lines}
        assert any("ms of caller audio" in line["text"] for line in lines)
        started = [data for kind, data in seen if kind == "call" and data["call_sid"] == report.call_sid]
        assert started[0]["direction"] == "inbound" and started[-1]["turns"] >= 1 and started[-1]["cost_usd"] > 0
        assert [kind for kind, _ in bobs] == ["snapshot"] and bobs[0][1] == {"calls": []}  # not Bob's call

        async with client_for(gateway) as operator, client_for(gateway) as bob:
            await login(operator, OPERATOR)
            await login(bob, BOB)
            page = await operator.get(f"/console/calls/{report.call_sid}")
            audio = await operator.get(f"/console/calls/{report.call_sid}/recording")
            assert (await bob.get(f"/console/calls/{report.call_sid}")).status_code == 404
        record = await gateway.state.store.get_call(report.call_sid)
    assert page.status_code == 200
    assert f'<td id="cost">${record.cost_usd:.4f}</td>' in page.text
    assert record.turns[0].caller_transcript in page.text and "<polygon" in page.text  # the waveforms
    assert f'src="/console/calls/{report.call_sid}/recording"' in page.text
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
    assert audio.content == (tmp_path / record.recording).read_bytes()


async def test_sessions_expire_and_are_bounded():
    now = [1000.0]
    shared = MemoryState(clock=lambda: now[0])
    sessions = ConsoleSessions(60, max_sessions=3, clock=lambda: now[0], shared=shared)
    first, session = await sessions.create("k1", False)
    assert await sessions.get(first) == session and session.csrf_ok(session.csrf) and not session.csrf_ok("")
    assert await sessions.get("nope") is None and await sessions.get(None) is None
    assert await sessions.get("x" * 500) is None
    now[0] += 61
    assert await sessions.get(first) is None
    ids = [(await sessions.create(f"k{n}", False))[0] for n in range(5)]
    assert [await sessions.get(i) is not None for i in ids] == [False, False, True, True, True]


async def test_the_hub_scopes_calls_and_drops_a_slow_browser_without_waiting():
    async def owner_of(call_sid: str) -> Any:
        return SimpleNamespace(api_key_id="alice", to="+14155550123", from_="+14155550100")

    hub = LiveHub(owner_of=owner_of, queue_size=8)
    operator = hub.subscribe("op", True, "s1")
    alice = hub.subscribe("alice", False, "s2")
    bob = hub.subscribe("bob", False, "s3")
    slow = hub.subscribe("op2", True, "s4")
    for subscriber in (operator, alice, bob):
        assert (await subscriber.next(1)).startswith("event: snapshot")
    call = SimpleNamespace(call_sid=sid(1))
    hub.feed(call, CallStarted(sid(1), "MZ1", {}))
    assert alice.queue.empty()  # not known to be Alice's yet
    assert (await operator.next(1)).startswith("event: call")
    assert '"to":"+14155550123"' in await alice.next(1)  # once its record named her key
    await operator.next(1)
    started = time.perf_counter()
    for n in range(50):
        hub.feed(call, TranscriptReceived("user", f"item{n}", f"words {n}"))
        for subscriber in (operator, alice):
            assert f'"text":"words {n}"' in await subscriber.next(1)
    assert time.perf_counter() - started < 2
    assert await bob.next(0.01) == ""  # never Bob's
    hub.feed(call, BargeIn("item1", heard_ms=300, received_ms=900, cancelled_response=True))
    assert "the caller barged in: 300 ms of 900 ms heard" in await operator.next(1)
    await alice.next(1)
    assert slow.dropped and slow not in hub.subscribers and await slow.next(1) is None
    assert hub.dropped_subscribers == 1 and operator in hub.subscribers
    hub.call_ended(sid(1))
    assert (await operator.next(1)).startswith("event: ended")
    hub.end_session("s2")
    assert await alice.next(1) is None and alice not in hub.subscribers
    await hub.aclose()
    assert await operator.next(1) is None


def test_the_hub_never_fails_a_call():
    hub = LiveHub()
    hub.feed(SimpleNamespace(call_sid=sid(2)), TranscriptReceived("user", "i", "unknown call"))  # ignored
    hub.feed(object(), TranscriptReceived("user", "i", "no call_sid"))  # logged, not raised
    assert hub.calls == {}


@pytest.mark.parametrize("path", ["/console/", "/console"])
async def test_the_console_root_leads_to_the_login(path):
    async with console() as gateway, client_for(gateway) as client:
        response = await client.get(path, follow_redirects=True)
    assert response.status_code == 200 and response.url.path == "/console/login"


async def test_one_key_cannot_push_out_everyone_elses_logins() -> None:
    sessions = ConsoleSessions(3600, max_sessions=20)
    operator_cookie, _ = await sessions.create("operator", True)
    attacker = [(await sessions.create("attacker", False))[0] for _ in range(50)]
    assert await sessions.get(operator_cookie) is not None  # the attacker's own oldest logins went instead
    assert sum([await sessions.get(cookie) is not None for cookie in attacker]) == 10


async def test_one_session_cannot_hold_every_live_stream() -> None:
    hub = LiveHub()
    mine = [hub.subscribe("k1", False, "session-1") for _ in range(5)]
    assert sum(s is not None for s in mine) == 3
    assert hub.subscribe("k2", True, "session-2") is not None
