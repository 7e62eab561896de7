"""The console across workers and instances (issue 17): logins in the shared state, so any worker (``gateway serve
--workers 2``, real processes sharing one SQLite state file) or instance (two gateways sharing one Redis) accepts
them, and a logout ends them everywhere; the live page shows the calls of every instance, their transcript relayed
from the instance that holds them.

Redis tests use ``redis://127.0.0.1:6379/15`` with a key prefix of their own and skip, saying why, without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any, AsyncIterator

import httpx
import pytest

from gateway.api.auth import key_id
from gateway.call import CallStarted, TranscriptReceived
from gateway.console.hub import LiveHub
from gateway.tooling.fuzz import _clean_env
from gateway.observe import metrics
from gateway.tooling.replay import CallerTurn, load_sample, run_call
from gateway.server.runner import free_port
from gateway.state import MemoryState, RedisState, SQLiteState
from gateway.state.base import LiveBatch
from gateway.store import CallRecord

from .conftest import GatewayUnderTest, start_gateway
from .test_console import OPERATOR, client_for, csrf_of, login, read_events, wait_for
from .helpers import call_sid_of, serving
from .test_control import REDIS_URL, redis_or_skip

ALICE = "alice-key-bbbbbbbbbbbbbbbbbbbbbbbb"
KEYS = dict(api_keys=(ALICE,), operator_api_keys=(OPERATOR,))
ALICES_CALL = "CA" + "a2" * 16
CALL = "CA" + "c3" * 16


async def one_request(base: str, cookie: str, path: str = "/console/live") -> httpx.Response:
    """A request on a connection of its own: the kernel may hand it to any worker."""
    async with httpx.AsyncClient(base_url=base, cookies={"gateway_console": cookie}, timeout=10,
                                 headers={"Connection": "close"}) as http:
        return await http.get(path)


async def test_one_login_holds_on_every_worker_and_a_logout_ends_it_on_all(tmp_path) -> None:
    port = free_port()
    env = {**_clean_env(), "STORE_URL": f"sqlite:///{tmp_path}/records.db", "API_KEYS": ALICE,
           "OPERATOR_API_KEYS": OPERATOR}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--workers", "2", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        await serving(base, proc, "/readyz")
        async with httpx.AsyncClient(base_url=base, headers={"Origin": base, "Connection": "close"}) as http:
            await login(http, OPERATOR)
            cookie = http.cookies["gateway_console"]
        pages = [await one_request(base, cookie) for _ in range(24)]
        assert [page.status_code for page in pages] == [200] * 24, [page.headers.get("location") for page in pages]
        token = csrf_of(pages[-1].text)

        # Live streams on whichever workers took them show the calls of every worker, with their transcripts.
        async with contextlib.AsyncExitStack() as streams:
            seen = [await streams.enter_async_context(one_stream(base, cookie)) for _ in range(3)]
            for events in seen:
                await wait_for(events, lambda kind, data: kind == "snapshot")
            sids = [f"CA{0xc0ffee00 + n:032x}" for n in range(2)]
            await asyncio.gather(*(webhook_call(base, port, call_sid) for call_sid in sids))
            for events in seen:
                for call_sid in sids:
                    await wait_for(events, lambda kind, data, sid=call_sid: kind == "line" and data["call_sid"] == sid)
        async with httpx.AsyncClient(base_url=base, headers={"Origin": base, "Connection": "close"},
                                     cookies={"gateway_console": cookie}) as http:
            assert (await http.post("/console/logout", data={"csrf": token})).status_code == 303
        after = [await one_request(base, cookie) for _ in range(12)]
        assert [page.headers.get("location") for page in after] == ["/console/login"] * 12
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def webhook_call(base: str, port: int, call_sid: str) -> None:
    """A call as Twilio makes it: the webhook on one worker, the stream on whichever takes it."""
    async with httpx.AsyncClient(base_url=base, headers={"Connection": "close"}) as http:
        twiml = (await http.post("/incoming-call", data={"CallSid": call_sid})).text
    path = re.search(r'url="wss?://[^/"]+(/media-stream/[^"]+)"', twiml).group(1)
    await run_call(f"ws://127.0.0.1:{port}{path}", [CallerTurn(load_sample("caller_hello"), after_silence_ms=300)],
                   timeout_s=30, hangup_after_ms=1500, call_sid=call_sid)


@contextlib.asynccontextmanager
async def redis_instances(monkeypatch: Any, count: int = 2, **overrides: Any) -> AsyncIterator[list[GatewayUnderTest]]:
    """``count`` gateways sharing one Redis under a key prefix of this test's own."""
    await redis_or_skip()
    prefix = f"test-console-{secrets.token_hex(6)}:"
    monkeypatch.setattr("gateway.server.app.open_state", lambda url, *args, **kwargs: RedisState(url, prefix=prefix))
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(start_gateway(
            redis_url=REDIS_URL, instance_id=f"console-{n}-{secrets.token_hex(4)}", outbound_rate_limit_per_minute=100,
            **{**KEYS, **overrides})) for n in range(count)]


