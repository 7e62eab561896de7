"""Scale-out: a live call controlled from any instance, and concurrency leases shared through Redis.

Two gateways share one Redis (``redis://127.0.0.1:6379/15``); the replay phone calls one, the HTTP API request
lands on the other. Without Redis the Redis tests skip, saying why; the in-process state is tested on one instance.
"""

from __future__ import annotations

import asyncio
import secrets

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.tooling.replay import CallerTurn, load_sample, run_call
from gateway.state import MemoryState, RedisState

from .conftest import start_gateway
from .helpers import call_sid_of, eventually, registered, unregistered

REDIS_URL = "redis://127.0.0.1:6379/15"
# Random per run: with Redis, the per-key control rate limit is shared by every run against the same server.
KEY = f"k-operator-{secrets.token_hex(8)}"
AUTH = {"Authorization": f"Bearer {KEY}"}


async def redis_or_skip() -> None:
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        await client.ping()
    except Exception as error:  # noqa: BLE001
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {type(error).__name__}: {error}")
    finally:
        await client.aclose()


def long_call(gw):
    turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300)]
    return asyncio.create_task(run_call(gw.ws_url, turns, timeout_s=40, hangup_after_ms=20_000))


async def test_a_call_on_one_instance_is_hung_up_through_another() -> None:
    await redis_or_skip()
    common = dict(redis_url=REDIS_URL, api_keys=(KEY,), outbound_rate_limit_per_minute=100)
    async with start_gateway(instance_id="gw-a", **common) as a, start_gateway(instance_id="gw-b", **common) as b:
        phone = long_call(a)
        call_sid = await call_sid_of(a)
        await registered(a, call_sid)
        async with httpx.AsyncClient(base_url=b.http_url) as http:
            response = await http.post(f"/calls/{call_sid}/hangup", headers=AUTH)
            assert response.status_code == 202, response.text
            assert response.json() == {"call_sid": call_sid, "status": "completed"}
            report = await asyncio.wait_for(phone, 15)
            assert report.ended_by == "gateway_closed"
            # Over: not live anywhere, not known as a record either.
            await unregistered(b, call_sid)
            gone = await http.post(f"/calls/{call_sid}/say", headers=AUTH, json={"text": "hello"})
            assert gone.status_code == 404, gone.text


async def test_say_reaches_the_agent_of_a_call_held_elsewhere_and_instructions_change() -> None:
    await redis_or_skip()
    common = dict(redis_url=REDIS_URL, api_keys=(KEY,), outbound_rate_limit_per_minute=100)
    async with start_gateway(instance_id="gw-c", **common) as a, start_gateway(instance_id="gw-d", **common) as b:
        phone = long_call(a)
        call_sid = await call_sid_of(a)
        await registered(a, call_sid)
        async with httpx.AsyncClient(base_url=b.http_url) as http:
            said = await http.post(f"/calls/{call_sid}/say", headers=AUTH,
                                   json={"text": "Tell the caller their order shipped."})
            assert said.status_code == 202, said.text
            assert said.json()["instance"] == "gw-c"  # held on the other instance, which acted
            instructed = await http.post(f"/calls/{call_sid}/say", headers=AUTH,
                                         json={"text": "Speak French from now on.", "as": "instructions"})
            assert instructed.status_code == 202, instructed.text
            bad = await http.post(f"/calls/{call_sid}/say", headers=AUTH, json={"text": ""})
            assert bad.status_code == 400
            session = a.local_server.sessions[-1]
            await eventually(lambda: ("system", "Tell the caller their order shipped.") in session.client_texts,
                             what="the say at the model")
            assert a.app.state.gateway.find_session(call_sid).call.config.session_update["session"]["instructions"] \
                == "Speak French from now on."
            await http.post(f"/calls/{call_sid}/hangup", headers=AUTH)
        await asyncio.wait_for(phone, 15)


async def test_a_holder_that_does_not_answer_is_a_504_and_an_unknown_call_a_404() -> None:
    await redis_or_skip()
    async with start_gateway(instance_id="gw-e", redis_url=REDIS_URL, api_keys=(KEY,),
                             outbound_rate_limit_per_minute=100) as gw:
        ghost_call = "CA" + "e" * 32
        await gw.app.state.gateway.shared.register_call(ghost_call, "an-instance-that-crashed", 10)
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            response = await http.post(f"/calls/{ghost_call}/say", headers=AUTH, json={"text": "hello"})
            assert response.status_code == 504, response.text
            unknown = await http.post(f"/calls/CA{'f' * 32}/say", headers=AUTH, json={"text": "hello"})
            assert unknown.status_code == 404
            assert (await http.post(f"/calls/CA{'f' * 32}/say", json={"text": "hello"})).status_code == 401


async def test_the_global_limit_holds_across_instances_and_a_crashed_instances_slot_frees_itself() -> None:
    await redis_or_skip()
    common = dict(redis_url=REDIS_URL, max_calls_global=1)
    state = RedisState(REDIS_URL)
    try:
        await state.release_lease("global", "stale")  # a clean slate for this scope
        async with start_gateway(instance_id="gw-f", **common) as a, start_gateway(instance_id="gw-g", **common) as b:
            first = long_call(a)
            await registered(a, await call_sid_of(a))  # registered once its leases are held
            second = await run_call(b.ws_url, [CallerTurn(load_sample("caller_hello"), after_silence_ms=300)],
                                    timeout_s=20, hangup_after_ms=5000)
            assert second.ended_by == "gateway_closed"  # refused: the one slot is taken on the other instance
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
        # A lease whose instance died (never released) stops counting after its TTL.
        assert await state.acquire_lease("test-crash", "call-1", 1, 0.2)
        assert not await state.acquire_lease("test-crash", "call-2", 1, 0.2)
        await asyncio.sleep(0.3)
        assert await state.acquire_lease("test-crash", "call-2", 1, 0.2)
    finally:
        await state.aclose()


