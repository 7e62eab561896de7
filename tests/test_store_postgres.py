"""The :class:`~gateway.store.CallStore` behaviours, run against every implementation: memory, SQLite and a real
PostgreSQL (``GATEWAY_TEST_POSTGRES_URL``, default ``postgresql://postgres@127.0.0.1:5432/test``).

Each PostgreSQL test works in its own schema (created, then dropped), so runs never collide. Without a reachable
PostgreSQL (a laptop), the PostgreSQL cases are skipped and the rest still run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
import uuid
from collections.abc import Iterator

import pytest

from gateway.config import Settings
from gateway.store import (CallRecord, MemoryCallStore, OutboundCallSettings, PostgresCallStore, SQLiteCallStore,
                           open_store)

POSTGRES_URL = os.environ.get("GATEWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
TO, FROM = "+14155550123", "+14155550100"
SID = "CA" + "a" * 32


@functools.cache
def _postgres_unavailable() -> str | None:
    """Why PostgreSQL cannot be used for these tests, or None when it can (checked once per run)."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            return None
    except psycopg.Error as error:
        return f"PostgreSQL not reachable at {POSTGRES_URL} (set GATEWAY_TEST_POSTGRES_URL): {error}".strip()


@contextlib.contextmanager
def fresh_schema() -> Iterator[str]:
    """A fresh schema (its name), dropped afterwards; skips the test, saying why, without PostgreSQL."""
    reason = _postgres_unavailable()
    if reason:
        pytest.skip(reason)
    import psycopg
    from psycopg import sql

    schema = f"gateway_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield schema
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def postgres_url():
    """A conninfo whose search_path is a fresh schema, dropped after the test."""
    from psycopg.conninfo import make_conninfo

    with fresh_schema() as schema:
        yield make_conninfo(POSTGRES_URL, options=f"-c search_path={schema}")


class StoreFactory:
    """Makes stores of one kind; every store made in one test shares one database (a second "process")."""

    def __init__(self, kind: str, sqlite_path: str, postgres_url: str | None) -> None:
        self.kind = kind
        self.sqlite_path = sqlite_path
        self.postgres_url = postgres_url
        self.made: list = []

    def __call__(self, *, settings_ttl_s: float = 60.0, clock=None):
        options = {"settings_ttl_s": settings_ttl_s, **({"clock": clock} if clock else {})}
        if self.kind == "memory":
            store = MemoryCallStore(**options)
        elif self.kind == "sqlite":
            store = SQLiteCallStore(self.sqlite_path, **options)
        else:
            store = PostgresCallStore(self.postgres_url, **options)
        self.made.append(store)
        return store

    @property
    def shared(self) -> bool:
        return self.kind != "memory"


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def make_store(request, tmp_path):
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    factory = StoreFactory(request.param, str(tmp_path / "calls.db"), url)
    yield factory
    for store in factory.made:
        await store.close()


def _settings(n: int = 0) -> OutboundCallSettings:
    return OutboundCallSettings(to=TO, from_=FROM, instructions=f"call {n}", metadata={"n": str(n)},
                                machine_detection="voicemail", api_key_id=f"key{n}")


async def _settings_rows(store) -> int:
    if isinstance(store, SQLiteCallStore):
        return store._db.execute("SELECT COUNT(*) FROM call_settings").fetchone()[0]
    if isinstance(store, PostgresCallStore):
        pool = await store._ready()
        async with pool.connection() as conn:
            return (await (await conn.execute("SELECT COUNT(*) FROM call_settings")).fetchone())[0]
    return len(store._settings)


# ---- the shared behaviours


async def test_call_settings_are_taken_once_by_whichever_instance_asks_first(make_store):
    now = [1000.0]
    placing = make_store(settings_ttl_s=60, clock=lambda: now[0])
    streaming = make_store(settings_ttl_s=60, clock=lambda: now[0]) if make_store.shared else placing
    await placing.save_call_settings("CA1", _settings(1))
    results = await asyncio.gather(streaming.take_call_settings("CA1"), placing.take_call_settings("CA1"))
    assert sorted(results, key=lambda r: r is None) == [_settings(1), None]  # single use, even when racing
    assert await streaming.take_call_settings("CA1") is None and await _settings_rows(placing) == 0
    await placing.save_call_settings("CA2", _settings(2))
    now[0] += 61
    assert await streaming.take_call_settings("CA2") is None  # expired


async def test_call_settings_round_trip_and_ttl(make_store):
    now = [1000.0]
    store = make_store(settings_ttl_s=60, clock=lambda: now[0])
    await store.save_call_settings("k1", _settings(1))
    assert await store.get_call_settings("k1") == _settings(1)
    assert await store.get_call_settings("unknown") is None
    await store.save_call_settings("k1", _settings(2))  # same key: replaced, TTL restarted
    assert await store.get_call_settings("k1") == _settings(2)

    now[0] += 59
    assert await store.get_call_settings("k1") == _settings(2)
    now[0] += 2
    assert await store.get_call_settings("k1") is None  # TTL
    await store.save_call_settings("k2", _settings(3))  # and expired rows are purged on save
    assert await _settings_rows(store) == 1
    assert await store.get_call_settings("k2") == _settings(3)


