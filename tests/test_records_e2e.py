"""A call through the replay phone leaves the right record, in SQLite and in PostgreSQL: its turns (the caller's
words, the agent's cut to what was heard at a barge-in), latencies and cost, read back through GET /calls/{sid}."""

from __future__ import annotations

import os

import httpx
import pytest

from gateway.observe.cost import Usage
from gateway.tooling.replay import CallerTurn, load_sample, run_call

from .conftest import PRICED_AS_GPT_REALTIME, start_gateway
from .helpers import calls_over
from .test_store_postgres import _postgres_unavailable

KEY = "k-records-0123456789"
POSTGRES_URL = os.environ.get("GATEWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def one_call_record(store_url: str) -> tuple[dict, float, list]:
    async with start_gateway(store_url=store_url, api_keys=(KEY,), transcription_model="gpt-4o-mini-transcribe",
                             model_prices=PRICED_AS_GPT_REALTIME) as gw:
        turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300),
                 CallerTurn(load_sample("caller_question"), after_silence_ms=2500),
                 CallerTurn(load_sample("caller_bargein"), after_silence_ms=900)]  # talks over the answer
        report = await run_call(gw.ws_url, turns, timeout_s=40, hangup_after_ms=2500)
        await calls_over(gw)
        usage = Usage()
        for session in gw.local_server.sessions:
            for response in session.responses:
                usage.add(Usage.from_response(response.get("usage")))
        cost = (usage.text_in * 4 + usage.text_out * 16 + usage.audio_in * 32 + usage.audio_out * 64) / 1e6
        call_sid = report.call_sid
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            response = await http.get(f"/calls/{call_sid}", headers={"Authorization": f"Bearer {KEY}"})
            assert response.status_code == 200, response.text
            listed = await http.get("/calls", headers={"Authorization": f"Bearer {KEY}"},
                                    params={"direction": "inbound"})
            assert call_sid in [c["call_sid"] for c in listed.json()["calls"]]
    return response.json(), cost, report.turns


def check(record: dict, cost: float, heard_turns: list) -> None:
    assert record["direction"] == "inbound" and record["outcome"] == "completed" and record["ended_by"] == "caller"
    assert record["cost_usd"] == pytest.approx(cost, rel=1e-4, abs=1e-6) and cost > 0
    turns = record["turns"]
    answered = [t for t in heard_turns if t.response_ms is not None]
    assert len(turns) == len(answered) >= 2, turns
    assert 200 < turns[0]["latency_ms"] < 3000, turns  # from when the caller really stopped, not the VAD event
    assert turns[0]["caller_transcript"] and turns[0]["agent_transcript"]  # transcripts of both sides
    cut = [t for t in turns if t["barged_in"]]
    if any(t.barge_in for t in heard_turns):
        assert cut, turns
        # What the caller heard of the interrupted answer: shorter than the whole answer's transcript.
        assert cut[0]["heard_ms"] is not None
    assert any(entry["kind"] == "turn" for entry in record["timeline"])


async def test_a_call_leaves_its_record_in_sqlite(tmp_path):
    record, cost, turns = await one_call_record(f"sqlite:///{tmp_path}/records.db")
    check(record, cost, turns)


async def test_a_call_leaves_its_record_in_postgresql():
    reason = _postgres_unavailable()
    if reason:
        pytest.skip(reason)
    record, cost, turns = await one_call_record(POSTGRES_URL)
    check(record, cost, turns)


async def test_two_instances_write_their_records_to_the_one_postgresql():
    reason = _postgres_unavailable()
    if reason:
        pytest.skip(reason)
    common = dict(store_url=POSTGRES_URL, api_keys=(KEY,))
    async with start_gateway(instance_id="pg-a", **common) as a, start_gateway(instance_id="pg-b", **common) as b:
        reports = [await run_call(gw.ws_url, [CallerTurn(load_sample("caller_hello"), after_silence_ms=300)],
                                  timeout_s=30, hangup_after_ms=500) for gw in (a, b)]
        for gw in (a, b):
            await calls_over(gw)
        async with httpx.AsyncClient(base_url=a.http_url) as http:  # either instance reads both
            for report in reports:
                response = await http.get(f"/calls/{report.call_sid}", headers={"Authorization": f"Bearer {KEY}"})
                assert response.status_code == 200 and response.json()["turns"], response.text
