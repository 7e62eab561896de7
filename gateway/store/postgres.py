"""``postgresql://user@host:port/db`` (or ``postgres://``): ``psycopg`` 3's async API behind a small connection pool,
for several hosts behind a load balancer (the host that placed a call finds its settings wherever Twilio streams
it). The schema is brought up to date on first use (:func:`gateway.store.migrate.migrate_postgres`), in the first
schema of the connection's ``search_path`` (choose one with ``?options=-csearch_path%3Dmyschema``).

Connections die under a store: a server restart or failover, an idle-connection reaper, ``pg_terminate_backend``.
So the pool checks each connection before lending it (``psycopg_pool``'s ``check``: a broken one is replaced),
and an operation whose connection breaks while it runs is run again on a fresh one, a bounded number of times
within a bounded time (every operation here is a merge or a single statement, so running it again is safe:
:mod:`gateway.store.model`). The connections carry an ``application_name`` (``gateway`` unless ``STORE_URL``
sets one), so an operator can see and kill them by name. A pool that could not open (the server down at start)
is made anew at the next use: the store comes back with its server."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from gateway.store.base import Change, StoreBase
from gateway.store.figures import Overview, order_by, overview_from_rows, overview_query, overview_sql
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
# An operation whose connection broke under it: run again on a fresh connection, at most this many times in all,
# pausing a little longer each time, and never past the pool's connect timeout from the first attempt.
BROKEN_CONNECTION_ATTEMPTS = 3
_RETRY_PAUSE_S = 0.05
APPLICATION_NAME = "gateway"
assert "call_sid" not in PROJECTED
log = logging.getLogger("gateway.store")


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
        from gateway.extras import require

        scheme = url.split(":", 1)[0] or "postgresql"
        require("postgres", f"STORE_URL={scheme}://...")  # psycopg and psycopg-pool: the postgres extra
        from psycopg.conninfo import conninfo_to_dict
        from psycopg_pool import AsyncConnectionPool

        self.url = url
        self._connect_timeout_s = connect_timeout_s
        kwargs: dict[str, Any] = {"autocommit": True}
        try:
            named = "application_name" in conninfo_to_dict(url)
        except Exception:  # noqa: BLE001 - a malformed URL is reported by the first connection, as ever
            named = True
        if not named:
            kwargs["application_name"] = APPLICATION_NAME
        self._make_pool: Callable[[], Any] = lambda: AsyncConnectionPool(
            url, min_size=min_size, max_size=max_size, open=False, kwargs=kwargs, timeout=connect_timeout_s,
            check=AsyncConnectionPool.check_connection)
        self._pool = self._make_pool()
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
                        # No reconnecting in the background; the next call tries again, with a new pool (a closed
                        # one cannot be reopened).
                        await self._pool.close()
                        self._pool = self._make_pool()
                        raise
                    self._opened = True
        return self._pool

    async def _run(self, work: Callable[[Any], Awaitable[Any]]) -> Any:
        """``work(conn)`` on a pooled connection; again on a fresh one if that connection broke under it (see the
        module docstring). Any other error, or a pool that cannot lend a connection in time, is raised."""
        from psycopg import OperationalError
        from psycopg_pool import PoolTimeout

        pool = await self._ready()
        deadline = time.monotonic() + self._connect_timeout_s
        for attempt in range(1, BROKEN_CONNECTION_ATTEMPTS + 1):
            conn = None
            try:
                async with pool.connection() as conn:
                    return await work(conn)
            except OperationalError as error:
                broken = conn is not None and (conn.closed or conn.broken)
                if (isinstance(error, PoolTimeout) or not broken or attempt == BROKEN_CONNECTION_ATTEMPTS
                        or time.monotonic() >= deadline):
                    raise
                log.warning("PostgreSQL connection lost during an operation (%s: %s); retrying on a fresh one "
                            "(attempt %d of %d)", type(error).__name__, str(error).strip()[:200], attempt + 1,
                            BROKEN_CONNECTION_ATTEMPTS)
                await asyncio.sleep(_RETRY_PAUSE_S * attempt)
        raise AssertionError("unreachable")

    async def _put_settings(self, key: str, data: dict[str, Any], expires_at: float, now: float) -> None:
        from psycopg.types.json import Jsonb

        async def put(conn: Any) -> None:
            async with conn.transaction():
                await conn.execute("DELETE FROM call_settings WHERE expires_at <= %s", (now,))
                await conn.execute(
                    "INSERT INTO call_settings (key, data, expires_at) VALUES (%s, %s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET data = EXCLUDED.data, expires_at = EXCLUDED.expires_at",
                    (key, Jsonb(data), expires_at))

        await self._run(put)

    async def _get_settings(self, key: str, now: float) -> dict[str, Any] | None:
        async def get(conn: Any) -> Any:
            cursor = await conn.execute("SELECT data FROM call_settings WHERE key = %s AND expires_at > %s",
                                        (key, now))
            return await cursor.fetchone()

        row = await self._run(get)
        return row[0] if row else None

    async def _take_settings(self, key: str, now: float) -> dict[str, Any] | None:
        async def take(conn: Any) -> Any:
            # One statement: of two hosts taking at once, exactly one gets the row.
            cursor = await conn.execute("DELETE FROM call_settings WHERE key = %s RETURNING data, expires_at", (key,))
            return await cursor.fetchone()

        row = await self._run(take)
        return row[0] if row and settings_alive(row[1], now) else None

    @staticmethod
    async def _get(conn: Any, call_sid: str, *, for_update: bool = False) -> CallRecord | None:
        query = f"SELECT {RECORD_SELECT} FROM calls WHERE call_sid = %s" + (" FOR UPDATE" if for_update else "")
        row = await (await conn.execute(query, (call_sid,))).fetchone()
        return record_from_columns(row) if row else None

    async def _modify(self, call_sid: str, change: Change) -> tuple[CallRecord | None, CallRecord | None]:
        async def modify(conn: Any) -> tuple[CallRecord | None, CallRecord | None]:
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

        return await self._run(modify)

    async def _query(self, query: CallQuery) -> list[CallRecord]:
        where, params = query.where("%s")

        async def select(conn: Any) -> list[Any]:
            order = order_by(query, "postgresql") if query.by_offset else ORDER_BY
            cursor = await conn.execute(f"SELECT {RECORD_SELECT} FROM calls{where}{order} LIMIT %s OFFSET %s",
                                        (*params, query.limit + 1, query.offset))
            return await cursor.fetchall()

        return [record_from_columns(row) for row in await self._run(select)]

    async def overview(self, since: float, until: float, api_key_id: str | None, bucket_s: int) -> Overview:
        """The console's overview (gateway.store.figures), computed by the database."""
        statements = overview_sql("postgresql", overview_query(since, until, api_key_id, bucket_s), bucket_s)

        async def run(conn: Any) -> list[list[Any]]:
            return [await (await conn.execute(sql, params)).fetchall() for sql, params in statements]

        return overview_from_rows(since, until, bucket_s, await self._run(run))

    async def upsert_call(self, record: CallRecord) -> None:
        async def upsert(conn: Any) -> None:
            await conn.execute(_UPSERT, _row_values(record))

        await self._run(upsert)

    async def get_call(self, call_sid: str) -> CallRecord | None:
        return await self._run(lambda conn: self._get(conn, call_sid))

    async def delete_calls_before(self, cutoff: float, limit: int = 1000) -> list[tuple[str, str | None]]:
        async def delete(conn: Any) -> list[tuple[str, str | None]]:
            # created_at is NULL only on rows an older gateway wrote during a rolling deploy: their last update.
            cursor = await conn.execute(
                "DELETE FROM calls WHERE call_sid IN (SELECT call_sid FROM calls WHERE created_at < %s "
                "OR (created_at IS NULL AND updated_at < %s) LIMIT %s) RETURNING call_sid, recording",
                (cutoff, cutoff, limit))
            return [(row[0], row[1]) for row in await cursor.fetchall()]

        return await self._run(delete)

    async def close(self) -> None:
        self._opened = False
        await self._pool.close()
