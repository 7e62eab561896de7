"""``GET /calls`` and ``GET /calls/{sid}`` over HTTP against the real app (uvicorn, the fake Twilio REST API):
filters, paging, scoping by key (operator keys see every call, inbound included), strict query strings, and the
retention task of the app's lifespan.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from gateway.api.auth import ApiKeys, key_id
from gateway.config import ConfigError, Settings
from gateway.store import CallRecord, SQLiteCallStore
from tests.test_outbound_api import API_KEY, OTHER_KEY, TO, outbound, place
from tests.test_store_records import DAY, final_record, sid

OPS_KEY = "ops-key-cccccccccccccccccccccccccc"
INBOUND_FROM = "+14155550177"


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def list_sids(client: httpx.AsyncClient, key: str, **params) -> list[str]:
    response = await client.get("/calls", params=params, headers=auth(key))
    assert response.status_code == 200, response.text
    return [call["call_sid"] for call in response.json()["calls"]]


def conforms(document: dict, schema: str, instance: object) -> None:
    """``instance`` is valid against ``#/components/schemas/<schema>`` of the served OpenAPI document."""
    from jsonschema import Draft202012Validator

    Draft202012Validator({"$ref": f"#/components/schemas/{schema}", "components": document["components"]}
                         ).validate(instance)


async def _finish_inbound(gateway, n: int, **changes) -> CallRecord:
    return await gateway.state.store.finish_call(final_record(n, **changes))


async def test_a_key_lists_the_calls_it_placed_and_an_operator_key_every_call():
    async with outbound(operator_api_keys=(OPS_KEY,)) as (gateway, fake, client):
        mine = [(await place(client)).json()["call_sid"] for _ in range(3)]
        theirs = (await place(client, key=OTHER_KEY)).json()["call_sid"]
        inbound = await _finish_inbound(gateway, 1, started_at=time.time() - 5)
        # The live call's final record of one of mine: turns and all.
        await gateway.state.store.finish_call(
            final_record(0, direction="outbound-api", to="", from_="", ended_by="agent", outcome="completed",
                         call_sid=mine[0], started_at=time.time()))

        assert await list_sids(client, API_KEY) == mine[::-1]  # newest first, only mine, no inbound
        assert await list_sids(client, OTHER_KEY) == [theirs]
        everything = await list_sids(client, OPS_KEY)
        assert set(everything) == {*mine, theirs, inbound.call_sid} and len(everything) == 5
        assert await list_sids(client, OPS_KEY, direction="inbound") == [inbound.call_sid]
        assert await list_sids(client, API_KEY, direction="inbound") == []

        # One record: the owner and operators see it with its turns and timeline; another key gets a 404.
        shown = (await client.get(f"/calls/{mine[0]}", headers=auth(API_KEY))).json()
        assert (shown["to"], shown["from"], shown["direction"], shown["ended_by"], shown["turn_count"]) == (
            TO, "+14155550100", "outbound-api", "agent", 3)
        assert shown["api_key_id"] == key_id(API_KEY) and API_KEY not in str(shown)
        assert shown["turns"][1]["agent_transcript"] == "Of course. Your next appointment is on Fri"
        assert shown["turns"][1]["barged_in"] is True and shown["usage"]["output_audio"] == 2405
        assert [entry["kind"] for entry in shown["timeline"]][:3] == ["turn", "turn", "reconnect"]
        assert (await client.get(f"/calls/{mine[0]}", headers=auth(OPS_KEY))).json() == shown
        document = (await client.get("/openapi.json")).json()
        conforms(document, "Call", shown)
        conforms(document, "CallList", (await client.get("/calls", headers=auth(OPS_KEY))).json())
        refused = await client.get(f"/calls/{mine[0]}", headers=auth(OTHER_KEY))
        assert (refused.status_code, refused.json()["error"]["code"]) == (404, "call_not_found")
        inbound_shown = await client.get(f"/calls/{inbound.call_sid}", headers=auth(OPS_KEY))
        assert inbound_shown.status_code == 200 and inbound_shown.json()["direction"] == "inbound"
        assert inbound_shown.json()["from"] == INBOUND_FROM
        assert (await client.get(f"/calls/{inbound.call_sid}", headers=auth(API_KEY))).status_code == 404

        # The operator key places calls too (it is a key); it may end any call (a supervisor's key), while another
        # key may end only its own.
        ops_call = (await place(client, key=OPS_KEY)).json()["call_sid"]
        assert ops_call in await list_sids(client, OPS_KEY) and ops_call not in await list_sids(client, API_KEY)
        assert (await client.post(f"/calls/{ops_call}/hangup", headers=auth(API_KEY))).status_code == 404
        assert (await client.post(f"/calls/{mine[1]}/hangup", headers=auth(OPS_KEY))).status_code == 202

        listed = (await client.get("/calls", headers=auth(OPS_KEY), params={"direction": "inbound"})).json()
        assert "turns" not in listed["calls"][0] and listed["calls"][0]["turn_count"] == 3
        assert listed["calls"][0]["cost_usd"] == 0.1532 and listed["next_cursor"] is None
        assert (await client.get("/calls")).status_code == 401


