"""One transfer per call (issue 17): a model that calls ``transfer_call`` again, or the API's
``POST /calls/{sid}/transfer`` during a transfer, never makes Twilio dial a second time.

In the core, as event scripts (ms, no sockets); end to end with the scripted model, the replay phone and the
stand-in Twilio REST API counting redirects.
"""

from __future__ import annotations

import asyncio
import json

import httpx

from gateway.call import Transfer
from gateway.call.outputs import Output, Peer
from gateway.realtime import events as rt
from gateway.tooling.replay import CallerTurn, load_sample
from gateway.twilio import media as tw
from tests.test_call import SID, control_call, delta, of_type, sends
from tests.test_outbound_e2e import API_KEY, TRANSFER_SCRIPT, outbound_gateway, place_and_answer

UNDER_WAY = "a transfer is already under way"


def redirect_requests(fake) -> int:
    """Requests that asked the stand-in Twilio to redirect a call (answered or refused)."""
    return sum(1 for request in fake.requests if request.one("Twiml"))


def tool_outputs(outputs: list[Output]) -> list[dict]:
    return [json.loads(m["item"]["output"]) for m in sends(outputs, Peer.MODEL)
            if m.get("type") == "conversation.item.create" and m["item"]["type"] == "function_call_output"]


def announced_transfer():
    """A call whose agent said "putting you through" and called transfer_call: the Transfer waits for the echo."""
    call = control_call()
    call.model_event(rt.ResponseCreated("resp_1"), 0)
    call.model_event(delta(ms=100), 0)
    first = call.model_event(rt.FunctionCallRequested("resp_1", "c1", "transfer_call", "{}"), 0)
    assert tool_outputs(first) == [{"ok": True, "note": "Done: the call will be handed over once the caller has heard you."}]
    return call


def test_a_second_transfer_call_while_announcing_is_a_tool_error_and_one_transfer_follows():
    call = announced_transfer()
    again = call.model_event(rt.FunctionCallRequested("resp_1", "c2", "transfer_call", "{}"), 5)
    assert tool_outputs(again) == [{"error": UNDER_WAY}]
    assert not [m for m in sends(again) if m.get("type") == "response.create"]  # the caller is being handed over
    outputs = call.model_event(rt.ResponseDone("resp_1", "completed", {}), 10)
    outputs += call.twilio_event(tw.MarkEcho(SID, "m0"), 100)
    assert of_type(outputs, Transfer) == [Transfer("the agent transferred the call")]
    assert call.transfer_refusal() == ("transfer_in_progress", UNDER_WAY)


def test_transfer_call_after_the_transfer_left_never_produces_a_second_transfer():
    call = announced_transfer()
    outputs = call.model_event(rt.ResponseDone("resp_1", "completed", {}), 10)
    outputs += call.twilio_event(tw.MarkEcho(SID, "m0"), 100)
    assert len(of_type(outputs, Transfer)) == 1
    # Twilio has not stopped the stream yet; the caller talks, the model transfers again, then again via the API.
    later: list[Output] = call.model_event(rt.SpeechStarted(200, "u2"), 200)
    later += call.model_event(rt.ResponseCreated("resp_2"), 400)
    later += call.model_event(delta(response="resp_2", item="item_2", ms=100), 400)
    refused = call.model_event(rt.FunctionCallRequested("resp_2", "c3", "transfer_call", "{}"), 400)
    assert tool_outputs(refused) == [{"error": UNDER_WAY}]
    later += refused + call.model_event(rt.ResponseDone("resp_2", "completed", {}), 410)
    later += call.twilio_event(tw.MarkEcho(SID, "m1"), 500)
    later += call.transfer_requested(0)
    assert of_type(later, Transfer) == []


def test_the_api_transfer_during_the_agents_transfer_is_refused_and_the_agents_goes_on():
    call = announced_transfer()
    assert call.transfer_refusal() == ("transfer_in_progress", UNDER_WAY)
    assert call.transfer_requested(0) == []
    outputs = call.model_event(rt.ResponseDone("resp_1", "completed", {}), 10)
    outputs += call.twilio_event(tw.MarkEcho(SID, "m0"), 100)
    assert of_type(outputs, Transfer) == [Transfer("the agent transferred the call")]


