"""Call records in the store: schema migrations (an upgrade in place from the schema of the store before migrations,
concurrent start-ups), the final record of a call, listing with filters and paging, retention.

Real SQLite files and the local PostgreSQL (``GATEWAY_TEST_POSTGRES_URL``; each test in a schema of its own, see
``tests/test_store_postgres.py``); the PostgreSQL cases skip, saying why, when it is not reachable.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import textwrap
import time
from dataclasses import replace

import pytest

from gateway.store import (
    CallQuery, CallRecord, MemoryCallStore, OutboundCallSettings, PostgresCallStore, SessionChange, SQLiteCallStore,
    ToolRun, Turn, decode_cursor, encode_cursor, merge_final, prune, run_retention,
)
from gateway.store.migrate import BASELINE_NAME, latest_version, load_migrations, split_statements
from tests.test_store_postgres import postgres_url  # noqa: F401 (a fixture)

TO, FROM = "+14155550123", "+14155550100"
CALLER = "+14155550177"
DAY = 86400.0
ALL_VERSIONS = list(range(1, latest_version("sqlite") + 1))  # both dialects have the same migrations

# ---- the "v1" fixture: the schema gateway/store.py created before migrations, copied verbatim

V1_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS call_settings (key TEXT PRIMARY KEY, data TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS call_settings_expiry ON call_settings (expires_at);
CREATE TABLE IF NOT EXISTS calls (call_sid TEXT PRIMARY KEY, data TEXT NOT NULL, status TEXT NOT NULL,
                                  updated_at REAL NOT NULL);
"""