async def test_with_a_single_key_that_key_is_the_operator():
    async with outbound(api_keys=(API_KEY,)) as (gateway, _, client):
        placed = (await place(client)).json()["call_sid"]
        inbound = await _finish_inbound(gateway, 1)
        assert set(await list_sids(client, API_KEY)) == {placed, inbound.call_sid}
        assert (await client.get(f"/calls/{inbound.call_sid}", headers=auth(API_KEY))).status_code == 200
    keys = ApiKeys([API_KEY, OTHER_KEY])
    assert not keys.is_operator(key_id(API_KEY)) and not keys.is_operator(key_id(OTHER_KEY))
    keys = ApiKeys([API_KEY, OTHER_KEY], [OTHER_KEY])
    assert keys.is_operator(key_id(OTHER_KEY)) and not keys.is_operator(key_id(API_KEY))
    assert ApiKeys([], [OPS_KEY]).authenticate(f"Bearer {OPS_KEY}") == key_id(OPS_KEY)
    assert ApiKeys([API_KEY, API_KEY]).is_operator(key_id(API_KEY))  # the same key twice is one key


async def test_filters_and_paging_over_http():
    async with outbound(api_keys=(API_KEY,)) as (gateway, _, client):
        now = time.time()
        store = gateway.state.store
        for n in range(7):
            await _finish_inbound(gateway, 10 + n, started_at=now - 60 * (n + 1),
                                  outcome="completed" if n % 2 else "error",
                                  from_="+14155550999" if n == 3 else INBOUND_FROM)
        await store.create_call(CallRecord(call_sid=sid(30), to="+14155550999", from_="+14155550100",
                                           api_key_id=key_id(API_KEY), created_at=now - 30, outcome="no-answer"))
        assert await list_sids(client, API_KEY, outcome="error") == [sid(10), sid(12), sid(14), sid(16)]
        assert await list_sids(client, API_KEY, number="+14155550999") == [sid(30), sid(13)]
        assert await list_sids(client, API_KEY, number=" 14155550999") == [sid(30), sid(13)]  # an unescaped +
        assert await list_sids(client, API_KEY, direction="outbound") == [sid(30)]
        iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 60 * 4 - 1))  # whole seconds
        assert await list_sids(client, API_KEY, since=iso, until=str(now - 60)) == [sid(11), sid(12), sid(13)]
        assert await list_sids(client, API_KEY, since=iso.replace("Z", "+00:00")) == await list_sids(
            client, API_KEY, since=iso)

        walked, cursor, pages = [], None, 0
        while True:
            params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
            body = (await client.get("/calls", params=params, headers=auth(API_KEY))).json()
            walked += [call["call_sid"] for call in body["calls"]]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert pages == 3 and walked == await list_sids(client, API_KEY, limit="200")
        assert walked[:2] == [sid(30), sid(10)] and len(walked) == 8
        # A cursor is bound to nothing but a position: a filter may change between pages.
        first = (await client.get("/calls", params={"limit": "1"}, headers=auth(API_KEY))).json()
        assert await list_sids(client, API_KEY, cursor=first["next_cursor"], direction="inbound") == walked[1:]