async def test_call_records_insert_if_absent_forward_only_and_claim_once(make_store):
    store = make_store()
    record = CallRecord(call_sid=SID, to=TO, from_=FROM, machine_detection="voicemail", metadata={"a": "b"},
                        api_key_id="k1")
    assert await store.create_call(record) == record
    assert (await store.create_call(CallRecord(call_sid=SID, to="+1999", from_=FROM))).to == TO  # insert-if-absent
    assert await store.get_call(SID) == record

    updated = await store.update_status(SID, "in-progress", answered_by="human")
    assert (updated.status, updated.answered_by) == ("in-progress", "human")
    assert updated.updated_at >= record.updated_at
    assert (await store.update_status(SID, "ringing")).status == "in-progress"  # never backwards
    assert (await store.update_status(SID, metadata={"c": "d"})).metadata == {"c": "d"}  # fields only
    assert await store.claim_machine_action(SID, "voicemail") is True
    assert await store.claim_machine_action(SID, "hangup") is False
    assert await store.claim_machine_action("CA" + "c" * 32, "hangup") is False  # unknown call
    assert (await store.get_call(SID)).machine_action == "voicemail"
    assert (await store.update_status(SID, "completed", duration_s=12)).status == "completed"
    assert (await store.update_status(SID, "busy")).status == "completed"  # the first final status wins
    assert (await store.update_status(SID, "in-progress")).status == "completed"
    assert await store.update_status("CA" + "b" * 32, "completed") is None
    assert await store.get_call("CA" + "b" * 32) is None
    with pytest.raises(TypeError):
        await store.update_status(SID, "completed", to="+1")

    final = await store.get_call(SID)
    assert (final.status, final.answered_by, final.duration_s, final.machine_action, final.metadata,
            final.api_key_id, final.created_at) == ("completed", "human", 12, "voicemail", {"c": "d"}, "k1",
                                                    record.created_at)

    replaced = CallRecord(call_sid=SID, to=TO, from_=FROM, status="ringing")
    await store.upsert_call(replaced)  # upsert overwrites, whatever the status
    assert await store.get_call(SID) == replaced


async def test_concurrent_claims_and_status_updates(make_store):
    store = make_store()
    await store.create_call(CallRecord(call_sid=SID, to=TO, from_=FROM))
    claims = await asyncio.gather(*(store.claim_machine_action(SID, f"action{n}") for n in range(10)))
    assert claims.count(True) == 1
    assert (await store.get_call(SID)).machine_action == f"action{claims.index(True)}"

    statuses = ["queued", "initiated", "ringing", "in-progress", "completed"] * 3
    await asyncio.gather(*(store.update_status(SID, status) for status in reversed(statuses)))
    assert (await store.get_call(SID)).status == "completed"


async def test_a_second_store_on_the_same_database_sees_everything(make_store):
    if not make_store.shared:
        pytest.skip("the memory store is one process only")
    first, second = make_store(), make_store()
    await first.save_call_settings("placed-here", _settings(7))
    assert await second.get_call_settings("placed-here") == _settings(7)  # streamed to the other "process"
    await first.create_call(CallRecord(call_sid=SID, to=TO, from_=FROM))
    assert (await second.update_status(SID, "in-progress")).status == "in-progress"
    assert (await first.get_call(SID)).status == "in-progress"
    results = await asyncio.gather(first.claim_machine_action(SID, "hangup"),
                                   second.claim_machine_action(SID, "voicemail"))
    assert sorted(results) == [False, True]  # one host acts on the machine, never both


# ---- PostgreSQL specifics


async def test_postgres_store_instances_share_call_settings_across_processes(postgres_url):
    """Behind a load balancer: the instance that placed the call is rarely the one Twilio streams it to."""
    placing, streaming = PostgresCallStore(postgres_url), PostgresCallStore(postgres_url)
    try:
        await asyncio.gather(placing.get_call("CA" + "0" * 32), streaming.get_call("CA" + "0" * 32))  # both create
        settings = OutboundCallSettings(to=TO, from_=FROM, instructions="Be brief.", voice="marin",
                                        greeting="Hello", metadata={"order": "42"}, machine_detection="hangup",
                                        api_key_id="abc123")
        await placing.save_call_settings("key-1", settings)
        assert await streaming.get_call_settings("key-1") == settings
        assert await streaming.get_call_settings("key-2") is None
    finally:
        await placing.close()
        await streaming.close()
    reopened = PostgresCallStore(postgres_url)  # after a restart: still there
    try:
        assert (await reopened.get_call_settings("key-1")).instructions == "Be brief."
    finally:
        await reopened.close()


async def test_postgres_store_is_chosen_by_store_url_and_fails_clearly_when_unreachable():
    for url in ("postgresql://gateway@db.internal:5432/calls", "postgres://gateway@db.internal/calls"):
        store = open_store(url)  # connects on first use, not here
        assert isinstance(store, PostgresCallStore)
        await store.close()
        assert Settings.from_env({"STORE_URL": url}).store_url == url

    unreachable = PostgresCallStore("postgresql://postgres@127.0.0.1:1/test?connect_timeout=1",
                                    connect_timeout_s=1.0)
    from psycopg import OperationalError  # the pool's timeout (PoolTimeout) is one

    started = time.monotonic()
    with pytest.raises(OperationalError):
        await unreachable.get_call(SID)
    assert time.monotonic() - started < 10
    await unreachable.close()
