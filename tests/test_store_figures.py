"""The console's figures in the store (gateway.store.figures), the same on every backend: the overview computed by
SQL in SQLite and PostgreSQL equals the memory store's Python over the same records, and so do the sorted pages;
migration 4 fills in the new columns (a call's median turn latency, its barge-ins) of the records already there."""

from __future__ import annotations

import json
import random
import sqlite3

import pytest

from gateway.store import CallQuery, CallRecord, SQLiteCallStore, Turn, decode_cursor
from gateway.store.figures import DAY_S, HOUR_S, MAX_RANGE_S
from gateway.store.migrate import load_migrations, migrate_postgres
from gateway.store.model import call_barge_ins, call_latency_ms, nearest_rank, record_columns

from .test_store_postgres import make_store, postgres_url  # noqa: F401  (fixtures)

NOW = 1_765_000_000.0


def random_records(seed: int, count: int = 80) -> list[CallRecord]:
    rnd = random.Random(seed)
    records = []
    for n in range(count):
        turns = tuple(Turn("q", "a", latency_ms=rnd.choice([None, rnd.randint(80, 2500)]),
                           barged_in=rnd.random() < 0.3) for _ in range(rnd.randint(0, 6)))
        started = NOW - rnd.uniform(0, 9 * DAY_S)
        records.append(CallRecord(
            call_sid=f"CA{n:032x}", to="+14155550100", from_="+14155550101", direction="inbound",
            status=rnd.choice(["completed", "in-progress", "lost"]), created_at=started, started_at=started,
            ended_at=rnd.choice([None, started + rnd.uniform(1, 600)]),
            outcome=rnd.choice(["completed", "failed", "refused", None]),
            cost_usd=rnd.choice([None, round(rnd.uniform(0, 2), 6)]), turns=turns,
            api_key_id=rnd.choice(["k1", "k2", None])))
    return records


def flat(overview) -> list:
    def bucket(b):
        return (b.start, b.calls, sorted(b.outcomes.items()), round(b.spend_usd, 9), b.barge_ins, b.turns,
                b.p50_ms, b.p95_ms)
    return [bucket(overview.total), [bucket(b) for b in overview.hours], [bucket(b) for b in overview.days]]


def test_nearest_rank():
    assert nearest_rank([], 50) is None and nearest_rank([7], 95) == 7
    assert nearest_rank([4, 1, 3, 2], 50) == 2 and nearest_rank([4, 1, 3, 2], 95) == 4
    assert nearest_rank(list(range(1, 101)), 95) == 95 and nearest_rank(list(range(1, 21)), 95) == 19


async def test_every_backend_computes_the_same_overview_and_sorted_pages(make_store):  # noqa: F811
    records = random_records(17)
    store = make_store()
    for record in records:
        await store.upsert_call(record)
    reference = sorted(records, key=lambda r: r.created_at)
    for since, until, key, bucket_s in ((NOW - 7 * DAY_S, NOW, None, DAY_S), (NOW - DAY_S, NOW, "k1", HOUR_S),
                                        (NOW - 30 * DAY_S, NOW, "k2", DAY_S)):
        overview = await store.overview(since, until, key, bucket_s)
        chosen = [r for r in reference if since <= r.created_at < until and (key is None or r.api_key_id == key)]
        latencies = [float(t.latency_ms) for r in chosen for t in r.turns if t.latency_ms is not None]
        assert overview.total.calls == len(chosen) == sum(b.calls for b in overview.hours)
        assert sum(b.calls for b in overview.days) == len(chosen)
        assert overview.total.barge_ins == sum(call_barge_ins(r) for r in chosen)
        assert round(overview.total.spend_usd, 6) == round(sum(r.cost_usd or 0 for r in chosen), 6)
        assert (overview.total.p50_ms, overview.total.p95_ms) == (nearest_rank(latencies, 50),
                                                                  nearest_rank(latencies, 95))
        assert flat(overview) == flat(overview_in_python(chosen, since, until, bucket_s))
    for sort in ("started", "duration", "cost", "latency", "outcome"):
        for descending in (True, False):
            seen = []
            query = CallQuery(sort=sort, descending=descending, limit=30)
            while True:
                page = await store.list_calls(query)
                seen += [r.call_sid for r in page.records]
                if page.next_offset is not None:  # a sorted listing pages by offset
                    query = CallQuery(sort=sort, descending=descending, limit=30, offset=page.next_offset)
                elif page.next_cursor is not None:  # newest first: by the cursor, as always
                    query = CallQuery(limit=30, after=decode_cursor(page.next_cursor))
                else:
                    break
            assert seen == [r.call_sid for r in python_sorted(records, sort, descending)], (sort, descending)
    with pytest.raises(ValueError):
        await store.overview(NOW - MAX_RANGE_S - 1, NOW, None, DAY_S)
    with pytest.raises(ValueError):
        CallQuery(sort="cost_usd DESC; DROP TABLE calls")


