"""The live page's actions over HTTP (issue 17): ``POST /console/live/calls/{sid}/hangup|transfer|say`` need the
console's origin and the session's CSRF token, are scoped like the API (an operator key any call, another key the
calls it placed), go through the API's control path to the instance holding the call, and answer JSON errors."""

from __future__ import annotations

import asyncio
import time

import httpx

from gateway.api.auth import key_id
from gateway.tooling.replay import CallerTurn, load_sample, run_call
from gateway.store import CallRecord

from .test_console import ALICE, BOB, OPERATOR, console, client_for, csrf_of, login
from .helpers import call_sid_of, eventually, registered, unregistered

OWN_CALL = "CA" + "a1" * 16


def long_call(ws_url: str, **kwargs):
    turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300)]
    return asyncio.create_task(run_call(ws_url, turns, timeout_s=40, hangup_after_ms=20_000, **kwargs))


async def signed_in(client: httpx.AsyncClient, key: str) -> str:
    """Log ``client`` in; the session's CSRF token."""
    await login(client, key)
    return csrf_of((await client.get("/console/live")).text)


async def test_actions_need_a_session_the_consoles_origin_and_its_csrf_token() -> None:
    async with console() as gateway, client_for(gateway) as operator:
        phone = long_call(gateway.ws_url)
        call_sid = await call_sid_of(gateway)
        await registered(gateway, call_sid)
        url = f"/console/live/calls/{call_sid}/hangup"
        async with client_for(gateway) as stranger:
            refused = await stranger.post(url, data={"csrf": "x"})
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "not_signed_in"
        token = await signed_in(operator, OPERATOR)
        for data, headers in (({}, {}), ({"csrf": "x" * 43}, {}), ({"csrf": token}, {"Origin": "https://evil.example"}),
                              ({"csrf": token}, {"Origin": "null"})):
            response = await operator.post(url, data=data, headers=headers)
            assert response.status_code == 403, (data, headers, response.text)
            assert response.headers["content-type"] == "application/json"
        async with httpx.AsyncClient(base_url=gateway.http_url, cookies=operator.cookies) as no_origin:
            assert (await no_origin.post(url, data={"csrf": token})).status_code == 403
        assert not phone.done()  # none of them reached the call
        assert (await operator.post(f"/console/live/calls/{call_sid}/dance", data={"csrf": token})).status_code == 404

        too_long = await operator.post(f"/console/live/calls/{call_sid}/say", data={"csrf": token, "text": "é" * 2001})
        assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "invalid_text"
        too_big = await operator.post(f"/console/live/calls/{call_sid}/say", data={"csrf": token, "text": "x" * 30_000})
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "body_too_large"
        blank = await operator.post(f"/console/live/calls/{call_sid}/say", data={"csrf": token, "text": "  "})
        assert blank.status_code == 400 and blank.json()["error"]["code"] == "invalid_text"
        no_number = await operator.post(f"/console/live/calls/{call_sid}/transfer", data={"csrf": token})
        assert no_number.status_code == 409 and no_number.json()["error"]["code"] == "transfer_not_configured"
        said = await operator.post(f"/console/live/calls/{call_sid}/say", data={"csrf": token, "text": "€" * 2000})
        assert said.status_code == 202, said.text  # the longest text, in characters of 3 UTF-8 bytes
        said = await operator.post(f"/console/live/calls/{call_sid}/say",
                                   data={"csrf": token, "text": "Your order shipped today."})
        assert said.status_code == 202 and said.json()["accepted"] is True, said.text
        await eventually(lambda: ("system", "Your order shipped today.") in gateway.local_server.sessions[-1].client_texts,
                         what="the say at the model")

        hung = await operator.post(url, data={"csrf": token})
        assert hung.status_code == 202 and hung.json() == {"call_sid": call_sid, "action": "hangup", "accepted": True,
                                                           "instance": gateway.state.settings.instance_id}
        report = await asyncio.wait_for(phone, 15)
        assert report.ended_by == "gateway_closed"
        await unregistered(gateway, call_sid)
        gone = await operator.post(url, data={"csrf": token})
        assert gone.status_code == 404 and gone.json()["error"]["code"] in ("call_not_live", "call_not_found")


async def test_a_key_controls_only_the_calls_it_placed_and_silent_or_unknown_holders_answer_clearly() -> None:
    async with console() as gateway, client_for(gateway) as alice, client_for(gateway) as bob:
        # A live call whose record names Alice's key (placed through the API), and an inbound one.
        await gateway.state.store.finish_call(CallRecord(
            call_sid=OWN_CALL, to="+14155550123", from_="+14155550100", direction="outbound-api",
            status="in-progress", api_key_id=key_id(ALICE), created_at=time.time()))
        hers = long_call(gateway.ws_url, call_sid=OWN_CALL)
        await registered(gateway, OWN_CALL)
        alice_token, bob_token = await signed_in(alice, ALICE), await signed_in(bob, BOB)
        foreign = await bob.post(f"/console/live/calls/{OWN_CALL}/hangup", data={"csrf": bob_token})
        assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "call_not_found"
        assert not hers.done()
        said = await alice.post(f"/console/live/calls/{OWN_CALL}/say", data={"csrf": alice_token, "text": "Hello"})
        assert said.status_code == 202, said.text
        # Another session's token is no good, even for a key's own call.
        assert (await alice.post(f"/console/live/calls/{OWN_CALL}/hangup", data={"csrf": bob_token})).status_code == 403

        inbound = long_call(gateway.ws_url)
        inbound_sid = await eventually(lambda: next((call.call.call_sid for call in gateway.state.active_calls
                                                     if call.call.call_sid not in ("", OWN_CALL)), None),
                                       what="the inbound call up")
        await registered(gateway, inbound_sid)
        assert (await alice.post(f"/console/live/calls/{inbound_sid}/hangup",
                                 data={"csrf": alice_token})).status_code == 404
        assert (await alice.post(f"/console/live/calls/{OWN_CALL}/hangup", data={"csrf": alice_token})).status_code \
            == 202
        assert (await asyncio.wait_for(hers, 15)).ended_by == "gateway_closed"
        assert not inbound.done()

        async with client_for(gateway) as operator:
            token = await signed_in(operator, OPERATOR)
            ghost = "CA" + "e" * 32
            await gateway.state.shared.register_call(ghost, "an-instance-that-crashed", 10)
            silent = await operator.post(f"/console/live/calls/{ghost}/say", data={"csrf": token, "text": "hi"})
            assert silent.status_code == 504 and silent.json()["error"]["code"] == "holder_not_answering"
            unknown = await operator.post(f"/console/live/calls/CA{'f' * 32}/hangup", data={"csrf": token})
            assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "call_not_live"
            bad_sid = await operator.post("/console/live/calls/CA..%2F..%2Fetc/hangup", data={"csrf": token})
            assert bad_sid.status_code == 404
            assert (await operator.post(f"/console/live/calls/{inbound_sid}/hangup", data={"csrf": token})).status_code \
                == 202
        await asyncio.wait_for(inbound, 15)