async def test_a_login_on_one_instance_holds_on_another_and_a_logout_on_either_ends_it(monkeypatch) -> None:
    async with redis_instances(monkeypatch) as (a, b):
        async with client_for(a) as http:
            await login(http, ALICE)
            cookie = http.cookies["gateway_console"]
        for gateway in (a, b) * 6:
            page = await one_request(gateway.http_url, cookie)
            assert page.status_code == 200 and "key " in page.text, page.headers.get("location")
        token = csrf_of(page.text)
        async with one_stream(a.http_url, cookie) as seen:
            await wait_for(seen, lambda kind, data: kind == "snapshot")
            async with httpx.AsyncClient(base_url=b.http_url, headers={"Origin": b.http_url},
                                         cookies={"gateway_console": cookie}) as http:
                assert (await http.post("/console/logout", data={"csrf": token})).status_code == 303
            # The session's live stream on A ends with the logout on B (not at its next check, 10 s away).
            await asyncio.wait_for(seen.ended.wait(), 5)
        for gateway in (a, b):
            assert (await one_request(gateway.http_url, cookie)).headers.get("location") == "/console/login"
            assert (await one_request(gateway.http_url, cookie, "/console/live/events")).status_code == 401


async def test_without_the_shared_state_the_console_answers_503_never_lets_a_request_through() -> None:
    async with start_gateway(**KEYS) as gateway, client_for(gateway) as http:
        await login(http, OPERATOR)
        gateway.state.console_sessions.shared = RedisState("redis://127.0.0.1:1/0", timeout_s=0.3)
        page = await http.get("/console/live")
        assert page.status_code == 503 and "shared state" in page.text
        action = await http.post(f"/console/live/calls/CA{'a' * 32}/hangup", data={"csrf": "x"})
        assert action.status_code == 503 and action.json()["error"]["code"] == "state_unavailable"
        async with client_for(gateway) as other:
            refused = await other.post("/console/login", data={"api_key": ALICE})
        assert refused.status_code == 503 and "set-cookie" not in refused.headers


async def test_a_call_held_by_one_instance_shows_live_with_its_transcript_on_another(monkeypatch) -> None:
    async with redis_instances(monkeypatch, transcription_model="gpt-4o-mini-transcribe") as (a, b):
        async with client_for(b) as operator, client_for(b) as alice:
            await login(operator, OPERATOR)
            await login(alice, ALICE)
            async with one_stream(b.http_url, operator.cookies["gateway_console"]) as seen, \
                    one_stream(b.http_url, alice.cookies["gateway_console"]) as alices:
                await wait_for(seen, lambda kind, data: kind == "snapshot")
                turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300),
                         CallerTurn(load_sample("caller_question"), after_silence_ms=2000)]
                call = asyncio.create_task(run_call(a.ws_url, turns, timeout_s=40, hangup_after_ms=15_000))
                call_sid = await call_sid_of(a)
                # B's stream shows A's call and its running transcript while the call goes on.
                await wait_for(seen, lambda kind, data: kind == "call" and data["call_sid"] == call_sid)
                await wait_for(seen, lambda kind, data: kind == "line" and data["call_sid"] == call_sid
                               and data["who"] == "caller")
                await wait_for(seen, lambda kind, data: kind == "line" and data["call_sid"] == call_sid
                               and data["who"] == "agent")
                assert not call.done()
                # A call Alice's key placed, held by A: her stream on B shows it (the holder relays whose it is).
                await a.state.store.finish_call(CallRecord(
                    call_sid=ALICES_CALL, to="+14155550123", from_="+14155550100", direction="outbound-api",
                    status="in-progress", api_key_id=key_id(ALICE), created_at=time.time()))
                hers = asyncio.create_task(run_call(a.ws_url, turns[:1], timeout_s=40, hangup_after_ms=500,
                                                    call_sid=ALICES_CALL))
                await wait_for(alices, lambda kind, data: kind == "line" and data["call_sid"] == ALICES_CALL)
                await hers
                await wait_for(alices, lambda kind, data: kind == "ended" and data["call_sid"] == ALICES_CALL)
                # A new stream on B lists it from the shared registry, with the transcript so far.
                async with one_stream(b.http_url, operator.cookies["gateway_console"]) as fresh:
                    await wait_for(fresh, lambda kind, data: kind == "snapshot")
                listed = [c for c in fresh[0][1]["calls"] if c["call_sid"] == call_sid]
                assert listed and listed[0]["direction"] == "inbound"
                assert any(line["who"] == "caller" for line in listed[0]["lines"])
                # The live page's hang-up on B reaches the call on A (the API's control path).
                token = csrf_of((await operator.get("/console/live")).text)
                hung = await operator.post(f"/console/live/calls/{call_sid}/hangup", data={"csrf": token})
                assert hung.status_code == 202 and hung.json()["instance"] == a.state.settings.instance_id, hung.text
                await asyncio.wait_for(call, 15)
                await wait_for(seen, lambda kind, data: kind == "ended" and data["call_sid"] == call_sid)
        # Alice's key did not place this inbound call: her stream never shows it.
        assert not [data for kind, data in alices if kind != "snapshot" and data.get("call_sid") == call_sid]
        assert all(c["call_sid"] != call_sid for kind, data in alices if kind == "snapshot" for c in data["calls"])