def overview_in_python(records, since, until, bucket_s):
    from gateway.store.figures import overview_of_records

    return overview_of_records(records, since, until, bucket_s)


def python_sorted(records, sort, descending):
    """The orders as a person would write them: NULLs smallest, ties newest first."""
    def key(r):
        return {"started": r.created_at,
                "duration": -1 if r.ended_at is None or r.started_at is None else r.ended_at - r.started_at,
                "cost": -1 if r.cost_usd is None else r.cost_usd,
                "latency": -1 if call_latency_ms(r) is None else call_latency_ms(r),
                "outcome": r.outcome if r.outcome is not None else r.status}[sort]
    ordered = sorted(records, key=lambda r: (r.created_at, r.call_sid), reverse=True)
    return sorted(ordered, key=key, reverse=descending)


def _insert_at_version_3(execute, placeholder: str, records: list[CallRecord], encode) -> None:
    """Rows as a gateway of schema version 3 wrote them: without the figures' columns."""
    for record in records:
        columns = {name: value for name, value in record_columns(record).items()
                   if name not in ("latency_ms", "barge_ins")}
        values = [encode(value) if name in ("data", "turns", "tool_calls", "reconnects", "rollovers", "usage")
                  else value for name, value in columns.items()]
        execute(f"INSERT INTO calls ({', '.join(columns)}) VALUES ({', '.join(placeholder for _ in columns)})",
                values)


def test_migration_4_fills_in_the_figures_of_sqlite_records(tmp_path):
    path = str(tmp_path / "calls.db")
    records = random_records(5, 30)
    db = sqlite3.connect(path, isolation_level=None)
    for migration in load_migrations("sqlite")[:3]:
        for statement in migration.statements:
            db.execute(statement)
    db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)")
    db.executemany("INSERT INTO schema_version VALUES (?, 'x', 0)", [(1,), (2,), (3,)])
    _insert_at_version_3(db.execute, "?", records, json.dumps)
    db.close()
    store = SQLiteCallStore(path)
    try:
        assert 4 in store.migrated
        rows = dict((sid, (latency, barge_ins)) for sid, latency, barge_ins in store._db.execute(
            "SELECT call_sid, latency_ms, barge_ins FROM calls"))
    finally:
        store._db.close()
    assert rows == {r.call_sid: (call_latency_ms(r), call_barge_ins(r)) for r in records}
    assert any(latency is not None for latency, _ in rows.values()) and any(b for _, b in rows.values())


async def test_migration_4_fills_in_the_figures_of_postgresql_records(postgres_url):  # noqa: F811
    import psycopg
    from psycopg.types.json import Jsonb

    records = random_records(6, 30)
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        for migration in load_migrations("postgresql")[:3]:
            for statement in migration.statements:
                await conn.execute(statement)
        await conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                           "applied_at DOUBLE PRECISION NOT NULL)")
        for version in (1, 2, 3):
            await conn.execute("INSERT INTO schema_version VALUES (%s, 'x', 0)", (version,))
        rows = []
        _insert_at_version_3(lambda sql, values: rows.append((sql, values)), "%s", records, Jsonb)
        for sql, values in rows:
            await conn.execute(sql, values)
        assert 4 in await migrate_postgres(conn)
        cursor = await conn.execute("SELECT call_sid, latency_ms, barge_ins FROM calls")
        found = {sid: (latency, barge_ins) for sid, latency, barge_ins in await cursor.fetchall()}
    assert found == {r.call_sid: (call_latency_ms(r), call_barge_ins(r)) for r in records}
