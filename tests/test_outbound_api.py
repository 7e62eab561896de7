"""The outbound HTTP API end to end: real uvicorn, the real twilio library, a fake Twilio REST API on 127.0.0.1.

Also: status callbacks and answering-machine handling, hang-up, the OpenAPI document, the stores, the toll-fraud
guard and the new settings.
"""

from __future__ import annotations

import asyncio
import dataclasses

import contextlib
import json
from typing import Any, AsyncIterator
from urllib.parse import urlencode, urlsplit

import httpx
import pytest
from twilio.request_validator import RequestValidator

from gateway.api.auth import ApiKeys, TokenBucketRateLimiter
from gateway.api.openapi import http_routes
from gateway.config import ConfigError, Settings
from gateway.server.runner import free_port
from gateway.store import CallRecord, MemoryCallStore, OutboundCallSettings, SQLiteCallStore, open_store
from gateway.twilio.numbers import destination_refusal, is_e164
from gateway.twilio.rest import TwilioNotConfigured, TwilioRest
from tests.conftest import GatewayUnderTest, start_gateway
from tests.fake_twilio import FakeTwilio, start_fake_twilio

API_KEY = "test-key-aaaaaaaaaaaaaaaaaaaaaaaa"
OTHER_KEY = "test-key-bbbbbbbbbbbbbbbbbbbbbbbb"
PUBLIC = "https://gateway.example.test"
FROM = "+14155550100"
TO = "+14155550123"
VOICEMAIL = "Hello, this is Acme calling about your appointment. Please call us back."
AUTH = {"authorization": f"Bearer {API_KEY}"}


@contextlib.asynccontextmanager
async def outbound(**overrides: Any) -> AsyncIterator[tuple[GatewayUnderTest, FakeTwilio, httpx.AsyncClient]]:
    async with start_fake_twilio() as fake:
        settings: dict[str, Any] = dict(
            api_keys=(API_KEY, OTHER_KEY), twilio_account_sid=fake.account_sid, twilio_auth_token=fake.auth_token,
            twilio_api_base_url=fake.base_url, twilio_from_number=FROM, public_url=PUBLIC,
            voicemail_message=VOICEMAIL, outbound_rate_limit_per_minute=1000,
        )
        settings.update(overrides)
        async with start_gateway(**settings) as gateway, httpx.AsyncClient(base_url=gateway.http_url) as client:
            yield gateway, fake, client


async def place(client: httpx.AsyncClient, key: str = API_KEY, **body: Any) -> httpx.Response:
    return await client.post("/calls", json={"to": TO, **body}, headers={"authorization": f"Bearer {key}"})