async def test_the_workers_of_one_host_relay_their_calls_through_the_sqlite_state(tmp_path) -> None:
    """Two gateways sharing one SQLite state file (what ``gateway serve --workers`` sets up): a call on one shows,
    with its transcript, on the other's live stream (the file polled while a stream is open)."""
    common = dict(state_sqlite_path=str(tmp_path / "state.db"), transcription_model="gpt-4o-mini-transcribe", **KEYS)
    async with start_gateway(instance_id="host-w0", **common) as a, start_gateway(instance_id="host-w1", **common) as b:
        async with client_for(a) as operator:
            await login(operator, OPERATOR)
            async with one_stream(b.http_url, operator.cookies["gateway_console"]) as seen:
                await wait_for(seen, lambda kind, data: kind == "snapshot")
                turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300)]
                call = asyncio.create_task(run_call(a.ws_url, turns, timeout_s=40, hangup_after_ms=1000))
                call_sid = await call_sid_of(a)
                await wait_for(seen, lambda kind, data: kind == "line" and data["call_sid"] == call_sid
                               and data["who"] == "caller")
                await call
                await wait_for(seen, lambda kind, data: kind == "ended" and data["call_sid"] == call_sid)


@contextlib.asynccontextmanager
async def one_stream(base: str, cookie: str) -> AsyncIterator[Events]:
    """The live event stream of ``base`` with the session ``cookie``, read into a list as it comes."""
    seen = Events()
    async with httpx.AsyncClient(base_url=base, cookies={"gateway_console": cookie}, timeout=30) as http, \
            http.stream("GET", "/console/live/events") as stream:
        async def read() -> None:
            try:
                await read_events(stream, seen)
            finally:
                seen.ended.set()

        reader = asyncio.create_task(read())
        try:
            yield seen
        finally:
            reader.cancel()


class Events(list):  # type: ignore[type-arg]
    """A stream's events as (kind, data), and whether the stream has ended."""

    def __init__(self) -> None:
        super().__init__()
        self.ended = asyncio.Event()


async def test_a_shared_state_that_does_not_answer_costs_the_calls_nothing_and_its_losses_are_counted() -> None:
    hub = LiveHub(shared=RedisState("redis://127.0.0.1:1/0", timeout_s=0.3), instance="lonely", queue_size=10_000)
    before = metrics.CONSOLE_RELAY_DROPPED._value.get()
    try:
        local = hub.subscribe("op", True, "s1", await hub.remote_calls())  # the others' calls: none to be had
        assert (await local.next(1)).startswith("event: snapshot")
        call = SimpleNamespace(call_sid=CALL)
        hub.feed(call, CallStarted(CALL, "MZ1", {}))
        for n in range(3000):
            hub.feed(call, TranscriptReceived("user", f"item{n}", f"words {n}"))
        # This instance's own streams get every event at once, whatever the shared state does.
        assert (await local.next(1)).startswith("event: call")
        for n in range(3000):
            assert f'"text":"words {n}"' in await local.next(1)
        deadline = time.monotonic() + 20
        while hub.relay.dropped < 3001:  # past the queue's bound at once, the rest when the batch could not be written
            assert time.monotonic() < deadline, hub.relay.dropped
            await asyncio.sleep(0.05)
        assert metrics.CONSOLE_RELAY_DROPPED._value.get() - before == hub.relay.dropped
    finally:
        await hub.aclose()