@pytest.mark.parametrize("query, code, field", [
    ("limit=0", "invalid_parameter", "limit"),
    ("limit=201", "invalid_parameter", "limit"),
    ("limit=ten", "invalid_parameter", "limit"),
    ("limit=%EF%BC%91", "invalid_parameter", "limit"),  # a fullwidth digit is not a number here
    ("since=yesterday", "invalid_parameter", "since"),
    ("since=2025-01-02T00:00:00Z&until=2025-01-01T00:00:00Z", "invalid_parameter", "until"),
    ("until=99999-01-01", "invalid_parameter", "until"),
    ("direction=sideways", "invalid_parameter", "direction"),
    ("outcome=DROP%20TABLE", "invalid_parameter", "outcome"),
    ("number=12", "invalid_parameter", "number"),
    ("number=%2B1415555%0A0100", "invalid_parameter", "number"),
    ("cursor=not-a-cursor", "invalid_parameter", "cursor"),
    ("cursor=" + "A" * 300, "invalid_parameter", "cursor"),
    ("limit=1&limit=2", "invalid_parameter", "limit"),
    ("sort=desc", "unknown_parameter", None),
    ("api_key_id=someone-else", "unknown_parameter", None),
])
async def test_bad_query_strings_are_400_with_the_parameter_named(query, code, field):
    async with outbound() as (_, _, client):
        response = await client.get(f"/calls?{query}", headers=auth(API_KEY))
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == code and error.get("field") == field, error
        if code == "unknown_parameter":
            assert error["fields"] == [query.split("=")[0]]


def test_settings_for_records():
    settings = Settings.from_env({"OPERATOR_API_KEYS": f"{OPS_KEY}, ", "RECORD_RETENTION_DAYS": "7"})
    assert settings.operator_api_keys == (OPS_KEY,) and settings.record_retention_days == 7
    assert OPS_KEY not in repr(settings)
    assert Settings.from_env({}).record_retention_days == 30
    assert Settings.from_env({"RECORD_RETENTION_DAYS": "0"}).record_retention_days == 0  # kept forever
    for env in ({"OPERATOR_API_KEYS": "short"}, {"RECORD_RETENTION_DAYS": "-1"},
                {"RECORD_RETENTION_DAYS": "thirty"}):
        with pytest.raises(ConfigError):
            Settings.from_env(env)


async def test_the_app_prunes_old_records_and_recordings_at_start_up(tmp_path):
    path = tmp_path / "calls.db"
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    store = SQLiteCallStore(str(path))
    now = time.time()
    await store.finish_call(final_record(1, started_at=now - 8 * DAY))
    await store.finish_call(final_record(2, started_at=now - DAY))
    await store.close()
    for n in (1, 2):
        (recordings / f"{sid(n)}.jsonl").write_text("{}\n")
    async with outbound(api_keys=(API_KEY,), store_url=f"sqlite:///{path}", record_retention_days=7,
                        record_calls_dir=str(recordings)) as (gateway, _, client):
        for _ in range(200):
            if not (recordings / f"{sid(1)}.jsonl").exists():
                break
            await asyncio.sleep(0.02)
        assert await list_sids(client, API_KEY) == [sid(2)]
        assert sorted(p.name for p in recordings.iterdir()) == [f"{sid(2)}.jsonl"]
        assert (await client.get(f"/calls/{sid(1)}", headers=auth(API_KEY))).status_code == 404
    async with outbound(api_keys=(API_KEY,), store_url=f"sqlite:///{path}", record_retention_days=0) as (_, _, client):
        await asyncio.sleep(0.1)
        assert await list_sids(client, API_KEY) == [sid(2)]  # 0: kept forever
