"""``sqlite:///path.db``: the stdlib ``sqlite3``, WAL mode, run in worker threads so the event loop never waits on the
disk. Several workers on one host can share the file. The schema is brought up to date when the store opens
(:func:`gateway.store.migrate.migrate_sqlite`)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from typing import Any, Callable

from gateway.state.sqlite_wal import switch_to_wal
from gateway.store.base import Change, StoreBase
from gateway.store.figures import Overview, order_by, overview_from_rows, overview_query, overview_sql
from gateway.store.migrate import migrate_sqlite
from gateway.store.model import (
    CALL_COLUMNS, DEFAULT_SETTINGS_TTL_S, JSON_COLUMNS, ORDER_BY, RECORD_SELECT, CallQuery, CallRecord,
    record_columns, record_from_columns,
)

_INSERT = (f"INSERT OR REPLACE INTO calls ({', '.join(CALL_COLUMNS)}) "
           f"VALUES ({', '.join('?' for _ in CALL_COLUMNS)})")


def _row_values(record: CallRecord) -> list[Any]:
    return [json.dumps(value) if name in JSON_COLUMNS else value for name, value in record_columns(record).items()]


def _record(row: Any) -> CallRecord:
    return record_from_columns([json.loads(value) if value is not None else None for value in row])


class SQLiteCallStore(StoreBase):
    """``sqlite3`` in worker threads; one connection, serialised by a lock; read-modify-write in one transaction
    (``BEGIN IMMEDIATE``: across processes too)."""

    def __init__(self, path: str, *, settings_ttl_s: float = DEFAULT_SETTINGS_TTL_S,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(settings_ttl_s=settings_ttl_s, clock=clock)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
        with self._lock:
            try:
                if path != ":memory:":
                    switch_to_wal(self._db)
                    self._db.execute("PRAGMA synchronous=NORMAL")
                self.migrated = migrate_sqlite(self._db)  # the versions this start-up applied
            except BaseException:
                self._db.close()
                raise

    async def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        def locked() -> Any:
            with self._lock:
                return function(*args)

        return await asyncio.to_thread(locked)

    def _transaction(self, body: Callable[[], Any]) -> Any:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = body()
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return result

    async def _put_settings(self, key: str, data: dict[str, Any], expires_at: float, now: float) -> None:
        text = json.dumps(data)

        def save() -> None:
            self._db.execute("DELETE FROM call_settings WHERE expires_at <= ?", (now,))
            self._db.execute("INSERT OR REPLACE INTO call_settings (key, data, expires_at) VALUES (?, ?, ?)",
                             (key, text, expires_at))

        await self._call(self._transaction, save)

    async def _get_settings(self, key: str, now: float) -> dict[str, Any] | None:
        def get() -> Any:
            return self._db.execute("SELECT data FROM call_settings WHERE key = ? AND expires_at > ?",
                                    (key, now)).fetchone()

        row = await self._call(get)
        return json.loads(row[0]) if row else None

    async def _take_settings(self, key: str, now: float) -> dict[str, Any] | None:
        def take() -> Any:
            row = self._db.execute("SELECT data FROM call_settings WHERE key = ? AND expires_at > ?",
                                   (key, now)).fetchone()
            self._db.execute("DELETE FROM call_settings WHERE key = ?", (key,))
            return row

        row = await self._call(self._transaction, take)
        return json.loads(row[0]) if row else None

    def _get(self, call_sid: str) -> CallRecord | None:
        row = self._db.execute(f"SELECT {RECORD_SELECT} FROM calls WHERE call_sid = ?", (call_sid,)).fetchone()
        return _record(row) if row else None

    def _put(self, record: CallRecord) -> None:
        self._db.execute(_INSERT, _row_values(record))

    async def _modify(self, call_sid: str, change: Change) -> tuple[CallRecord | None, CallRecord | None]:
        def modify() -> tuple[CallRecord | None, CallRecord | None]:
            existing = self._get(call_sid)
            new = change(existing)
            if new is not None and new is not existing:
                self._put(new)
            return existing, new

        return await self._call(self._transaction, modify)

    async def _query(self, query: CallQuery) -> list[CallRecord]:
        where, params = query.where("?")

        def select() -> list[Any]:
            order = order_by(query, "sqlite") if query.by_offset else ORDER_BY
            return self._db.execute(f"SELECT {RECORD_SELECT} FROM calls{where}{order} LIMIT ? OFFSET ?",
                                    (*params, query.limit + 1, query.offset)).fetchall()

        return [_record(row) for row in await self._call(select)]

    async def overview(self, since: float, until: float, api_key_id: str | None, bucket_s: int) -> Overview:
        """The console's overview (gateway.store.figures), computed by the database."""
        statements = overview_sql("sqlite", overview_query(since, until, api_key_id, bucket_s), bucket_s)

        def run() -> list[list[Any]]:
            return [self._db.execute(sql, params).fetchall() for sql, params in statements]

        return overview_from_rows(since, until, bucket_s, await self._call(run))

    async def upsert_call(self, record: CallRecord) -> None:
        await self._call(self._put, record)

    async def get_call(self, call_sid: str) -> CallRecord | None:
        return await self._call(self._get, call_sid)

    async def delete_calls_before(self, cutoff: float, limit: int = 1000) -> list[tuple[str, str | None]]:
        def delete() -> list[tuple[str, str | None]]:
            # created_at is NULL only on rows an older gateway wrote during a rolling deploy: their last update.
            rows = self._db.execute(
                "DELETE FROM calls WHERE call_sid IN (SELECT call_sid FROM calls WHERE created_at < ? "
                "OR (created_at IS NULL AND updated_at < ?) LIMIT ?) RETURNING call_sid, recording",
                (cutoff, cutoff, limit)).fetchall()
            return [(row[0], row[1]) for row in rows]

        return await self._call(self._transaction, delete)

    async def close(self) -> None:
        await self._call(self._db.close)