def test_a_failed_transfer_is_not_dialled_again():
    call = announced_transfer()
    call.model_event(rt.ResponseDone("resp_1", "completed", {}), 10)
    assert of_type(call.twilio_event(tw.MarkEcho(SID, "m0"), 100), Transfer)
    call.transfer_failed(0)  # Twilio answered an error: it may still have redirected the call
    call.model_event(rt.ResponseCreated("resp_2"), 200)
    refused = call.model_event(rt.FunctionCallRequested("resp_2", "c4", "transfer_call", "{}"), 200)
    assert tool_outputs(refused)[0]["error"].startswith("the transfer was already tried")
    outputs = refused + call.model_event(rt.ResponseDone("resp_2", "completed", {}), 210)
    assert [m["type"] for m in sends(outputs)].count("response.create") == 1  # the agent keeps helping
    assert of_type(outputs + call.transfer_requested(0), Transfer) == []
    assert call.transfer_refusal()[0] == "transfer_already_failed"


def test_a_transfer_talked_over_before_it_left_may_be_asked_again_once():
    call = announced_transfer()
    call.model_event(rt.ResponseDone("resp_1", "completed", {}), 10)
    call.model_event(rt.SpeechStarted(50, "u2"), 50)  # "wait, one more thing": the transfer is called off
    assert call.transfer_refusal() is None
    call.model_event(rt.ResponseCreated("resp_2"), 300)
    call.model_event(delta(response="resp_2", item="item_2", ms=100), 300)
    again = call.model_event(rt.FunctionCallRequested("resp_2", "c5", "transfer_call", "{}"), 300)
    assert tool_outputs(again)[0]["ok"] is True
    outputs = call.model_event(rt.ResponseDone("resp_2", "completed", {}), 310)
    outputs += call.twilio_event(tw.MarkEcho(SID, "m1"), 400) + call.twilio_event(tw.MarkEcho(SID, "m2"), 400)
    assert len(of_type(outputs, Transfer)) == 1


# ---- end to end: the scripted model transfers, then transfers again ----------------------------------------

# The transfer script of tests/test_outbound_e2e.py, then a second transfer on the caller's next turn.
TWICE_SCRIPT = TRANSFER_SCRIPT + TRANSFER_SCRIPT.replace("Let me put you through to a colleague.",
                                                         "Putting you through again.")


async def test_a_model_that_transfers_twice_makes_twilio_redirect_once(tmp_path):
    async with outbound_gateway(TWICE_SCRIPT, tmp_path, transfer_number="+14155550199") as (gateway, fake):
        # The stand-in Twilio does not end the stream on a redirect: the caller speaks again, the model transfers
        # again, and the operator presses "transfer" too.
        turns = [CallerTurn(load_sample("caller_question"), after_silence_ms=300),
                 CallerTurn(load_sample("caller_hello"), after_silence_ms=1500, wait_for_agent=True)]
        phone = asyncio.create_task(place_and_answer(gateway, fake, turns, hangup_after_ms=2000))
        await fake.wait_for(lambda: fake.calls and next(iter(fake.calls.values())).redirected_twiml, timeout=20)
        call_sid = next(iter(fake.calls))
        async with httpx.AsyncClient(base_url=gateway.http_url) as client:
            response = await client.post(f"/calls/{call_sid}/transfer",
                                         headers={"authorization": f"Bearer {API_KEY}"})
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "transfer_in_progress"
        _, report = await phone
        session = gateway.local_server.sessions[-1]
        outputs = [json.loads(item.wire["output"]) for item in session.items
                   if item.wire.get("type") == "function_call_output"]
    assert redirect_requests(fake) == 1
    assert outputs[0]["ok"] is True and {"error": UNDER_WAY} in outputs[1:], outputs


async def test_a_transfer_twilio_refused_is_not_dialled_again_when_the_model_retries(tmp_path):
    async with outbound_gateway(TWICE_SCRIPT, tmp_path, transfer_number="+14155550199") as (gateway, fake):
        turns = [CallerTurn(load_sample("caller_question"), after_silence_ms=300),
                 CallerTurn(load_sample("caller_hello"), after_silence_ms=1500, wait_for_agent=True)]
        phone = asyncio.create_task(place_and_answer(gateway, fake, turns, hangup_after_ms=2000))
        await fake.wait_for(lambda: fake.calls, timeout=10)
        fake.fail_next(500, 20500, "Internal Server Error")  # the redirect fails (it may still have been applied)
        _, report = await phone
        session = gateway.local_server.sessions[-1]
        outputs = [json.loads(item.wire["output"]) for item in session.items
                   if item.wire.get("type") == "function_call_output"]
    assert redirect_requests(fake) == 1
    assert outputs[0]["ok"] is True
    assert any(output.get("error", "").startswith("the transfer was already tried") for output in outputs[1:]), outputs