V1_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS call_settings (key TEXT PRIMARY KEY, data JSONB NOT NULL,
                                          expires_at DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS call_settings_expiry ON call_settings (expires_at);
CREATE TABLE IF NOT EXISTS calls (call_sid TEXT PRIMARY KEY, data JSONB NOT NULL, status TEXT NOT NULL,
                                  updated_at DOUBLE PRECISION NOT NULL);
"""
# How the v1 store wrote a record: the whole record as JSON in data.
V1_SQLITE_INSERT = "INSERT OR REPLACE INTO calls (call_sid, data, status, updated_at) VALUES (?, ?, ?, ?)"
V1_PG_INSERT = ("INSERT INTO calls (call_sid, data, status, updated_at) VALUES (%s, %s, %s, %s) ON CONFLICT (call_sid) "
                "DO UPDATE SET data = EXCLUDED.data, status = EXCLUDED.status, updated_at = EXCLUDED.updated_at")


def sid(n: int) -> str:
    return f"CA{n:032x}"


def v1_record_json(n: int, *, created_at: float, key: str = "key1", status: str = "completed") -> dict:
    """A record exactly as the v1 CallRecord.to_json() wrote it (its fields, no more)."""
    return {"call_sid": sid(n), "to": TO, "from_": FROM, "status": status, "direction": "outbound-api",
            "machine_detection": "voicemail", "metadata": {"order": str(n)}, "answered_by": "human",
            "duration_s": 42, "machine_action": None, "api_key_id": key, "created_at": created_at,
            "updated_at": created_at + 60}


def final_record(n: int, *, direction: str = "inbound", started_at: float | None = None, **changes) -> CallRecord:
    """What the live call knows at its end: a realistic inbound call with a barge-in, a tool, a reconnect."""
    started = time.time() - 120 if started_at is None else started_at
    record = CallRecord(
        call_sid=sid(n), to=FROM, from_=CALLER, status="completed", direction=direction,
        stream_sid=f"MZ{n:032x}", started_at=started, ended_at=started + 95.5, created_at=started + 95.5,
        outcome="completed", ended_by="caller",
        turns=(
            Turn(caller_transcript=None, agent_transcript="Hello, Acme dental, how can I help?", latency_ms=None,
                 t_ms=400, heard_ms=2300, response_id="resp_1"),
            Turn(caller_transcript="I'd like to move my appointment.",
                 agent_transcript="Of course. Your next appointment is on Fri",  # cut where the caller barged in
                 latency_ms=612, model_ttfa_ms=480, barged_in=True, t_ms=5200, heard_ms=2100, response_id="resp_2"),
            Turn(caller_transcript="To Monday please.", agent_transcript="Done: Monday at 3 pm. Goodbye!",
                 latency_ms=540, t_ms=9800, heard_ms=3900, response_id="resp_3"),
        ),
        tool_calls=(ToolRun(name="move_appointment", outcome="ok", duration_ms=230, t_ms=10100),
                    ToolRun(name="end_call", outcome="ok", duration_ms=0, t_ms=14000)),
        reconnects=(SessionChange(cause="model socket closed (1011)", t_ms=7000),),
        rollovers=(SessionChange(cause="session limit", t_ms=60000),),
        usage={"input_text": 1210, "input_audio": 3370, "input_cached_text": 640, "input_cached_audio": 0,
               "output_text": 180, "output_audio": 2405},
        cost_usd=0.1532,
        recording=f"{sid(n)}.jsonl",
    )
    return replace(record, **changes)


# ---- stores of each kind


class Stores:
    def __init__(self, kind: str, tmp_path, pg_url: str | None) -> None:
        self.kind, self.path, self.pg_url, self.made = kind, str(tmp_path / "calls.db"), pg_url, []

    def __call__(self):
        if self.kind == "memory":
            store = MemoryCallStore()
        elif self.kind == "sqlite":
            store = SQLiteCallStore(self.path)
        else:
            store = PostgresCallStore(self.pg_url)
        self.made.append(store)
        return store


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def stores(request, tmp_path):
    pg_url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    made = Stores(request.param, tmp_path, pg_url)
    yield made
    for store in made.made:
        await store.close()


async def _pg_rows(url: str, query: str, params: tuple = ()) -> list[tuple]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(query, params)
        return await cursor.fetchall()


async def _pg_script(url: str, script: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for statement in filter(str.strip, script.split(";")):
            await conn.execute(statement)


def _sqlite_shape(path: str) -> tuple[list, list]:
    """(columns of calls with their types, index names): what a schema is, whatever order it was built in."""
    db = sqlite3.connect(path)
    try:
        columns = sorted((row[1], row[2]) for row in db.execute("PRAGMA table_info(calls)"))
        indexes = sorted(row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                                      "AND name NOT LIKE 'sqlite_autoindex%'"))
        return columns, indexes
    finally:
        db.close()


async def _pg_shape(url: str) -> tuple[list, list]:
    columns = await _pg_rows(url, "SELECT column_name, data_type FROM information_schema.columns "
                                  "WHERE table_schema = current_schema() AND table_name = 'calls' ORDER BY 1")
    indexes = await _pg_rows(url, "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() ORDER BY 1")
    return sorted(columns), sorted(indexes)


# ---- migrations


def test_migration_files_are_numbered_and_the_first_is_the_v1_schema():
    for dialect, v1 in (("sqlite", V1_SQLITE_SCHEMA), ("postgresql", V1_PG_SCHEMA)):
        migrations = load_migrations(dialect)
        assert [m.version for m in migrations] == list(range(1, len(migrations) + 1)) and len(migrations) >= 2
        normal = [" ".join(statement.split()) for statement in split_statements(v1)]
        assert [" ".join(statement.split()) for statement in migrations[0].statements] == normal
    assert split_statements("-- a; comment\nSELECT 1;\n  -- more\nSELECT 2") == ("SELECT 1", "SELECT 2")


async def test_sqlite_database_made_by_the_v1_store_is_upgraded_in_place(tmp_path):
    path = str(tmp_path / "calls.db")
    created = time.time() - 3 * DAY
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(V1_SQLITE_SCHEMA)
    for n, key in ((1, "key1"), (2, "key2")):
        data = v1_record_json(n, created_at=created + n, key=key)
        db.execute(V1_SQLITE_INSERT, (sid(n), json.dumps(data), data["status"], data["updated_at"]))
    settings = OutboundCallSettings(to=TO, from_=FROM, instructions="Be brief.", api_key_id="key1")
    db.execute("INSERT INTO call_settings (key, data, expires_at) VALUES (?, ?, ?)",
               (sid(3), json.dumps(settings.to_json()), time.time() + 600))
    db.close()

    store = SQLiteCallStore(path)
    try:
        assert store.migrated == list(range(2, latest_version("sqlite") + 1))  # recognised as 1, not recreated
        versions = store._db.execute("SELECT version, name FROM schema_version ORDER BY version").fetchall()
        assert versions[0] == (1, BASELINE_NAME) and [v for v, _ in versions] == ALL_VERSIONS
        # The old rows are there, whole, and found by the new columns (backfilled from data).
        old = await store.get_call(sid(1))
        assert (old.status, old.answered_by, old.duration_s, old.metadata, old.api_key_id, old.created_at,
                old.turns, old.usage) == ("completed", "human", 42, {"order": "1"}, "key1", created + 1, (), {})
        assert [r.call_sid for r in (await store.list_calls(api_key_id="key2")).records] == [sid(2)]
        assert [r.call_sid for r in (await store.list_calls(number=TO, direction="outbound")).records] == [
            sid(2), sid(1)]
        assert await store.take_call_settings(sid(3)) == settings  # a call placed before the upgrade still starts
        # and the old rows go on living: status callbacks, then the call's final record.
        assert (await store.update_status(sid(1), "completed", duration_s=43)).duration_s == 43
        finished = await store.finish_call(final_record(1, direction="outbound-api"))
        assert (finished.api_key_id, finished.metadata, len(finished.turns)) == ("key1", {"order": "1"}, 3)
    finally:
        await store.close()

    again = SQLiteCallStore(path)  # the next start-up: nothing to do
    assert again.migrated == []
    await again.close()
    fresh = str(tmp_path / "fresh.db")
    await SQLiteCallStore(fresh).close()
    assert _sqlite_shape(path) == _sqlite_shape(fresh)  # upgraded = made new

    # A gateway of the previous version still running (a rolling deploy) writes the v1 way: its rows are read.
    db = sqlite3.connect(path, isolation_level=None)
    data = v1_record_json(9, created_at=time.time())
    db.execute(V1_SQLITE_INSERT, (sid(9), json.dumps(data), data["status"], data["updated_at"]))
    db.close()
    store = SQLiteCallStore(path)
    assert (await store.get_call(sid(9))).metadata == {"order": "9"}
    await store.close()


async def test_postgres_database_made_by_the_v1_store_is_upgraded_in_place(postgres_url):  # noqa: F811
    from psycopg.types.json import Jsonb

    created = time.time() - 3 * DAY
    await _pg_script(postgres_url, V1_PG_SCHEMA)
    for n, key in ((1, "key1"), (2, "key2")):
        data = v1_record_json(n, created_at=created + n, key=key)
        await _pg_rows(postgres_url, V1_PG_INSERT + " RETURNING 1",
                       (sid(n), Jsonb(data), data["status"], data["updated_at"]))
    settings = OutboundCallSettings(to=TO, from_=FROM, greeting="Hi", api_key_id="key1")
    await _pg_rows(postgres_url, "INSERT INTO call_settings (key, data, expires_at) VALUES (%s, %s, %s) RETURNING 1",
                   (sid(3), Jsonb(settings.to_json()), time.time() + 600))

    store = PostgresCallStore(postgres_url)
    try:
        old = await store.get_call(sid(1))
        assert store.migrated == list(range(2, latest_version("postgresql") + 1))
        versions = await _pg_rows(postgres_url, "SELECT version, name FROM schema_version ORDER BY version")
        assert versions[0] == (1, BASELINE_NAME) and [v for v, _ in versions] == ALL_VERSIONS
        assert (old.status, old.answered_by, old.metadata, old.api_key_id, old.created_at) == (
            "completed", "human", {"order": "1"}, "key1", created + 1)
        assert [r.call_sid for r in (await store.list_calls(api_key_id="key2")).records] == [sid(2)]
        assert [r.call_sid for r in (await store.list_calls(number=TO, direction="outbound")).records] == [
            sid(2), sid(1)]
        assert await store.take_call_settings(sid(3)) == settings
        assert await store.claim_machine_action(sid(2), "hangup") is True
        finished = await store.finish_call(final_record(1, direction="outbound-api"))
        assert (finished.api_key_id, finished.metadata, finished.cost_usd) == ("key1", {"order": "1"}, 0.1532)
        assert await store.get_call(sid(1)) == finished
        upgraded = await _pg_shape(postgres_url)

        # A gateway of the previous version still running writes the v1 way: its rows are read.
        data = v1_record_json(9, created_at=time.time())
        await _pg_rows(postgres_url, V1_PG_INSERT + " RETURNING 1",
                       (sid(9), Jsonb(data), data["status"], data["updated_at"]))
        assert (await store.get_call(sid(9))).metadata == {"order": "9"}
    finally:
        await store.close()

    again = PostgresCallStore(postgres_url)
    await again.get_call(sid(1))
    assert again.migrated == []
    await again.close()
    await _pg_script(postgres_url, "DROP TABLE calls; DROP TABLE call_settings; DROP TABLE schema_version")
    fresh = PostgresCallStore(postgres_url)
    await fresh.get_call(sid(1))
    assert fresh.migrated == ALL_VERSIONS
    await fresh.close()
    assert await _pg_shape(postgres_url) == upgraded  # upgraded = made new


async def test_postgres_concurrent_start_ups_migrate_once(postgres_url):  # noqa: F811
    """Several instances starting at once on one database (fresh, then one made by the v1 store): each migration
    is applied once, every instance works."""
    for round_ in ("fresh", "v1"):
        if round_ == "v1":
            await _pg_script(postgres_url, "DROP TABLE calls; DROP TABLE call_settings; DROP TABLE schema_version")
            await _pg_script(postgres_url, V1_PG_SCHEMA)
        stores = [PostgresCallStore(postgres_url, max_size=2) for _ in range(4)]
        try:
            await asyncio.gather(*(store.get_call(sid(1)) for store in stores))
            applied = sorted(version for store in stores for version in store.migrated)
            assert applied == (ALL_VERSIONS if round_ == "fresh" else ALL_VERSIONS[1:])
            versions = await _pg_rows(postgres_url, "SELECT version FROM schema_version ORDER BY version")
            assert [v for (v,) in versions] == ALL_VERSIONS
            await asyncio.gather(*(store.finish_call(final_record(n)) for n, store in enumerate(stores)))
            assert len((await stores[0].list_calls()).records) == 4
        finally:
            for store in stores:
                await store.close()


_OPEN_STORE_SCRIPT = textwrap.dedent("""
    import asyncio, json, sys
    from gateway.store import PostgresCallStore, open_store

    async def main():
        url = sys.argv[1]
        store = open_store(url) if url.startswith("sqlite:") else PostgresCallStore(url)  # or a conninfo
        await store.get_call("CA" + "0" * 32)
        print(json.dumps(store.migrated))
        await store.close()

    asyncio.run(main())
""")


async def _start_processes(url: str, count: int) -> list[list[int]]:
    processes = [await asyncio.create_subprocess_exec(sys.executable, "-c", _OPEN_STORE_SCRIPT, url,
                                                      stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                 for _ in range(count)]
    results = []
    for process in processes:
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, err.decode()
        results.append(json.loads(out))
    return results


async def test_sqlite_processes_starting_at_once_migrate_once(tmp_path):
    path = str(tmp_path / "calls.db")
    db = sqlite3.connect(path)
    db.executescript(V1_SQLITE_SCHEMA)
    db.close()
    results = await _start_processes(f"sqlite:///{path}", 3)
    assert sorted(v for applied in results for v in applied) == ALL_VERSIONS[1:]
    results = await _start_processes(f"sqlite:///{tmp_path / 'fresh.db'}", 3)
    assert sorted(v for applied in results for v in applied) == ALL_VERSIONS


async def test_postgres_processes_starting_at_once_migrate_once(postgres_url):  # noqa: F811
    results = await _start_processes(postgres_url, 3)
    assert sorted(v for applied in results for v in applied) == ALL_VERSIONS


def test_a_failed_migration_leaves_the_previous_version(tmp_path, monkeypatch):
    """Each migration runs in one transaction with its version row: a failure half-way changes nothing."""
    from gateway.store import migrate

    path = str(tmp_path / "calls.db")
    db = sqlite3.connect(path)
    db.executescript(V1_SQLITE_SCHEMA)
    db.close()
    real = migrate.load_migrations

    def broken(dialect):
        migrations = real(dialect)
        second = migrations[1]
        return [migrations[0], replace(second, statements=second.statements[:3] + ("SELECT no_such_function()",))]

    monkeypatch.setattr(migrate, "load_migrations", broken)
    with pytest.raises(sqlite3.OperationalError):
        SQLiteCallStore(path)
    db = sqlite3.connect(path)  # as it was: not even marked at version 1
    assert sorted(row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")) == [
        "call_settings", "calls"]
    assert "stream_sid" not in [row[1] for row in db.execute("PRAGMA table_info(calls)")]
    db.close()
    monkeypatch.setattr(migrate, "load_migrations", real)
    store = SQLiteCallStore(path)
    assert store.migrated == list(range(2, latest_version("sqlite") + 1))
    store._db.close()


# ---- the final record of a call


async def test_finish_call_writes_an_inbound_call_whole(stores):
    store = stores()
    final = final_record(1)
    stored = await store.finish_call(final)
    assert stored.created_at == final.started_at  # an inbound call is listed by when it started
    assert stored == replace(final, created_at=final.started_at, updated_at=stored.updated_at)
    assert await store.get_call(sid(1)) == stored
    shown = stored.public_json()
    assert shown["turns"][1] == {"caller_transcript": "I'd like to move my appointment.",
                                 "agent_transcript": "Of course. Your next appointment is on Fri",
                                 "latency_ms": 612, "model_ttfa_ms": 480, "barged_in": True, "t_ms": 5200,
                                 "heard_ms": 2100,
                                 "response_id": "resp_2"}
    assert (shown["turn_count"], shown["barge_ins"], shown["tool_call_count"], shown["cost_usd"]) == (3, 1, 2, 0.1532)
    assert shown["reconnects"] == {"count": 1, "causes": {"model socket closed (1011)": 1},
                                   "events": [{"cause": "model socket closed (1011)", "t_ms": 7000}]}
    assert [(entry["t_ms"], entry["kind"]) for entry in shown["timeline"]] == [
        (400, "turn"), (5200, "turn"), (7000, "reconnect"), (9800, "turn"), (10100, "tool_call"),
        (14000, "tool_call"), (60000, "rollover")]
    assert shown["ended_by"] == "caller" and shown["stream_sid"] == f"MZ{1:032x}" and shown["recording"] is True
    json.dumps(shown)  # JSON-ready


async def test_finish_call_merges_with_what_placement_and_twilio_wrote(stores):
    store = stores()
    placed = CallRecord(call_sid=sid(2), to=TO, from_=FROM, machine_detection="voicemail",
                        metadata={"customer": "42"}, api_key_id="key1", created_at=time.time() - 300)
    await store.create_call(placed)
    await store.update_status(sid(2), "in-progress", answered_by="human")
    final = final_record(2, direction="outbound-api", to="", from_="", status="in-progress", api_key_id=None,
                         metadata={"x": "y"}, ended_by="agent")
    stored = await store.finish_call(final)
    assert (stored.to, stored.from_, stored.api_key_id, stored.machine_detection, stored.answered_by) == (
        TO, FROM, "key1", "voicemail", "human")
    assert stored.metadata == {"x": "y", "customer": "42"} and stored.created_at == placed.created_at
    assert (stored.turns, stored.usage, stored.ended_by, stored.status) == (
        final.turns, final.usage, "agent", "in-progress")
    # Twilio's completed callback after the call's end moves the status on and keeps the call's record.
    completed = await store.update_status(sid(2), "completed", duration_s=96)
    assert (completed.status, completed.duration_s, completed.turns) == ("completed", 96, final.turns)
    # A late final record never moves the status backwards.
    assert (await store.finish_call(replace(final, status="ringing"))).status == "completed"
    assert merge_final(None, final, 5.0).updated_at == 5.0


async def test_a_record_is_started_completed_or_marked_lost_the_same_on_every_backend(stores):
    """The record written at a call's start (in progress, its holder), completed at its end, or marked lost when its
    holder is gone; every write a merge by call_sid, so a spooled write replayed twice or late changes nothing."""
    from gateway.store.records import start_record

    store = stores()
    started = time.time() - 30
    start = start_record(call_sid=sid(30), stream_sid="MZ" + "3" * 32, direction="inbound", from_=CALLER, to=FROM,
                         started_at=started, holder="host-a", model="gpt-realtime")
    stored = await store.start_call(start)
    assert (stored.status, stored.holder, stored.started_at, stored.created_at, stored.ended_at, stored.outcome) == (
        "in-progress", "host-a", started, started, None, None)
    assert await store.start_call(start) == replace(stored, updated_at=(await store.get_call(sid(30))).updated_at)
    assert [r.call_sid for r in await store.open_calls()] == [sid(30)]
    listed = (await store.list_calls()).records
    assert [(r.call_sid, r.status) for r in listed] == [(sid(30), "in-progress")]

    final = await store.finish_call(final_record(30, started_at=started, holder="host-a"))
    assert (final.status, final.outcome, final.holder, final.created_at) == ("completed", "completed", "host-a",
                                                                             started)
    assert await store.open_calls() == []
    assert await store.start_call(start) == final  # a start replayed after the end: left alone
    assert await store.mark_lost(sid(30), "lost: gone") is None  # ended: never lost
    assert await store.get_call(sid(30)) == final

    # A call whose holder stopped: lost, with everything known kept; open no more.
    await store.start_call(replace(start, call_sid=sid(31)))
    lost = await store.mark_lost(sid(31), "lost: the instance holding the call (host-a) stopped")
    assert (lost.status, lost.outcome, lost.end_reason, lost.holder, lost.from_, lost.started_at) == (
        "lost", "lost", "lost: the instance holding the call (host-a) stopped", "host-a", CALLER, started)
    assert await store.open_calls() == [] and await store.mark_lost(sid(31), "again") is None
    assert [r.call_sid for r in (await store.list_calls(outcome="lost")).records] == [sid(31)]
    # ... unless it was not lost after all: its own final record replaces the mark.
    late = await store.finish_call(final_record(31, started_at=started))
    assert (late.status, late.outcome, late.end_reason, late.holder) == ("completed", "completed", None, "host-a")
    assert await store.mark_lost("CA" + "f" * 32, "unknown") is None

    # Open records are found page by page (a page is 200), behind any number of others.
    for n in range(40, 245):
        await store.start_call(replace(start, call_sid=sid(n), started_at=started + n, created_at=started + n))
    assert [r.call_sid for r in await store.open_calls()] == [sid(n) for n in range(244, 39, -1)]
    assert len(await store.open_calls(max_records=3)) == 3

    # An outbound call: placement's record gets the holder; Twilio's final status wins over lost, outcome stays.
    await store.create_call(CallRecord(call_sid=sid(32), to=TO, from_=FROM, api_key_id="key1", status="ringing"))
    begun = await store.start_call(replace(start, call_sid=sid(32), direction="outbound-api", to="", from_=""))
    assert (begun.status, begun.holder, begun.to, begun.api_key_id) == ("in-progress", "host-a", TO, "key1")
    assert (await store.mark_lost(sid(32), "lost")).status == "lost"
    assert (await store.update_status(sid(32), "in-progress")).status == "lost"  # never backwards
    after = await store.update_status(sid(32), "completed", duration_s=40)
    assert (after.status, after.outcome, after.duration_s) == ("completed", "lost", 40)


def ledger_summary(call_sid: str, *, direction: str, started_at: float) -> dict:
    """A call's end as the live call summarises it (``gateway.observe.ledger.CallLedger.finish``)."""
    return {
        "call_sid": call_sid, "stream_sid": "MZ" + "e" * 32, "direction": direction,
        "from": "+1415*****77", "to": "+1415*****00",  # masked, as in the logs (LOG_FULL_NUMBERS off)
        "started_at": started_at, "ended_at": started_at + 41.25, "duration_s": 41.25,
        "outcome": "completed", "ended_by": "caller", "end_reason": "caller hung up (twilio stop)",
        "turns": [
            {"at_s": 0.42, "caller": None, "agent": "Hi, this is Acme.", "latency_ms": None, "model_ttfa_ms": 380,
             "barged_in": False, "heard_ms": 1500},
            {"at_s": 6.1, "caller": "When are you open?", "agent": "We are open from nine to", "latency_ms": 702.4,
             "model_ttfa_ms": 450, "barged_in": True, "heard_ms": 1800},
        ],
        "turns_not_recorded": 0,
        "tools": [{"name": "opening_hours", "outcome": "ok", "duration_ms": 35}],
        "reconnects": {"model socket closed": 2, "session_expired": 1},
        "rollovers": 1,
        "model": "gpt-realtime",
        "usage": {"input_text": 900, "input_audio": 1200, "input_cached_text": 0, "input_cached_audio": 0,
                  "output_text": 60, "output_audio": 700},
        "cost_usd": 0.042317,
    }


async def test_finish_call_takes_the_live_calls_own_summary(stores):
    store = stores()
    started = time.time() - 60
    inbound = await store.finish_call(ledger_summary(sid(5), direction="inbound", started_at=started))
    assert (inbound.direction, inbound.status, inbound.from_, inbound.created_at, inbound.ended_at) == (
        "inbound", "completed", "+1415*****77", started, started + 41.25)
    assert inbound.turns[1] == Turn(caller_transcript="When are you open?", agent_transcript="We are open from nine to",
                                    latency_ms=702, model_ttfa_ms=450, barged_in=True, t_ms=6100, heard_ms=1800)
    assert inbound.tool_calls == (ToolRun(name="opening_hours", outcome="ok", duration_ms=35),)
    assert sorted(change.cause for change in inbound.reconnects) == [
        "model socket closed", "model socket closed", "session_expired"]
    assert [change.cause for change in inbound.rollovers] == ["session limit"]
    assert (inbound.end_reason, inbound.model, inbound.cost_usd) == (
        "caller hung up (twilio stop)", "gpt-realtime", 0.042317)
    assert await store.get_call(sid(5)) == inbound
    shown = inbound.public_json()
    assert shown["reconnects"]["count"] == 3 and shown["reconnects"]["causes"]["model socket closed"] == 2
    assert shown["turns"][0]["model_ttfa_ms"] == 380

    # An outbound call: placement wrote the full numbers, the key and the metadata; Twilio says when it completed.
    await store.create_call(CallRecord(call_sid=sid(6), to=TO, from_=FROM, api_key_id="key1",
                                       metadata={"order": "7"}, status="in-progress", created_at=started - 20))
    outbound = await store.finish_call(ledger_summary(sid(6), direction="outbound", started_at=started))
    assert (outbound.direction, outbound.to, outbound.from_, outbound.api_key_id, outbound.created_at) == (
        "outbound-api", TO, FROM, "key1", started - 20)
    assert outbound.status == "in-progress" and len(outbound.turns) == 2
    assert (await store.update_status(sid(6), "completed")).status == "completed"
    with pytest.raises(ValueError):
        await store.finish_call({"call_sid": "", "direction": "inbound"})


# ---- listing


async def _seed(store, now: float) -> None:
    """Seven calls, newest first: inbound and outbound, two keys, outcomes, numbers; two share a created_at."""
    records = [
        final_record(10, started_at=now - 10, outcome="completed"),
        CallRecord(call_sid=sid(11), to=TO, from_=FROM, api_key_id="key1", created_at=now - 20, outcome="no-answer"),
        CallRecord(call_sid=sid(12), to="+14155550999", from_=FROM, api_key_id="key2", created_at=now - 20),
        final_record(13, started_at=now - 30, from_="+14155550999", outcome="error", ended_by="error"),
        CallRecord(call_sid=sid(14), to=TO, from_=FROM, api_key_id="key1", created_at=now - 40, outcome="completed"),
        final_record(15, started_at=now - 50, outcome="completed"),
        CallRecord(call_sid=sid(16), to=TO, from_=FROM, api_key_id="key2", created_at=now - DAY, outcome="completed"),
    ]
    for record in records:
        if record.direction == "inbound":
            await store.finish_call(record)
        else:
            await store.create_call(record)


def _sids(page) -> list[str]:
    return [record.call_sid for record in page.records]


async def test_list_calls_filters_and_pages(stores):
    store = stores()
    now = time.time()
    await _seed(store, now)
    everything = _sids(await store.list_calls(limit=200))
    # Newest first; a tie in time is broken by call_sid, descending.
    assert everything == [sid(10), sid(12), sid(11), sid(13), sid(14), sid(15), sid(16)]
    assert _sids(await store.list_calls(direction="inbound")) == [sid(10), sid(13), sid(15)]
    assert _sids(await store.list_calls(direction="outbound")) == [sid(12), sid(11), sid(14), sid(16)]
    assert _sids(await store.list_calls(outcome="completed")) == [sid(10), sid(14), sid(15), sid(16)]
    assert _sids(await store.list_calls(number="+14155550999")) == [sid(12), sid(13)]  # to, or from
    assert _sids(await store.list_calls(api_key_id="key1")) == [sid(11), sid(14)]
    assert _sids(await store.list_calls(since=now - 40, until=now - 10)) == [sid(12), sid(11), sid(13), sid(14)]
    assert _sids(await store.list_calls(api_key_id="key2", since=now - 3600, outcome="completed")) == []

    pages, cursor = [], None
    while True:
        page = await store.list_calls(CallQuery(limit=2, after=decode_cursor(cursor) if cursor else None))
        pages.append(_sids(page))
        cursor = page.next_cursor
        if cursor is None:
            break
        # A call added meanwhile (newer than every page) moves nothing.
        await store.finish_call(final_record(100 + len(pages), started_at=now + len(pages)))
    assert pages == [everything[0:2], everything[2:4], everything[4:6], everything[6:]]
    assert (await store.list_calls(direction="outbound", limit=4)).next_cursor is None  # exactly a page: no next
    short = await store.list_calls(direction="outbound", limit=3)
    assert short.next_cursor == encode_cursor(short.records[-1])
    rest = await store.list_calls(direction="outbound", after=decode_cursor(short.next_cursor))
    assert _sids(rest) == [sid(16)] and rest.next_cursor is None
    with pytest.raises(ValueError):
        CallQuery(limit=201)
    with pytest.raises(ValueError):
        CallQuery(direction="sideways")
    for bad in ("", "!!", "W10", "WzEsMiwzXQ", encode_cursor(replace(short.records[0], created_at=float("inf")))):
        with pytest.raises(ValueError):
            decode_cursor(bad)


# ---- retention


def _touch(path, *, age_s: float = 0.0) -> None:
    path.write_text("{}\n")
    if age_s:
        stamp = time.time() - age_s
        os.utime(path, (stamp, stamp))


async def test_retention_prunes_old_records_and_their_recordings(stores, tmp_path):
    store = stores()
    now = time.time()
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    old = [final_record(1, started_at=now - 31 * DAY, recording="custom-name.wav"),
           CallRecord(call_sid=sid(2), to=TO, from_=FROM, created_at=now - 40 * DAY)]
    kept = [final_record(3, started_at=now - 29 * DAY), final_record(4, started_at=now - 60)]
    for record in old + kept:
        await store.finish_call(record)
    files = {
        f"{sid(1)}.jsonl": 0, f"{sid(1)}-2.jsonl": 0, "custom-name.wav": 0, f"{sid(2)}.wav": 0,  # pruned records'
        f"{sid(9)}.jsonl": 45 * DAY,  # an old recording whose record is gone (memory store restarted)
        f"{sid(3)}.jsonl": 29 * DAY, f"{sid(4)}.jsonl": 0, f"{sid(4)}.wav": 0,  # kept calls'
        "notes.txt": 90 * DAY, f"{sid(9)}.jsonl.bak": 90 * DAY,  # not recordings: never touched
    }
    for name, age in files.items():
        _touch(recordings / name, age_s=age)
    (recordings / f"{sid(8)}.jsonl").mkdir()  # a directory named like one: left alone

    kept_forever = await prune(store, retention_days=0, recording_dirs=[recordings])
    assert (kept_forever.records, kept_forever.recordings) == (0, 0)
    result = await prune(store, retention_days=30, recording_dirs=[recordings, tmp_path / "absent"])
    assert (result.records, result.recordings) == (2, 5)
    assert await store.get_call(sid(1)) is None and await store.get_call(sid(2)) is None
    assert _sids(await store.list_calls()) == [sid(4), sid(3)]
    assert sorted(p.name for p in recordings.iterdir()) == sorted(
        [f"{sid(3)}.jsonl", f"{sid(4)}.jsonl", f"{sid(4)}.wav", "notes.txt", f"{sid(9)}.jsonl.bak", f"{sid(8)}.jsonl"])
    again = await prune(store, retention_days=30, recording_dirs=[recordings])
    assert (again.records, again.recordings) == (0, 0)  # idempotent


async def test_retention_task_prunes_at_start_and_every_interval(tmp_path):
    store = SQLiteCallStore(str(tmp_path / "calls.db"))
    clock = [time.time()]
    await store.finish_call(final_record(1, started_at=clock[0] - 2 * DAY))
    await store.finish_call(final_record(2, started_at=clock[0] - 12 * 3600))
    task = asyncio.create_task(run_retention(store, retention_days=1, interval_s=0.05, clock=lambda: clock[0]))
    try:
        for _ in range(100):
            if await store.get_call(sid(1)) is None:
                break
            await asyncio.sleep(0.02)
        assert await store.get_call(sid(1)) is None and await store.get_call(sid(2)) is not None
        clock[0] += DAY  # a day later, the next round takes the other
        for _ in range(100):
            if await store.get_call(sid(2)) is None:
                break
            await asyncio.sleep(0.02)
        assert await store.get_call(sid(2)) is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
    await run_retention(MemoryCallStore(), retention_days=0)  # kept forever: returns at once
