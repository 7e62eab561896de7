"""``postgresql://user@host:port/db`` (or ``postgres://``): ``psycopg`` 3's async API behind a small connection pool,
for several hosts behind a load balancer (the host that placed a call finds its settings wherever Twilio streams
it). The schema is brought up to date on first use (:func:`gateway.store.migrate.migrate_postgres`), in the first
schema of the connection's ``search_path`` (choose one with ``?options=-csearch_path%3Dmyschema``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from gateway.store.base import Change, StoreBase
from gateway.store.migrate import migrate_postgres
from gateway.store.model import (
    CALL_COLUMNS, DEFAULT_SETTINGS_TTL_S, JSON_COLUMNS, ORDER_BY, PROJECTED, RECORD_SELECT, CallQuery, CallRecord,
    record_columns, record_from_columns, settings_alive,
)

_COLUMNS = ", ".join(CALL_COLUMNS)
_VALUES = ", ".join("%s" for _ in CALL_COLUMNS)
_UPDATE = ", ".join(f"{name} = EXCLUDED.{name}" for name in CALL_COLUMNS if name != "call_sid")
_UPSERT = f"INSERT INTO calls ({_COLUMNS}) VALUES ({_VALUES}) ON CONFLICT (call_sid) DO UPDATE SET {_UPDATE}"
_INSERT_IF_ABSENT = f"INSERT INTO calls ({_COLUMNS}) VALUES ({_VALUES}) ON CONFLICT (call_sid) DO NOTHING RETURNING 1"
_MODIFY_ATTEMPTS = 3
assert "call_sid" not in PROJECTED


def _row_values(record: CallRecord) -> list[Any]:
    from psycopg.types.json import Jsonb

    return [Jsonb(value) if name in JSON_COLUMNS and value is not None else value
            for name, value in record_columns(record).items()]


class PostgresCallStore(StoreBase):
    """PostgreSQL through ``psycopg`` 3 (async), a connection pool opened on first use (``open_store`` is not a
    coroutine). Read-modify-write holds the row (``SELECT ... FOR UPDATE``); a record that does not exist yet is
    inserted with ``ON CONFLICT DO NOTHING`` and the step retried if another host inserted it first, so exactly
    one host claims a machine action, and a status never moves backwards, however the hosts interleave."""

    def __init__(self, url: str, *, settings_ttl_s: float = DEFAULT_SETTINGS_TTL_S,
                 clock: Callable[[], float] = time.time, min_size: int = 1, max_size: int = 10,
                 connect_timeout_s: float = 10.0) -> None:
        super().__init__(settings_ttl_s=settings_ttl_s, clock=clock)
        try:
            from psycopg_pool import AsyncConnectionPool
        except ImportError as error:  # pragma: no cover - both are dependencies of the package
            raise RuntimeError("STORE_URL=postgresql:// needs psycopg[binary] and psycopg-pool") from error
        self.url = url
        self._connect_timeout_s = connect_timeout_s
        self._pool = AsyncConnectionPool(url, min_size=min_size, max_size=max_size, open=False,
                                         kwargs={"autocommit": True}, timeout=connect_timeout_s)
        self._opened = False
        self._open_lock = asyncio.Lock()
        self.migrated: list[int] = []  # the versions this store's start-up applied

    async def _ready(self) -> Any:
        if not self._opened:
            async with self._open_lock:
                if not self._opened:
                    try:
                        await self._pool.open(wait=True, timeout=self._connect_timeout_s)
                        async with self._pool.connection() as conn:
                            self.migrated = await migrate_postgres(conn)
                    except BaseException:
                        await self._pool.close()  # no reconnecting in the background; the next call tries again
                        raise
                    self._opened = True
        return self._pool

    async def _put_settings(self, key: str, data: dict[str, Any], expires_at: float, now: float) -> None:
        from psycopg.types.json import Jsonb

        pool = await self._ready()
        async with pool.connection() as conn, conn.transaction():
            await conn.execute("DELETE FROM call_settings WHERE expires_at <= %s", (now,))
            await conn.execute(
                "INSERT INTO call_settings (key, data, expires_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (key) DO UPDATE SET data = EXCLUDED.data, expires_at = EXCLUDED.expires_at",
                (key, Jsonb(data), expires_at))

    async def _get_settings(self, key: str, now: float) -> dict[str, Any] | None:
        pool = await self._ready()
        async with pool.connection() as conn:
            cursor = await conn.execute("SELECT data FROM call_settings WHERE key = %s AND expires_at > %s",
                                        (key, now))
            row = await cursor.fetchone()
        return row[0] if row else None

    async def _take_settings(self, key: str, now: float) -> dict[str, Any] | None:
        pool = await self._ready()
        async with pool.connection() as conn:
            # One statement: of two hosts taking at once, exactly one gets the row.
            cursor = await conn.execute("DELETE FROM call_settings WHERE key = %s RETURNING data, expires_at", (key,))
            row = await cursor.fetchone()
        return row[0] if row and settings_alive(row[1], now) else None

    @staticmethod
    async def _get(conn: Any, call_sid: str, *, for_update: bool = False) -> CallRecord | None:
        query = f"SELECT {RECORD_SELECT} FROM calls WHERE call_sid = %s" + (" FOR UPDATE" if for_update else "")
        row = await (await conn.execute(query, (call_sid,))).fetchone()
        return record_from_columns(row) if row else None

    async def _modify(self, call_sid: str, change: Change) -> tuple[CallRecord | None, CallRecord | None]:
        pool = await self._ready()
        async with pool.connection() as conn:
            for _ in range(_MODIFY_ATTEMPTS):
                async with conn.transaction():
                    existing = await self._get(conn, call_sid, for_update=True)
                    new = change(existing)
                    if new is None or new is existing:
                        return existing, new
                    if existing is not None:
                        await conn.execute(_UPSERT, _row_values(new))
                        return existing, new
                    # Nothing to lock yet: insert only if still absent; if another host inserted it meanwhile,
                    # do it again on its row.
                    if await (await conn.execute(_INSERT_IF_ABSENT, _row_values(new))).fetchone():
                        return existing, new
        raise RuntimeError(f"call record {call_sid[:40]!r} kept appearing and disappearing; gave up")

    async def _query(self, query: CallQuery) -> list[CallRecord]:
        where, params = query.where("%s")
        pool = await self._ready()
        async with pool.connection() as conn:
            cursor = await conn.execute(f"SELECT {RECORD_SELECT} FROM calls{where}{ORDER_BY} LIMIT %s",
                                        (*params, query.limit + 1))
            rows = await cursor.fetchall()
        return [record_from_columns(row) for row in rows]

    async def upsert_call(self, record: CallRecord) -> None:
        pool = await self._ready()
        async with pool.connection() as conn:
            await conn.execute(_UPSERT, _row_values(record))

    async def get_call(self, call_sid: str) -> CallRecord | None:
        pool = await self._ready()
        async with pool.connection() as conn:
            return await self._get(conn, call_sid)

    async def delete_calls_before(self, cutoff: float, limit: int = 1000) -> list[tuple[str, str | None]]:
        pool = await self._ready()
        async with pool.connection() as conn:
            # created_at is NULL only on rows an older gateway wrote during a rolling deploy: their last update.
            cursor = await conn.execute(
                "DELETE FROM calls WHERE call_sid IN (SELECT call_sid FROM calls WHERE created_at < %s "
                "OR (created_at IS NULL AND updated_at < %s) LIMIT %s) RETURNING call_sid, recording",
                (cutoff, cutoff, limit))
            return [(row[0], row[1]) for row in await cursor.fetchall()]

    async def close(self) -> None:
        self._opened = False
        await self._pool.close()
