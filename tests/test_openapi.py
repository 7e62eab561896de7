"""The OpenAPI description cannot drift from the API: the request schema is the model the parser validates with,
and the API's real answers (a real gateway under uvicorn, the Twilio stand-in behind it) fit the answer models."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from gateway.api.errors import ApiError
from gateway.api.openapi import OPERATIONS, Operation, model_schemas, path_parameters
from gateway.api.requests import FIELDS, CallRequest, parse_call_request
from gateway.api.responses import CallCreated, Error
from tests.test_outbound_api import AUTH, FROM, TO, outbound

REQUEST_SCHEMA = model_schemas([CallRequest])["CallRequest"]


def test_the_request_schema_names_exactly_the_fields_the_parser_takes():
    assert tuple(REQUEST_SCHEMA["properties"]) == FIELDS
    assert REQUEST_SCHEMA["additionalProperties"] is False and REQUEST_SCHEMA["required"] == ["to"]


@pytest.mark.parametrize("body", [
    {"to": TO},
    {"to": TO, "from": FROM, "instructions": "x" * 8000, "voice": "cedar", "greeting": "Hi",
     "metadata": {"k" * 64: "v"}, "machine_detection": "hangup"},
    {"to": TO, "instructions": None, "metadata": None, "machine_detection": None},
    {},
    {"to": "14155550123"},
    {"to": TO + "0" * 5},  # 16 digits (a trailing newline too is refused; Python's re, unlike JSON Schema's, lets $ pass it)
    {"to": 14155550123},
    {"to": TO, "from": "Acme"},
    {"to": TO, "instructions": "x" * 8001},
    {"to": TO, "greeting": 7},
    {"to": TO, "voice": "a b"},
    {"to": TO, "voice": "v" * 41},
    {"to": TO, "metadata": {str(n): "v" for n in range(33)}},
    {"to": TO, "metadata": {"": "v"}},
    {"to": TO, "metadata": {"k" * 65: "v"}},
    {"to": TO, "metadata": {"n": 1}},
    {"to": TO, "machine_detection": "sometimes"},
    {"to": TO, "url": "http://x"},
    {"to": TO, "from_": FROM},
])
def test_the_schema_and_the_parser_agree_on_every_body(body: dict[str, Any]):
    """A body the schema accepts is accepted by the parser (up to the checks no schema can express: the caller ID
    list, the toll-fraud guard), and a body the schema refuses is refused with a 400 or a 422."""
    try:
        jsonschema.validate(body, REQUEST_SCHEMA)
        schema_ok = body.get("to") is not None
    except jsonschema.ValidationError:
        schema_ok = False
    try:
        parse_call_request(json.dumps(body).encode(), caller_ids=(FROM,), allowed_prefixes=("+1",),
                           voicemail_configured=True)
        parser_ok = True
    except ApiError as error:
        assert error.status in (400, 422), (error.status, error.code)
        parser_ok = False
    assert schema_ok == parser_ok, body


def test_an_entry_is_all_an_endpoint_needs():
    operation = OPERATIONS[("/calls/{sid}/hangup", "post")]
    assert isinstance(operation, Operation)
    rendered = operation.render("/calls/{sid}/hangup")
    assert rendered["parameters"][0]["name"] == "sid" and rendered["security"] == [{"bearerAuth": []}]
    assert {"202", "401", "404", "409", "502", "503"} <= set(rendered["responses"])
    assert path_parameters("/things/{thing_id}")[0] == {"name": "thing_id", "in": "path", "required": True,
                                                        "schema": {"type": "string"}}


async def test_the_apis_real_answers_fit_their_models():
    async with outbound() as (gateway, fake, client):
        document = (await client.get("/openapi.json")).json()
        created = await client.post("/calls", json={"to": TO, "metadata": {"a": "b"}}, headers=AUTH)
        sid = created.json()["call_sid"]
        hung_up = await client.post(f"/calls/{sid}/hangup", headers=AUTH)
        await fake.send_status(gateway.http_url, sid, CallStatus="completed")
        ended = await client.post(f"/calls/{sid}/hangup", headers=AUTH)
        fake.fail_next(400, 21211, "Invalid 'To' Phone Number")
        refused_by_twilio = await client.post("/calls", json={"to": TO}, headers=AUTH)
        errors = [
            ended,
            refused_by_twilio,
            await client.post("/calls", json={"to": TO}),
            await client.post("/calls", json={"to": "nope"}, headers=AUTH),
            await client.post("/calls", json={"to": TO, "url": "x"}, headers=AUTH),
            await client.post("/calls", json={"to": TO, "from": "+14155550199"}, headers=AUTH),
            await client.post("/calls", content=b"{", headers={**AUTH, "content-type": "application/json"}),
            await client.get("/calls/CA" + "0" * 32, headers=AUTH),
        ]
    assert (created.status_code, hung_up.status_code) == (201, 202)
    for answer in (created, hung_up):
        CallCreated.model_validate_json(answer.text, strict=True)
    assert [e.status_code for e in errors] == [409, 502, 401, 422, 400, 403, 400, 404]
    for answer in errors:
        Error.model_validate_json(answer.text, strict=True)
    # And the document says so: each answer's status is described, with the same schema.
    described = document["paths"]["/calls"]["post"]["responses"]
    assert described["201"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/CallCreated"}
    assert {"400", "401", "403", "422", "502"} <= set(described)
    assert document["components"]["schemas"]["Error"]["properties"]["error"] == {
        "$ref": "#/components/schemas/ErrorDetail"}