def error_code(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


async def test_place_call_sends_twilio_the_stream_twiml_and_stores_the_call_settings():
    async with outbound() as (gateway, fake, client):
        response = await place(client, instructions="Remind Ada of her 3 pm appointment.", voice="cedar",
                                greeting="Hi Ada, it's Acme.", metadata={"customer": "42"})
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["status"] == "queued" and body["call_sid"].startswith("CA") and len(body["call_sid"]) == 34
        assert response.headers["location"] == f"/calls/{body['call_sid']}"

        [request] = fake.requests
        assert request.authorization == (fake.account_sid, fake.auth_token)
        assert request.path == f"/2010-04-01/Accounts/{fake.account_sid}/Calls.json"
        assert request.one("To") == TO and request.one("From") == FROM
        assert request.form["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
        assert "MachineDetection" not in request.form
        assert request.form["TimeLimit"] == ["3600"]  # a stolen key cannot hold a line for hours
        call = fake.calls[body["call_sid"]]
        # No TwiML and nothing about the call in any URL: Twilio asks the answer webhook once the callee picks up.
        assert "Twiml" not in request.form
        assert request.one("Url") == "https://gateway.example.test/twilio/answer"
        assert request.one("StatusCallback") == "https://gateway.example.test/twilio/call-status"

        # The per-call settings are stored under the CallSid Twilio returned ...
        stored = await gateway.state.store.get_call_settings(body["call_sid"])
        assert stored is not None and stored.api_key_id  # the placing key's id, never the key itself
        assert API_KEY not in stored.api_key_id
        assert stored == OutboundCallSettings(
            to=TO, from_=FROM, instructions="Remind Ada of her 3 pm appointment.", voice="cedar",
            greeting="Hi Ada, it's Acme.", metadata={"customer": "42"}, machine_detection="none",
            api_key_id=stored.api_key_id)

        # ... and the answer webhook gives a stream URL with a credential for this CallSid, nothing else.
        answered = await fake.answer(gateway.http_url, body["call_sid"])
        assert answered.status_code == 200
        assert call.stream_url.startswith(f"wss://gateway.example.test/media-stream/v1.o.{body['call_sid']}.")
        assert call.stream_parameters == {}
        for secret in ("Remind Ada", "cedar", "Hi Ada", "customer"):
            assert secret not in answered.text
        unsigned = await fake.answer(gateway.http_url, body["call_sid"], signature="Zm9yZ2Vk")
        assert unsigned.status_code == 403
        # A call this gateway did not place is hung up, with no stream.
        stranger = "CA" + "d" * 32
        fake.calls[stranger] = dataclasses.replace(call, sid=stranger, twiml="")
        refused = await fake.answer(gateway.http_url, stranger)
        assert "<Hangup" in refused.text and "<Stream" not in refused.text

        record = (await client.get(f"/calls/{body['call_sid']}", headers=AUTH)).json()
        assert record["status"] == "queued" and record["to"] == TO and record["from"] == FROM
        assert record["metadata"] == {"customer": "42"} and record["direction"] == "outbound-api"


async def test_machine_detection_modes_and_from_override():
    # "from" may be any of the configured caller IDs (TWILIO_FROM_NUMBER=+14155550100,+14155550199), no other.
    async with outbound(twilio_caller_ids=(FROM, "+14155550199")) as (_, fake, client):
        assert (await place(client, machine_detection="voicemail")).status_code == 201
        assert (await place(client, machine_detection="hangup", **{"from": "+14155550199"})).status_code == 201
        voicemail, hangup = fake.requests
        assert voicemail.one("MachineDetection") == "DetectMessageEnd" and voicemail.one("AsyncAmd") == "true"
        assert voicemail.one("AsyncAmdStatusCallback") == voicemail.one("StatusCallback")
        assert hangup.one("MachineDetection") == "Enable" and hangup.one("From") == "+14155550199"


async def test_every_bad_request_gets_its_4xx_with_a_json_error():
    async with outbound() as (_, fake, client):
        json_headers = {**AUTH, "content-type": "application/json"}
        cases: list[tuple[str, dict[str, Any], bytes, int, str]] = [
            ("no auth", {"content-type": "application/json"}, b'{"to":"+14155550123"}', 401, "unauthorized"),
            ("garbage auth", {"authorization": "Bearer", "content-type": "application/json"}, b"{}", 401,
             "unauthorized"),
            ("basic auth", {"authorization": "Basic dXNlcjpwYXNz"}, b"{}", 401, "unauthorized"),
            ("wrong key", {"authorization": "Bearer test-key-cccccccccccccccccccccccc"}, b"{}", 401,
             "unauthorized"),
            ("non-ascii key", {"authorization": "Bearer clé-é".encode()}, b"{}", 401,
             "unauthorized"),
            ("form body", {**AUTH, "content-type": "application/x-www-form-urlencoded"}, b"to=%2B1415", 415,
             "unsupported_media_type"),
            ("no content type", AUTH, b'{"to":"+14155550123"}', 415, "unsupported_media_type"),
            ("too large", json_headers, json.dumps({"to": TO, "instructions": "x" * 17000}).encode(), 413,
             "body_too_large"),
            ("bad json", json_headers, b'{"to": "+14155550123",', 400, "invalid_json"),
            ("not utf-8", json_headers, b'{"to": "\xff"}', 400, "invalid_json"),
            ("NaN", json_headers, b'{"to": "+14155550123", "metadata": {"a": NaN}}', 400, "invalid_json"),
            ("duplicate key", json_headers, b'{"to": "+14155550123", "to": "+14155550124"}', 400, "invalid_json"),
            ("array", json_headers, b'["+14155550123"]', 400, "invalid_body"),
            ("unknown field", json_headers, b'{"to": "+14155550123", "url": "http://x"}', 400, "unknown_field"),
            ("missing to", json_headers, b'{}', 422, "missing_field"),
            ("bad E.164", json_headers, b'{"to": "14155550123"}', 422, "invalid_field"),
            ("E.164 with newline", json_headers, b'{"to": "+14155550123\\n"}', 422, "invalid_field"),
            ("unicode digits", json_headers, '{"to": "+١٤١٥٥٥٥٠١٢٣"}'.encode(), 422, "invalid_field"),
            ("number as int", json_headers, b'{"to": 14155550123}', 422, "invalid_field"),
            ("bad from", json_headers, b'{"to": "+14155550123", "from": "Acme"}', 422, "invalid_field"),
            ("foreign from", json_headers, b'{"to": "+14155550123", "from": "+14155550199"}', 403,
             "caller_id_not_allowed"),
            ("long instructions", json_headers, json.dumps({"to": TO, "instructions": "x" * 8001}).encode(), 422,
             "invalid_field"),
            ("long greeting", json_headers, json.dumps({"to": TO, "greeting": "x" * 2001}).encode(), 422,
             "invalid_field"),
            ("bad voice", json_headers, b'{"to": "+14155550123", "voice": "a b"}', 422, "invalid_field"),
            ("nested metadata", json_headers, b'{"to": "+14155550123", "metadata": {"a": {"b": "c"}}}', 422,
             "invalid_field"),
            ("metadata too big", json_headers, json.dumps({"to": TO, "metadata": {"k": "v" * 4100}}).encode(),
             422, "invalid_field"),
            ("bad machine_detection", json_headers, b'{"to": "+14155550123", "machine_detection": "yes"}', 422,
             "invalid_field"),
            ("premium US", json_headers, b'{"to": "+19005550123"}', 403, "destination_premium_rate"),
            ("not allowed prefix", json_headers, b'{"to": "+442071838750"}', 403, "destination_not_allowed"),
            ("Caribbean one-ring", json_headers, b'{"to": "+18765550123"}', 403, "destination_not_allowed"),
        ]
        for name, headers, content, status, code in cases:
            response = await client.post("/calls", content=content, headers=headers)
            assert (response.status_code, error_code(response)) == (status, code), (name, response.text)
            assert response.headers["content-type"] == "application/json", name
            assert response.json()["error"]["message"], name
        # A body streamed without Content-Length is cut off at the bound too.
        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"to": "+14155550123", "instructions": "'
            for _ in range(20):
                yield b"x" * 1024
            yield b'"}'

        response = await client.post("/calls", content=chunks(), headers=json_headers)
        assert (response.status_code, error_code(response)) == (413, "body_too_large")
        unauthorized = await client.post("/calls", json={"to": TO})
        assert unauthorized.headers["www-authenticate"].startswith("Bearer")
        assert fake.requests == []  # nothing reached Twilio


async def test_rate_limit_per_key_answers_429_with_retry_after():
    async with outbound(outbound_rate_limit_per_minute=2) as (_, fake, client):
        assert [(await place(client)).status_code for _ in range(2)] == [201, 201]
        limited = await place(client)
        assert (limited.status_code, error_code(limited)) == (429, "rate_limited")
        assert 1 <= int(limited.headers["retry-after"]) <= 30
        assert (await place(client, key=OTHER_KEY)).status_code == 201  # each key has its own bucket
        assert len(fake.calls) == 3


async def test_twilio_errors_map_to_502_with_twilio_code():
    async with outbound() as (_, fake, client):
        fake.fail_next(400, 21211, "Invalid 'To' Phone Number")
        response = await place(client)
        assert response.status_code == 502
        error = response.json()["error"]
        assert error["code"] == "twilio_error" and error["twilio_code"] == 21211 and error["twilio_status"] == 400
        assert "Invalid 'To' Phone Number" in error["message"]
    async with outbound(twilio_auth_token="not-the-fakes-token") as (_, fake, client):
        response = await place(client)
        assert (response.status_code, response.json()["error"].get("twilio_code")) == (502, 20003)
    async with outbound(twilio_api_base_url=f"http://127.0.0.1:{free_port()}") as (_, fake, client):
        response = await place(client)
        assert (response.status_code, error_code(response)) == (502, "twilio_unreachable")


async def test_disabled_or_unconfigured_answers_503():
    async with outbound(api_keys=()) as (_, fake, client):
        for response in (await place(client), await client.get(f"/calls/CA{'0' * 32}", headers=AUTH)):
            assert (response.status_code, error_code(response)) == (503, "outbound_disabled")
    async with outbound(twilio_account_sid="") as (_, fake, client):
        assert (await client.post("/calls", json={"to": TO})).status_code == 401  # auth comes first
        response = await place(client)
        assert (response.status_code, error_code(response)) == (503, "twilio_not_configured")
    async with outbound(public_url="") as (_, fake, client):
        response = await place(client)
        assert (response.status_code, error_code(response)) == (503, "public_url_not_configured")
        assert fake.requests == []


async def test_status_callbacks_update_the_record_in_order_and_are_signature_checked():
    async with outbound() as (gateway, fake, client):
        sid = (await place(client)).json()["call_sid"]

        async def status() -> dict[str, Any]:
            response = await client.get(f"/calls/{sid}", headers=AUTH)
            assert response.status_code == 200
            return response.json()

        assert (await fake.send_status(gateway.http_url, sid, CallStatus="ringing")).status_code == 204
        assert (await status())["status"] == "ringing"
        assert (await fake.send_status(gateway.http_url, sid, CallStatus="in-progress")).status_code == 204
        await fake.send_status(gateway.http_url, sid, CallStatus="ringing")  # late, out of order: ignored
        assert (await status())["status"] == "in-progress"

        forged = await fake.send_status(gateway.http_url, sid, CallStatus="completed", signature="Zm9yZ2Vk")
        assert forged.status_code == 403
        assert (await status())["status"] == "in-progress"

        await fake.send_status(gateway.http_url, sid, CallStatus="completed", CallDuration="42")
        record = await status()
        assert (record["status"], record["duration"]) == ("completed", 42)
        assert fake.requests[1:] == []  # no action was taken on Twilio


async def test_status_callback_that_beats_the_create_answer_still_finds_the_call():
    async with outbound() as (gateway, fake, client):
        fake.early_callback_to = gateway.http_url  # "initiated" is posted before calls.create answers
        sid = (await place(client, metadata={"k": "v"})).json()["call_sid"]
        await asyncio.gather(*fake._background)
        record = (await client.get(f"/calls/{sid}", headers=AUTH)).json()
        assert (record["status"], record["to"], record["metadata"]) == ("initiated", TO, {"k": "v"})

        async def post(url: str, form: dict[str, str]) -> httpx.Response:
            signature = RequestValidator(fake.auth_token).compute_signature(url, form)
            parts = urlsplit(url)
            return await client.post(f"{parts.path}?{parts.query}" if parts.query else parts.path,
                                     content=urlencode(form), headers={"x-twilio-signature": signature,
                                     "content-type": "application/x-www-form-urlencoded"})

        # A call this gateway never placed: ignored after a short wait, nothing stored.
        stray = "CA" + "f" * 32
        assert (await post(f"{PUBLIC}/twilio/call-status", {"CallSid": stray})).status_code == 204
        assert (await client.get(f"/calls/{stray}", headers=AUTH)).status_code == 404
        assert (await post(f"{PUBLIC}/twilio/call-status", {"CallSid": "bogus"})).status_code == 400


async def test_machine_answers_voicemail_mode_leaves_the_message_once():
    async with outbound() as (gateway, fake, client):
        sid = (await place(client, machine_detection="voicemail")).json()["call_sid"]
        await fake.send_status(gateway.http_url, sid, CallStatus="in-progress")
        # The async AMD callback: no CallStatus, AnsweredBy after the greeting's beep.
        await fake.send_status(gateway.http_url, sid, AnsweredBy="machine_end_beep", MachineDetectionDuration="4200")
        call = fake.calls[sid]
        [twiml] = await fake.wait_for(lambda: call.redirected_twiml)
        assert twiml == f'<?xml version="1.0" encoding="UTF-8"?><Response><Say>{VOICEMAIL}</Say><Hangup /></Response>'
        record = (await client.get(f"/calls/{sid}", headers=AUTH)).json()
        assert (record["answered_by"], record["machine_action"]) == ("machine_end_beep", "voicemail")
        await fake.send_status(gateway.http_url, sid, CallStatus="in-progress", AnsweredBy="machine_end_beep")
        await gateway.state.outbound.aclose()
        assert len(call.updates) == 1  # acted once


async def test_machine_answers_hangup_mode_hangs_up_and_humans_are_left_alone():
    async with outbound() as (gateway, fake, client):
        human = (await place(client, machine_detection="hangup")).json()["call_sid"]
        await fake.send_status(gateway.http_url, human, AnsweredBy="human")
        machine = (await place(client, machine_detection="hangup")).json()["call_sid"]
        await fake.send_status(gateway.http_url, machine, AnsweredBy="machine_start")
        await fake.wait_for(lambda: fake.calls[machine].updates)
        assert fake.calls[machine].updates == [{"Status": ["completed"]}]
        await gateway.state.outbound.aclose()  # the hang-up runs after the callback was answered: let it finish
        machine_record = (await client.get(f"/calls/{machine}", headers=AUTH)).json()
        assert (machine_record["status"], machine_record["machine_action"]) == ("completed", "hangup")
        human_record = (await client.get(f"/calls/{human}", headers=AUTH)).json()
        assert (human_record["answered_by"], human_record["machine_action"]) == ("human", None)
        assert fake.calls[human].updates == []
        # machine_detection "none": a machine is the agent's problem.
        plain = (await place(client)).json()["call_sid"]
        await fake.send_status(gateway.http_url, plain, CallStatus="completed", AnsweredBy="machine_start")
        assert fake.calls[plain].updates == []


async def test_hangup_endpoint():
    async with outbound() as (gateway, fake, client):
        sid = (await place(client)).json()["call_sid"]
        # Another team's key neither sees nor hangs up this call.
        other = {"authorization": f"Bearer {OTHER_KEY}"}
        assert error_code(await client.get(f"/calls/{sid}", headers=other)) == "call_not_found"
        assert error_code(await client.post(f"/calls/{sid}/hangup", headers=other)) == "call_not_found"
        fake.fail_next(400, 21220, "Call is not in-progress. Cannot redirect.")
        failed = await client.post(f"/calls/{sid}/hangup", headers=AUTH)
        assert (failed.status_code, failed.json()["error"]["twilio_code"]) == (502, 21220)

        response = await client.post(f"/calls/{sid}/hangup", headers=AUTH)
        assert (response.status_code, response.json()) == (202, {"call_sid": sid, "status": "completed"})
        assert fake.requests[-1].path.endswith(f"/Calls/{sid}.json") and fake.requests[-1].one("Status") == "completed"
        assert (await client.get(f"/calls/{sid}", headers=AUTH)).json()["status"] == "completed"
        again = await client.post(f"/calls/{sid}/hangup", headers=AUTH)
        assert (again.status_code, error_code(again)) == (409, "call_already_ended")

        for unknown in (f"CA{'1' * 32}", "not-a-sid"):
            response = await client.post(f"/calls/{unknown}/hangup", headers=AUTH)
            assert (response.status_code, error_code(response)) == (404, "call_not_found")
        assert (await client.post(f"/calls/{sid}/hangup")).status_code == 401
        assert (await client.get(f"/calls/{sid}")).status_code == 401


async def test_transfer_seam_update_twiml_redirects_the_call():
    async with outbound() as (gateway, fake, client):
        sid = (await place(client)).json()["call_sid"]
        twiml = '<?xml version="1.0" encoding="UTF-8"?><Response><Dial>+14155550111</Dial></Response>'
        assert await gateway.state.twilio.update_twiml(sid, twiml) == "queued"
        assert fake.calls[sid].redirected_twiml == [twiml]
    with pytest.raises(TwilioNotConfigured):
        await TwilioRest("", "").hangup("CA" + "0" * 32)


async def test_openapi_document_validates_and_lists_every_route():
    from openapi_spec_validator import validate

    async with outbound() as (gateway, _, client):
        response = await client.get("/openapi.json")
        assert response.status_code == 200
        document = response.json()
    validate(document)
    assert document["openapi"].startswith("3.1") and document["servers"] == [{"url": PUBLIC}]
    routes = http_routes(gateway.app)
    assert {("/calls", "post"), ("/calls/{sid}", "get"), ("/calls/{sid}/hangup", "post"),
            ("/twilio/call-status", "post"), ("/openapi.json", "get")} <= set(routes)
    for path, method in routes:
        assert method in document["paths"].get(path, {}), (path, method)
    request_schema = document["components"]["schemas"]["CallRequest"]
    assert request_schema["additionalProperties"] is False and request_schema["required"] == ["to"]
    assert document["paths"]["/calls"]["post"]["security"] == [{"bearerAuth": []}]


# ---- stores


def _settings(n: int = 0) -> OutboundCallSettings:
    return OutboundCallSettings(to=TO, from_=FROM, instructions=f"call {n}", metadata={"n": str(n)},
                                machine_detection="voicemail")


async def test_sqlite_store_round_trip(tmp_path):
    now = [1000.0]
    path = str(tmp_path / "calls.db")
    store = SQLiteCallStore(path, settings_ttl_s=60, clock=lambda: now[0])
    await store.save_call_settings("k1", _settings(1))
    assert await store.get_call_settings("k1") == _settings(1)
    assert await store.get_call_settings("unknown") is None

    sid = "CA" + "a" * 32
    record = CallRecord(call_sid=sid, to=TO, from_=FROM, machine_detection="voicemail", metadata={"a": "b"})
    assert await store.create_call(record) == record
    assert (await store.create_call(CallRecord(call_sid=sid, to="+1999", from_=FROM))).to == TO  # insert-if-absent
    assert (await store.update_status(sid, "in-progress", answered_by="human")).status == "in-progress"
    assert (await store.update_status(sid, "ringing")).status == "in-progress"  # never backwards
    assert await store.claim_machine_action(sid, "voicemail") is True
    assert await store.claim_machine_action(sid, "hangup") is False
    assert await store.update_status("CA" + "b" * 32, "completed") is None
    with pytest.raises(TypeError):
        await store.update_status(sid, "completed", to="+1")
    await store.close()

    reopened = open_store(f"sqlite:///{path}")
    assert isinstance(reopened, SQLiteCallStore)
    reopened_record = await reopened.get_call(sid)
    assert reopened_record is not None
    assert (reopened_record.status, reopened_record.answered_by, reopened_record.machine_action,
            reopened_record.metadata) == ("in-progress", "human", "voicemail", {"a": "b"})
    await reopened.close()

    expiring = SQLiteCallStore(path, settings_ttl_s=60, clock=lambda: now[0])
    now[0] += 61
    assert await expiring.get_call_settings("k1") is None  # TTL
    await expiring.save_call_settings("k2", _settings(2))  # and expired rows are purged on save
    assert expiring._db.execute("SELECT COUNT(*) FROM call_settings").fetchone()[0] == 1
    await expiring.close()


async def test_memory_store_ttl_and_bounds():
    now = [0.0]
    store = MemoryCallStore(settings_ttl_s=10, max_settings=3, max_calls=2, clock=lambda: now[0])
    for n in range(4):
        await store.save_call_settings(f"k{n}", _settings(n))
    assert await store.get_call_settings("k0") is None  # bounded: the oldest went first
    assert await store.get_call_settings("k3") == _settings(3)
    now[0] = 10.5
    assert await store.get_call_settings("k3") is None  # expired
    assert len(store._settings) == 0

    sids = ["CA" + str(n) * 32 for n in range(3)]
    for sid in sids:
        await store.create_call(CallRecord(call_sid=sid, to=TO, from_=FROM))
    await store.update_status(sids[1], "completed", duration_s=3)
    assert await store.get_call(sids[0]) is None
    assert (await store.get_call(sids[1])).duration_s == 3  # type: ignore[union-attr]
    assert (await store.update_status(sids[1], "in-progress")).status == "completed"  # type: ignore[union-attr]
    assert open_store("").__class__ is MemoryCallStore and open_store("memory://").__class__ is MemoryCallStore
    with pytest.raises(ValueError):
        open_store("redis://db/gateway")  # not a store scheme


# ---- toll-fraud guard, keys, rate limiter, settings


@pytest.mark.parametrize("number, allowed, refusal", [
    ("+14155550123", ("+1",), None),
    ("+19005550123", ("+1",), "destination_premium_rate"),
    ("+12129765555", ("+",), "destination_premium_rate"),  # 976 is an exchange: any area code
    ("+15005550100", ("+1",), "destination_premium_rate"),
    ("+447612345678", ("+44",), "destination_premium_rate"),
    ("+491801234567", ("+49",), "destination_premium_rate"),
    ("+449012345678", ("+44",), "destination_premium_rate"),
    ("+448712345678", ("+44",), "destination_premium_rate"),
    ("+33891234567", ("+33",), "destination_premium_rate"),
    ("+499001234567", ("+49",), "destination_premium_rate"),
    ("+491371234567", ("+",), "destination_premium_rate"),
    ("+979123456789", ("+",), "destination_premium_rate"),
    ("+442071838750", ("+1",), "destination_not_allowed"),
    ("+442071838750", ("+1", "+44"), None),
    ("+18095550123", ("+1",), "destination_not_allowed"),
    ("+18765550123", ("+1876",), None),
    ("+18765550123", ("+",), "destination_not_allowed"),
    ("+16475550123", ("+1",), None),
    ("+14155550123", (), "destination_not_allowed"),
])
def test_destination_guard(number, allowed, refusal):
    assert is_e164(number)
    result = destination_refusal(number, allowed)
    assert (result[0] if result else None) == refusal


async def test_api_keys_and_token_bucket():
    keys = ApiKeys([API_KEY, OTHER_KEY])
    assert keys.authenticate(f"Bearer {API_KEY}") and keys.authenticate(f"bearer  {OTHER_KEY} ")
    assert keys.authenticate(f"Bearer {API_KEY}") != keys.authenticate(f"Bearer {OTHER_KEY}")
    for bad in (None, "", "Bearer", f"Basic {API_KEY}", f"Bearer {API_KEY}x", API_KEY):
        assert keys.authenticate(bad) is None
    assert not ApiKeys([]).enabled and ApiKeys([]).authenticate(f"Bearer {API_KEY}") is None

    now = [0.0]
    bucket = TokenBucketRateLimiter(6, clock=lambda: now[0])  # one token every 10 s, burst 6
    assert [await bucket.acquire("k") for _ in range(6)] == [0.0] * 6
    assert await bucket.acquire("k") == pytest.approx(10.0)
    now[0] = 5.0
    assert await bucket.acquire("k") == pytest.approx(5.0)
    now[0] = 10.0
    assert await bucket.acquire("k") == 0.0 and await bucket.acquire("other") == 0.0


def test_outbound_settings_from_env():
    settings = Settings.from_env({
        "API_KEYS": f" {API_KEY}, {OTHER_KEY} ,", "TWILIO_ACCOUNT_SID": "AC" + "a" * 32,
        "TWILIO_FROM_NUMBER": FROM, "OUTBOUND_ALLOWED_PREFIXES": "+1, +44", "OUTBOUND_RATE_LIMIT_PER_MINUTE": "5",
        "TRANSFER_NUMBER": "+14155550111", "VOICEMAIL_MESSAGE": " Call us back. ", "STORE_URL": "sqlite:///x.db",
        "TWILIO_API_BASE_URL": "http://127.0.0.1:9999/",
    })
    assert settings.api_keys == (API_KEY, OTHER_KEY)
    assert settings.outbound_allowed_prefixes == ("+1", "+44") and settings.outbound_rate_limit_per_minute == 5
    assert settings.voicemail_message == "Call us back." and settings.twilio_api_base_url == "http://127.0.0.1:9999"
    defaults = Settings.from_env({})
    assert defaults.api_keys == () and defaults.outbound_allowed_prefixes == ("+1",)
    assert defaults.twilio_api_base_url == "https://api.twilio.com" and defaults.store_url == "sqlite:///gateway-records.db"
    for env in ({"API_KEYS": "short"}, {"TWILIO_ACCOUNT_SID": "SK123"}, {"TWILIO_FROM_NUMBER": "4155550100"},
                {"OUTBOUND_ALLOWED_PREFIXES": "1,+44"}, {"OUTBOUND_RATE_LIMIT_PER_MINUTE": "0"},
                {"TRANSFER_NUMBER": "desk"}, {"STORE_URL": "redis://db/x"},
                {"TWILIO_API_BASE_URL": "api.twilio.com"}):
        with pytest.raises(ConfigError, match=next(iter(env))):
            Settings.from_env(env)
