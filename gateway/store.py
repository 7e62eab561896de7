"""Call records and per-call settings, behind one small interface: :class:`CallStore`.

* Per-call settings (:class:`OutboundCallSettings`) are saved by ``POST /calls`` under the CallSid Twilio returned,
  and taken (read and deleted at once) by the media stream of that very call: single use, bound to the call, never
  in a URL, a TwiML parameter, a log line or a recording. They expire (TTL) if the call never starts.
* Call records (:class:`CallRecord`) follow Twilio's status callbacks. A status only moves forward
  (queued < initiated < ringing < in-progress < a final status), so callbacks that arrive out of order, or late,
  never undo a later state.

Implementations, chosen by ``STORE_URL`` (:func:`open_store`):

* ``memory://`` (default): in-process, bounded (oldest evicted first), TTL on settings. One process only: with
  several workers or instances, the worker that placed a call may not be the one Twilio streams it to.
* ``sqlite:///path.db``: the stdlib ``sqlite3``, WAL mode, run in worker threads so the event loop never waits on
  the disk. Several workers on one host can share the file.
* ``postgresql://user@host:port/db`` (or ``postgres://``): ``psycopg`` 3's async API behind a small connection
  pool, for several hosts behind a load balancer (the host that placed a call finds its settings wherever Twilio
  streams it). Tables are created if absent, in the first schema of the connection's ``search_path`` (choose one
  with ``?options=-csearch_path%3Dmyschema``).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, Protocol
from urllib.parse import urlsplit

DEFAULT_SETTINGS_TTL_S = 1800.0  # a call queued, rung and answered within half an hour
DEFAULT_MAX_SETTINGS = 10_000
DEFAULT_MAX_CALLS = 10_000

MACHINE_DETECTION_CHOICES = ("none", "hangup", "voicemail")
FINAL_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
_STATUS_RANK = {"queued": 0, "initiated": 1, "ringing": 2, "in-progress": 3}
CALL_STATUSES = tuple(_STATUS_RANK) + tuple(sorted(FINAL_STATUSES))


def status_rank(status: str) -> int:
    return 4 if status in FINAL_STATUSES else _STATUS_RANK.get(status, -1)


def next_status(current: str, new: str) -> str:
    """``new`` if it moves the call forward, else ``current`` (out-of-order callbacks; the first final status wins)."""
    if current in FINAL_STATUSES:
        return current
    return new if status_rank(new) >= status_rank(current) else current


@dataclass(frozen=True, slots=True)
class OutboundCallSettings:
    """What ``POST /calls`` asked for; None / empty means "the gateway's default"."""

    to: str
    from_: str
    instructions: str | None = None
    voice: str | None = None
    greeting: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    machine_detection: str = "none"  # "none" | "hangup" | "voicemail"
    api_key_id: str | None = None  # the key that placed the call (its id, never the key): only it may see the call

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "OutboundCallSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{name: value for name, value in data.items() if name in known})


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call as the gateway knows it, from placement and Twilio's status callbacks."""

    call_sid: str
    to: str
    from_: str
    status: str = "queued"
    direction: str = "outbound-api"
    machine_detection: str = "none"
    metadata: dict[str, str] = field(default_factory=dict)
    answered_by: str | None = None
    duration_s: int | None = None
    machine_action: str | None = None  # "voicemail" | "hangup" once the gateway acted on a machine
    api_key_id: str | None = None  # which API key placed the call (a hash prefix, never the key)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CallRecord":
        known = {f.name for f in fields(cls)}
        return cls(**{name: value for name, value in data.items() if name in known})

    def public_json(self) -> dict[str, Any]:
        """The record as ``GET /calls/{sid}`` shows it."""
        return {
            "call_sid": self.call_sid,
            "status": self.status,
            "direction": self.direction,
            "to": self.to,
            "from": self.from_,
            "answered_by": self.answered_by,
            "duration": self.duration_s,
            "machine_detection": self.machine_detection,
            "machine_action": self.machine_action,
            "metadata": dict(self.metadata),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


_UPDATABLE = frozenset({"answered_by", "duration_s", "machine_action", "metadata"})


def _apply(record: CallRecord, status: str | None, changes: dict[str, Any], now: float) -> CallRecord:
    unknown = set(changes) - _UPDATABLE
    if unknown:
        raise TypeError(f"update_status: unknown fields {sorted(unknown)}")
    new_status = next_status(record.status, status) if status else record.status
    return replace(record, status=new_status, updated_at=now, **changes)


class CallStore(Protocol):
    """Where call records and per-call settings live. Every method is a coroutine (a network store fits)."""

    async def save_call_settings(self, key: str, settings: OutboundCallSettings) -> None: ...

    async def get_call_settings(self, key: str) -> OutboundCallSettings | None:
        """The settings saved under ``key``; None if unknown or expired."""
        ...

    async def take_call_settings(self, key: str) -> OutboundCallSettings | None:
        """The settings saved under ``key``, deleted in the same step (one caller gets them); None if unknown,
        expired or already taken."""
        ...

    async def create_call(self, record: CallRecord) -> CallRecord:
        """Insert ``record`` unless a record with its call_sid exists; returns the stored record."""
        ...

    async def upsert_call(self, record: CallRecord) -> None: ...

    async def get_call(self, call_sid: str) -> CallRecord | None: ...

    async def update_status(self, call_sid: str, status: str | None = None, **fields: Any) -> CallRecord | None:
        """Move the status forward (see :func:`next_status`) and set ``fields`` (answered_by, duration_s,
        machine_action, metadata); returns the new record, None for an unknown call."""
        ...

    async def claim_machine_action(self, call_sid: str, action: str) -> bool:
        """Set machine_action if it is still unset; True for the one caller that did (acts once per call)."""
        ...

    async def close(self) -> None: ...


class MemoryCallStore:
    """In-process store: bounded (oldest first out), TTL on per-call settings. Single process only."""

    def __init__(self, *, settings_ttl_s: float = DEFAULT_SETTINGS_TTL_S, max_settings: int = DEFAULT_MAX_SETTINGS,
                 max_calls: int = DEFAULT_MAX_CALLS, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings_ttl_s = settings_ttl_s
        self.max_settings = max_settings
        self.max_calls = max_calls
        self._clock = clock
        # Insertion order is expiry order (one TTL for all), so expired entries are always at the front.
        self._settings: OrderedDict[str, tuple[float, OutboundCallSettings]] = OrderedDict()
        self._calls: OrderedDict[str, CallRecord] = OrderedDict()

    def _expire(self) -> None:
        now = self._clock()
        while self._settings:
            key, (expires, _) = next(iter(self._settings.items()))
            if expires > now:
                break
            del self._settings[key]

    async def save_call_settings(self, key: str, settings: OutboundCallSettings) -> None:
        self._expire()
        self._settings.pop(key, None)
        self._settings[key] = (self._clock() + self.settings_ttl_s, settings)
        while len(self._settings) > self.max_settings:
            self._settings.popitem(last=False)

    async def get_call_settings(self, key: str) -> OutboundCallSettings | None:
        self._expire()
        entry = self._settings.get(key)
        return entry[1] if entry is not None else None

    async def take_call_settings(self, key: str) -> OutboundCallSettings | None:
        self._expire()
        entry = self._settings.pop(key, None)
        return entry[1] if entry is not None else None

    async def create_call(self, record: CallRecord) -> CallRecord:
        existing = self._calls.get(record.call_sid)
        if existing is not None:
            return existing
        await self.upsert_call(record)
        return record

    async def upsert_call(self, record: CallRecord) -> None:
        self._calls.pop(record.call_sid, None)
        self._calls[record.call_sid] = record
        while len(self._calls) > self.max_calls:
            self._calls.popitem(last=False)

    async def get_call(self, call_sid: str) -> CallRecord | None:
        return self._calls.get(call_sid)

    async def update_status(self, call_sid: str, status: str | None = None, **fields: Any) -> CallRecord | None:
        record = self._calls.get(call_sid)
        if record is None:
            return None
        updated = _apply(record, status, fields, time.time())
        self._calls[call_sid] = updated  # in place: eviction order stays creation order
        return updated

    async def claim_machine_action(self, call_sid: str, action: str) -> bool:
        record = self._calls.get(call_sid)
        if record is None or record.machine_action is not None:
            return False
        self._calls[call_sid] = replace(record, machine_action=action, updated_at=time.time())
        return True

    async def close(self) -> None:
        self._settings.clear()
        self._calls.clear()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS call_settings (key TEXT PRIMARY KEY, data TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS call_settings_expiry ON call_settings (expires_at);
CREATE TABLE IF NOT EXISTS calls (call_sid TEXT PRIMARY KEY, data TEXT NOT NULL, status TEXT NOT NULL,
                                  updated_at REAL NOT NULL);
"""


class SQLiteCallStore:
    """``sqlite3`` in worker threads; one connection, serialised by a lock; read-modify-write in one transaction."""

    def __init__(self, path: str, *, settings_ttl_s: float = DEFAULT_SETTINGS_TTL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.settings_ttl_s = settings_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
        with self._lock:
            if path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

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

    async def save_call_settings(self, key: str, settings: OutboundCallSettings) -> None:
        now = self._clock()
        data = json.dumps(settings.to_json())

        def save() -> None:
            self._db.execute("DELETE FROM call_settings WHERE expires_at <= ?", (now,))
            self._db.execute("INSERT OR REPLACE INTO call_settings (key, data, expires_at) VALUES (?, ?, ?)",
                             (key, data, now + self.settings_ttl_s))

        await self._call(self._transaction, save)

    async def get_call_settings(self, key: str) -> OutboundCallSettings | None:
        def get() -> Any:
            return self._db.execute("SELECT data FROM call_settings WHERE key = ? AND expires_at > ?",
                                    (key, self._clock())).fetchone()

        row = await self._call(get)
        return OutboundCallSettings.from_json(json.loads(row[0])) if row else None

    async def take_call_settings(self, key: str) -> OutboundCallSettings | None:
        def take() -> Any:
            row = self._db.execute("SELECT data FROM call_settings WHERE key = ? AND expires_at > ?",
                                   (key, self._clock())).fetchone()
            self._db.execute("DELETE FROM call_settings WHERE key = ?", (key,))
            return row

        row = await self._call(self._transaction, take)
        return OutboundCallSettings.from_json(json.loads(row[0])) if row else None

    def _get(self, call_sid: str) -> CallRecord | None:
        row = self._db.execute("SELECT data FROM calls WHERE call_sid = ?", (call_sid,)).fetchone()
        return CallRecord.from_json(json.loads(row[0])) if row else None

    def _put(self, record: CallRecord) -> None:
        self._db.execute("INSERT OR REPLACE INTO calls (call_sid, data, status, updated_at) VALUES (?, ?, ?, ?)",
                         (record.call_sid, json.dumps(record.to_json()), record.status, record.updated_at))

    async def create_call(self, record: CallRecord) -> CallRecord:
        def create() -> CallRecord:
            existing = self._get(record.call_sid)
            if existing is not None:
                return existing
            self._put(record)
            return record

        return await self._call(self._transaction, create)

    async def upsert_call(self, record: CallRecord) -> None:
        await self._call(self._put, record)

    async def get_call(self, call_sid: str) -> CallRecord | None:
        return await self._call(self._get, call_sid)

    async def update_status(self, call_sid: str, status: str | None = None, **fields: Any) -> CallRecord | None:
        def update() -> CallRecord | None:
            record = self._get(call_sid)
            if record is None:
                return None
            updated = _apply(record, status, fields, time.time())
            self._put(updated)
            return updated

        return await self._call(self._transaction, update)

    async def claim_machine_action(self, call_sid: str, action: str) -> bool:
        def claim() -> bool:
            record = self._get(call_sid)
            if record is None or record.machine_action is not None:
                return False
            self._put(replace(record, machine_action=action, updated_at=time.time()))
            return True

        return await self._call(self._transaction, claim)

    async def close(self) -> None:
        await self._call(self._db.close)


_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS call_settings (key TEXT PRIMARY KEY, data JSONB NOT NULL,
                                          expires_at DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS call_settings_expiry ON call_settings (expires_at);
CREATE TABLE IF NOT EXISTS calls (call_sid TEXT PRIMARY KEY, data JSONB NOT NULL, status TEXT NOT NULL,
                                  updated_at DOUBLE PRECISION NOT NULL);
"""
_PG_SCHEMA_LOCK = 0x6761_7465_7761_7901  # advisory lock: two hosts starting at once create the tables once


class PostgresCallStore:
    """PostgreSQL through ``psycopg`` 3 (async), a connection pool opened on first use (``open_store`` is not a
    coroutine). Same semantics as :class:`SQLiteCallStore`: settings expire by the gateway's clock, a status only
    moves forward (read-modify-write under ``SELECT ... FOR UPDATE``), ``claim_machine_action`` is one atomic
    ``UPDATE ... WHERE machine_action IS NULL``, so exactly one host acts on a machine."""

    def __init__(self, url: str, *, settings_ttl_s: float = DEFAULT_SETTINGS_TTL_S,
                 clock: Callable[[], float] = time.time, min_size: int = 1, max_size: int = 10,
                 connect_timeout_s: float = 10.0) -> None:
        try:
            from psycopg_pool import AsyncConnectionPool
        except ImportError as error:  # pragma: no cover - both are dependencies of the package
            raise RuntimeError("STORE_URL=postgresql:// needs psycopg[binary] and psycopg-pool") from error
        self.url = url
        self.settings_ttl_s = settings_ttl_s
        self._clock = clock
        self._connect_timeout_s = connect_timeout_s
        self._pool = AsyncConnectionPool(url, min_size=min_size, max_size=max_size, open=False,
                                         kwargs={"autocommit": True}, timeout=connect_timeout_s)
        self._opened = False
        self._open_lock = asyncio.Lock()

    async def _ready(self) -> Any:
        if not self._opened:
            async with self._open_lock:
                if not self._opened:
                    try:
                        await self._pool.open(wait=True, timeout=self._connect_timeout_s)
                        async with self._pool.connection() as conn, conn.transaction():
                            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_SCHEMA_LOCK,))
                            for statement in filter(str.strip, _PG_SCHEMA.split(";")):
                                await conn.execute(statement)
                    except BaseException:
                        await self._pool.close()  # no reconnecting in the background; the next call tries again
                        raise
                    self._opened = True
        return self._pool

    async def save_call_settings(self, key: str, settings: OutboundCallSettings) -> None:
        from psycopg.types.json import Jsonb

        now = self._clock()
        pool = await self._ready()
        async with pool.connection() as conn, conn.transaction():
            await conn.execute("DELETE FROM call_settings WHERE expires_at <= %s", (now,))
            await conn.execute(
                "INSERT INTO call_settings (key, data, expires_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (key) DO UPDATE SET data = EXCLUDED.data, expires_at = EXCLUDED.expires_at",
                (key, Jsonb(settings.to_json()), now + self.settings_ttl_s))

    async def get_call_settings(self, key: str) -> OutboundCallSettings | None:
        pool = await self._ready()
        async with pool.connection() as conn:
            cursor = await conn.execute("SELECT data FROM call_settings WHERE key = %s AND expires_at > %s",
                                        (key, self._clock()))
            row = await cursor.fetchone()
        return OutboundCallSettings.from_json(row[0]) if row else None

    async def take_call_settings(self, key: str) -> OutboundCallSettings | None:
        pool = await self._ready()
        async with pool.connection() as conn:
            # One statement: of two hosts taking at once, exactly one gets the row.
            cursor = await conn.execute("DELETE FROM call_settings WHERE key = %s RETURNING data, expires_at", (key,))
            row = await cursor.fetchone()
        return OutboundCallSettings.from_json(row[0]) if row and row[1] > self._clock() else None

    @staticmethod
    async def _get(conn: Any, call_sid: str, *, for_update: bool = False) -> CallRecord | None:
        query = "SELECT data FROM calls WHERE call_sid = %s" + (" FOR UPDATE" if for_update else "")
        row = await (await conn.execute(query, (call_sid,))).fetchone()
        return CallRecord.from_json(row[0]) if row else None

    @staticmethod
    async def _put(conn: Any, record: CallRecord) -> None:
        from psycopg.types.json import Jsonb

        await conn.execute(
            "INSERT INTO calls (call_sid, data, status, updated_at) VALUES (%s, %s, %s, %s) ON CONFLICT (call_sid) "
            "DO UPDATE SET data = EXCLUDED.data, status = EXCLUDED.status, updated_at = EXCLUDED.updated_at",
            (record.call_sid, Jsonb(record.to_json()), record.status, record.updated_at))

    async def create_call(self, record: CallRecord) -> CallRecord:
        from psycopg.types.json import Jsonb

        pool = await self._ready()
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "INSERT INTO calls (call_sid, data, status, updated_at) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (call_sid) DO NOTHING RETURNING call_sid",
                (record.call_sid, Jsonb(record.to_json()), record.status, record.updated_at))
            if await cursor.fetchone():
                return record
            existing = await self._get(conn, record.call_sid)  # call records are never deleted: it is there
        return existing if existing is not None else record

    async def upsert_call(self, record: CallRecord) -> None:
        pool = await self._ready()
        async with pool.connection() as conn:
            await self._put(conn, record)

    async def get_call(self, call_sid: str) -> CallRecord | None:
        pool = await self._ready()
        async with pool.connection() as conn:
            return await self._get(conn, call_sid)

    async def update_status(self, call_sid: str, status: str | None = None, **fields: Any) -> CallRecord | None:
        pool = await self._ready()
        async with pool.connection() as conn, conn.transaction():
            record = await self._get(conn, call_sid, for_update=True)
            if record is None:
                return None
            updated = _apply(record, status, fields, time.time())
            await self._put(conn, updated)
            return updated

    async def claim_machine_action(self, call_sid: str, action: str) -> bool:
        from psycopg.types.json import Jsonb

        now = time.time()
        pool = await self._ready()
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE calls SET data = data || %s, updated_at = %s "
                "WHERE call_sid = %s AND data->>'machine_action' IS NULL RETURNING call_sid",
                (Jsonb({"machine_action": action, "updated_at": now}), now, call_sid))
            return await cursor.fetchone() is not None

    async def close(self) -> None:
        self._opened = False
        await self._pool.close()


def open_store(url: str) -> CallStore:
    """The store ``STORE_URL`` names: ``""``/``memory://`` in-process, ``sqlite:///relative.db``,
    ``sqlite:////absolute/path.db`` or ``sqlite:///:memory:``, ``postgresql://user@host:port/db``
    (or ``postgres://``)."""
    scheme = urlsplit(url).scheme if url else "memory"
    if scheme == "memory":
        return MemoryCallStore()
    if scheme == "sqlite":
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        if not path:
            raise ValueError(f"STORE_URL for SQLite must be sqlite:///path.db, got {url!r}")
        return SQLiteCallStore(path)
    if scheme in ("postgresql", "postgres"):
        return PostgresCallStore(url)
    raise ValueError(f"unsupported STORE_URL scheme {scheme!r}: use memory://, sqlite:///path.db or "
                     "postgresql://user@host:port/db")
