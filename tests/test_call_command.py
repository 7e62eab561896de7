"""``gateway call``: the command places a call through a real gateway under uvicorn (the local stand-in for Twilio
behind it) and prints the call's progress, which Twilio's status callbacks drive, until it ends."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator

from gateway.cli import main
from tests.conftest import GatewayUnderTest, start_gateway
from tests.fake_twilio import FakeTwilio, start_fake_twilio

API_KEY = "cli-key-dddddddddddddddddddddddd"
FROM = "+14155550100"
TO = "+14155550123"


@contextlib.asynccontextmanager
async def outbound_gateway() -> AsyncIterator[tuple[GatewayUnderTest, FakeTwilio]]:
    async with start_fake_twilio() as fake:
        settings: dict[str, Any] = dict(
            api_keys=(API_KEY,), twilio_account_sid=fake.account_sid, twilio_auth_token=fake.auth_token,
            twilio_api_base_url=fake.base_url, twilio_from_number=FROM, public_url="https://gateway.example.test",
        )
        async with start_gateway(**settings) as gateway:
            yield gateway, fake


def call(gateway: GatewayUnderTest, *options: str) -> int:
    return main(["call", TO, "--gateway", gateway.http_url, "--poll-interval", "0.05", *options])


async def test_call_places_the_call_and_follows_it_to_the_end(capsys, monkeypatch):
    monkeypatch.setenv("GATEWAY_API_KEY", API_KEY)
    async with outbound_gateway() as (gateway, fake):
        command = asyncio.create_task(asyncio.to_thread(
            call, gateway, "--instructions", "Remind Ada of Friday.", "--voice", "cedar", "--greeting", "Hi Ada",
            "--metadata", "customer=42", "--machine-detection", "hangup"))
        call_sid = await fake.wait_for(lambda: next(iter(fake.calls), None))
        for status in ("ringing", "in-progress"):
            await asyncio.sleep(0.2)
            assert (await fake.send_status(gateway.http_url, call_sid, CallStatus=status)).status_code == 204
        await fake.send_status(gateway.http_url, call_sid, AnsweredBy="human")
        await asyncio.sleep(0.2)
        await fake.send_status(gateway.http_url, call_sid, CallStatus="completed", CallDuration="37")
        assert await asyncio.wait_for(command, 10) == 0
        stored = await gateway.state.store.get_call_settings(call_sid)
    out = capsys.readouterr().out
    # The request curl would send: the body's fields reached Twilio and the store.
    [request] = fake.requests
    assert request.one("To") == TO and request.one("From") == FROM and request.one("MachineDetection") == "Enable"
    assert (stored.instructions, stored.voice, stored.greeting, stored.metadata) == (
        "Remind Ada of Friday.", "cedar", "Hi Ada", {"customer": "42"})
    lines = out.splitlines()
    assert lines[0] == f"call {call_sid} to {TO} placed through {gateway.http_url}"
    statuses = [line.split(" s  ", 1)[1] for line in lines[1:]]
    # Each change once, in order (a poll may miss a state that lasted less than a poll on a loaded machine).
    expected = ["queued", "ringing", "in-progress", "in-progress (answered by human)",
                "completed (answered by human, 37 s)"]
    assert statuses[0] == "queued" and statuses[-1] == expected[-1], statuses
    assert statuses == sorted(statuses, key=expected.index), statuses


async def test_a_refused_call_exits_1_with_the_gateways_reason(capsys):
    async with outbound_gateway() as (gateway, fake):
        wrong_key = await asyncio.to_thread(call, gateway, "--api-key", "not-a-key-of-this-gateway")
        fake.fail_next(400, 21211, "Invalid 'To' Phone Number")
        refused = await asyncio.to_thread(call, gateway, "--api-key", API_KEY)
        no_answer = asyncio.create_task(asyncio.to_thread(call, gateway, "--api-key", API_KEY))
        call_sid = await fake.wait_for(lambda: next(iter(fake.calls), None))
        await fake.send_status(gateway.http_url, call_sid, CallStatus="no-answer")
        assert await asyncio.wait_for(no_answer, 10) == 1
    err = capsys.readouterr().err
    assert wrong_key == 1 and "401 unauthorized" in err
    assert refused == 1 and "502 twilio_error: " in err and "Invalid 'To' Phone Number" in err


def test_bad_options_exit_2(capsys, monkeypatch):
    monkeypatch.delenv("GATEWAY_API_KEY", raising=False)
    assert main(["call", TO]) == 2
    assert "GATEWAY_API_KEY" in capsys.readouterr().err
    assert main(["call", TO, "--api-key", API_KEY, "--metadata", "novalue"]) == 2