async def test_without_redis_limits_fail_closed_and_calls_end_with_the_message() -> None:
    async with start_gateway(max_calls_global=5) as gw:
        gw.app.state.gateway.shared = RedisState("redis://127.0.0.1:1/0", timeout_s=0.3)
        gw.app.state.gateway.services.shared = gw.app.state.gateway.shared
        report = await run_call(gw.ws_url, [CallerTurn(load_sample("caller_hello"), after_silence_ms=300)],
                                timeout_s=20, hangup_after_ms=5000)
    assert report.ended_by == "gateway_closed"


async def test_memory_state_leases_and_control_queue() -> None:
    state = MemoryState()
    assert await state.acquire_lease("s", "a", 2, 10) and await state.acquire_lease("s", "b", 2, 10)
    assert not await state.acquire_lease("s", "c", 2, 10)
    await state.release_lease("s", "a")
    assert await state.acquire_lease("s", "c", 2, 10)
    await state.register_call("CA1", "me", 10)
    assert await state.call_holder("CA1") == "me"
    await state.send_control("me", {"id": "r1"})
    assert await state.next_control("me", 0.1) == {"id": "r1"}
    assert await state.wait_reply("r1", 0.05) is None


async def test_sqlite_state_is_shared_by_two_handles_of_one_file(tmp_path) -> None:
    from gateway.state import SQLiteState

    one, two = SQLiteState(str(tmp_path / "state.db")), SQLiteState(str(tmp_path / "state.db"))
    assert await one.claim_once("nonce", 10) and not await two.claim_once("nonce", 10)
    assert await one.acquire_lease("global", "CA1", 1, 10) and not await two.acquire_lease("global", "CA2", 1, 10)
    assert await two.set_share("cost:day", "w1", 1.5, 100) == 1.5 and await one.set_share("cost:day", "w0", 1.0, 100) == 2.5
    await one.register_call("CA1", "w0", 10)
    assert await two.call_holder("CA1") == "w0"
    await two.send_control("w0", {"id": "r", "action": "say"})
    assert await one.next_control("w0", 1.0) == {"id": "r", "action": "say"}
    await one.reply("r", {"ok": True})
    assert await two.wait_reply("r", 1.0) == {"ok": True}
    assert await two.wait_reply("nothing", 0.1) is None


async def test_say_bodies_are_checked_at_the_edge() -> None:
    async with start_gateway(api_keys=(KEY,)) as gw:
        call_sid = "CA" + "a" * 32
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            async def say(content: bytes, content_type: str = "application/json") -> tuple[int, str]:
                response = await http.post(f"/calls/{call_sid}/say", headers={**AUTH, "Content-Type": content_type},
                                           content=content)
                return response.status_code, response.json()["error"]["code"]
            assert await say(b"{not json") == (400, "invalid_json")
            assert await say(b'{"text": "   "}') == (400, "invalid_text")
            assert await say(b'{"text": "hi", "as": "shout"}') == (400, "invalid_as")
            assert await say(b'{"text": "hi", "extra": 1}') == (400, "invalid_request")
            assert await say(b'{"text": "' + b"x" * 9000 + b'"}') == (413, "body_too_large")
            assert await say(b"text=hi", "application/x-www-form-urlencoded") == (415, "unsupported_media_type")
            assert await say(b'{"text": "hi"}') == (404, "call_not_live")  # well formed: not in progress anywhere


async def test_control_requests_are_rate_limited_per_key_and_transfer_needs_a_number() -> None:
    async with start_gateway(api_keys=(KEY,), outbound_rate_limit_per_minute=3) as gw:
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            codes = [(await http.post(f"/calls/CA{'b' * 32}/say", headers=AUTH, json={"text": "hi"})).status_code
                     for _ in range(5)]
            assert codes[:3] == [404, 404, 404] and codes[3:] == [429, 429], codes
    async with start_gateway(api_keys=(KEY,)) as gw:
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            refused = await http.post(f"/calls/CA{'c' * 32}/transfer", headers=AUTH)
            assert (refused.status_code, refused.json()["error"]["code"]) == (409, "transfer_not_configured")


def test_a_metrics_key_must_be_long() -> None:
    from gateway.config import ConfigError, Settings

    with pytest.raises(ConfigError, match="METRICS_API_KEY"):
        Settings.from_env({"METRICS_API_KEY": "short"})


async def test_an_outage_of_the_shared_state_is_logged_once_by_the_control_loop(caplog: pytest.LogCaptureFixture):
    """Redis down: the control loop retries every second but says so once, not once a second per process."""
    import logging

    from gateway.api.control import serve_control
    from gateway.server.runner import free_port
    from gateway.state import open_state

    caplog.set_level(logging.INFO, logger="gateway")
    down = open_state(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    loop = asyncio.create_task(serve_control(down, "instance-a", lambda call_sid: None))
    try:
        await asyncio.sleep(3.5)  # the scenario: three retries at least
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await down.aclose()
    said = [r.getMessage() for r in caplog.records if "control requests" in r.getMessage()]
    assert len(said) == 1 and "unavailable" in said[0], said