async def test_the_relay_closes_promptly_while_a_write_to_the_shared_state_fails() -> None:
    hub = LiveHub(shared=RedisState("redis://127.0.0.1:1/0", timeout_s=0.3), instance="closing")
    call = SimpleNamespace(call_sid=CALL)
    hub.feed(call, CallStarted(CALL, "MZ1", {}))
    hub.feed(call, TranscriptReceived("user", "item1", "words"))
    await asyncio.sleep(0)  # the relay's writer is under way
    await asyncio.wait_for(hub.aclose(), 5)
    assert hub.relay._publisher.done()


@contextlib.asynccontextmanager
async def each_state(kind: str, tmp_path: Any) -> AsyncIterator[Any]:
    if kind == "redis":
        await redis_or_skip()
        state = RedisState(REDIS_URL, prefix=f"test-console-{secrets.token_hex(6)}:")
    else:
        state = MemoryState() if kind == "memory" else SQLiteState(str(tmp_path / "state.db"))
    try:
        yield state
    finally:
        await state.aclose()


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
async def test_every_state_keeps_sessions_bounded_and_relays_the_live_view(kind, tmp_path) -> None:
    async with each_state(kind, tmp_path) as state:
        # Sessions: one key's oldest go past its share, the oldest of all past the limit; a drop is for everyone.
        for n in range(4):
            await state.put_session(f"alice-{n}", "alice", {"n": n}, 60, per_key=3, limit=5)
        assert [await state.get_session(f"alice-{n}") for n in range(4)] == [None, {"n": 1}, {"n": 2}, {"n": 3}]
        for n in range(3):
            await state.put_session(f"bob-{n}", "bob", {"n": n}, 60, per_key=3, limit=5)
        assert await state.get_session("alice-1") is None and await state.get_session("bob-2") == {"n": 2}
        await state.drop_session("bob-2", "bob")
        assert await state.get_session("bob-2") is None and await state.get_session("bob-1") == {"n": 1}

        # The live view: the registry lists the calls, pictures keep the last lines, the feed reads from a cursor.
        await state.register_call(CALL, "holder", 30)
        cursor, nothing = await state.read_live("", 0)
        assert nothing == []
        await state.publish_live(LiveBatch(events=[{"n": n} for n in range(3)], calls={CALL: {"owner": "alice"}},
                                           lines={CALL: [{"t": n} for n in range(5)]}, max_lines=3))
        assert (await state.live_calls())[CALL] == "holder"
        assert await state.live_pictures([CALL, ALICES_CALL]) == {
            CALL: {"call": {"owner": "alice"}, "lines": [{"t": 2}, {"t": 3}, {"t": 4}]}}
        cursor, events = await state.read_live(cursor, 5)
        assert events == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert await state.read_live(cursor, 0.2) == (cursor, [])
        await state.publish_live(LiveBatch(ended=[CALL], events=[{"n": 3}]))
        await state.unregister_call(CALL, "holder")
        assert CALL not in await state.live_calls() and await state.live_pictures([CALL]) == {}
        assert (await state.read_live(cursor, 5))[1] == [{"n": 3}]


async def test_a_quiet_calls_picture_is_renewed_while_other_calls_keep_the_relay_busy(monkeypatch) -> None:
    monkeypatch.setattr("gateway.console.relay.RENEW_S", 0.3)
    monkeypatch.setattr("gateway.console.relay.PICTURE_TTL_S", 1.0)
    state = MemoryState()
    hub = LiveHub(shared=state, instance="busy")
    try:
        quiet, busy = SimpleNamespace(call_sid=CALL), SimpleNamespace(call_sid=ALICES_CALL)
        hub.feed(quiet, CallStarted(CALL, "MZ1", {}))
        hub.feed(busy, CallStarted(ALICES_CALL, "MZ2", {}))
        ends = time.monotonic() + 3
        n = 0
        while time.monotonic() < ends:  # the busy call talks all the time; the quiet one says nothing
            n += 1
            hub.feed(busy, TranscriptReceived("user", f"item{n}", f"words {n}"))
            await asyncio.sleep(0.05)
        assert set(await state.live_pictures([CALL, ALICES_CALL])) == {CALL, ALICES_CALL}
    finally:
        await hub.aclose()
