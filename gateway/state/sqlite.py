"""Shared state in one SQLite file: the worker processes of one host (``gateway serve --workers N`` without
``REDIS_URL``) see the same claims, totals, leases, live calls and control messages.

Each operation is one short transaction (``BEGIN IMMEDIATE``: writers take turns) on a thread, so the event
loop never waits on the file; a busy database waits up to 2 s, then the operation fails as
:class:`StateUnavailable` (the caller fails closed). Control messages are polled (every 50 ms) while a reader
waits: a handful of rows, and only while someone waits for one.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from typing import Any, Callable

from gateway.state.sqlite_wal import switch_to_wal
from gateway.state.base import LIVE_FEED_MAX, LIVE_READ_MAX, MAX_LIVE_LISTED, LiveBatch, StateUnavailable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS totals (key TEXT PRIMARY KEY, total REAL NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS shares (key TEXT NOT NULL, contributor TEXT NOT NULL, amount REAL NOT NULL,
                                   expires REAL NOT NULL, PRIMARY KEY (key, contributor));
CREATE TABLE IF NOT EXISTS leases (scope TEXT NOT NULL, holder TEXT NOT NULL, expires REAL NOT NULL,
                                   PRIMARY KEY (scope, holder));
CREATE TABLE IF NOT EXISTS calls (call_sid TEXT PRIMARY KEY, instance TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL,
                                     body TEXT NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS messages_channel ON messages (channel, id);
CREATE TABLE IF NOT EXISTS console_sessions (handle TEXT PRIMARY KEY, key_id TEXT NOT NULL, body TEXT NOT NULL,
                                             expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS console_sessions_key ON console_sessions (key_id, expires);
CREATE INDEX IF NOT EXISTS console_sessions_expires ON console_sessions (expires);
CREATE TABLE IF NOT EXISTS live_feed (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS live_pictures (call_sid TEXT PRIMARY KEY, body TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS live_lines (id INTEGER PRIMARY KEY AUTOINCREMENT, call_sid TEXT NOT NULL,
                                       body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS live_lines_call ON live_lines (call_sid, id);
"""
POLL_S = 0.05
MESSAGE_TTL_S = 30.0
LIVE_POLL_S = 0.1


def _total(db: sqlite3.Connection, key: str, now: float) -> float:
    # Every share, plus a total kept by a version before shares (the day of an upgrade).
    shares = db.execute("SELECT SUM(amount) FROM shares WHERE key = ? AND expires > ?", (key, now)).fetchone()[0]
    legacy = db.execute("SELECT total FROM totals WHERE key = ? AND expires > ?", (key, now)).fetchone()
    return (shares or 0.0) + (legacy[0] if legacy else 0.0)


class SQLiteState:
    def __init__(self, path: str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._local = threading.local()
        try:
            self._db().executescript(_SCHEMA)  # it commits itself; idempotent, so workers may race to it
        except sqlite3.Error as error:
            raise StateUnavailable(f"{type(error).__name__}: {error}") from error

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=2.0, isolation_level=None, check_same_thread=False)
            switch_to_wal(db)
            self._local.db = db
        return db

    def _run_sync(self, body: Callable[[sqlite3.Connection], Any]) -> Any:
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = body(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result
        except sqlite3.Error as error:
            raise StateUnavailable(f"{type(error).__name__}: {error}") from error

    async def _run(self, body: Callable[[sqlite3.Connection], Any]) -> Any:
        return await asyncio.to_thread(self._run_sync, body)

    async def claim_once(self, key: str, ttl_s: float) -> bool:
        now = self._clock()

        def claim(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM claims WHERE expires <= ?", (now,))
            return db.execute("INSERT OR IGNORE INTO claims VALUES (?, ?)", (key, now + ttl_s)).rowcount == 1
        return await self._run(claim)

    async def set_share(self, key: str, contributor: str, amount: float, ttl_s: float) -> float:
        now = self._clock()

        def set_share(db: sqlite3.Connection) -> float:
            db.execute("DELETE FROM shares WHERE expires <= ?", (now,))
            db.execute("DELETE FROM totals WHERE expires <= ?", (now,))
            expires = db.execute("SELECT MIN(expires) FROM shares WHERE key = ?", (key,)).fetchone()[0]
            db.execute("INSERT INTO shares VALUES (?, ?, ?, ?) ON CONFLICT (key, contributor) "
                       "DO UPDATE SET amount = MAX(amount, excluded.amount)", (key, contributor, amount,
                                                                               expires or now + ttl_s))
            return _total(db, key, now)
        return await self._run(set_share)

    async def get_total(self, key: str) -> float:
        now = self._clock()
        return await self._run(lambda db: _total(db, key, now))

    async def acquire_lease(self, scope: str, holder: str, limit: int, ttl_s: float) -> bool:
        now = self._clock()

        def acquire(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM leases WHERE scope = ? AND expires <= ?", (scope, now))
            held = db.execute("SELECT 1 FROM leases WHERE scope = ? AND holder = ?", (scope, holder)).fetchone()
            count = db.execute("SELECT COUNT(*) FROM leases WHERE scope = ?", (scope,)).fetchone()[0]
            if not held and count >= limit:
                return False
            db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", (scope, holder, now + ttl_s))
            return True
        return await self._run(acquire)

    async def renew_lease(self, scope: str, holder: str, ttl_s: float) -> None:
        await self._run(lambda db: db.execute("UPDATE leases SET expires = ? WHERE scope = ? AND holder = ?",
                                              (self._clock() + ttl_s, scope, holder)))

    async def release_lease(self, scope: str, holder: str) -> None:
        await self._run(lambda db: db.execute("DELETE FROM leases WHERE scope = ? AND holder = ?", (scope, holder)))

    async def register_call(self, call_sid: str, instance: str, ttl_s: float) -> None:
        await self._run(lambda db: db.execute("INSERT OR REPLACE INTO calls VALUES (?, ?, ?)",
                                              (call_sid, instance, self._clock() + ttl_s)))

    async def call_holder(self, call_sid: str) -> str | None:
        row = await self._run(lambda db: db.execute("SELECT instance FROM calls WHERE call_sid = ? AND expires > ?",
                                                    (call_sid, self._clock())).fetchone())
        return row[0] if row else None

    async def unregister_call(self, call_sid: str, instance: str) -> None:
        await self._run(lambda db: db.execute("DELETE FROM calls WHERE call_sid = ? AND instance = ?",
                                              (call_sid, instance)))

    async def _push(self, channel: str, message: dict[str, Any]) -> None:
        now = self._clock()

        def push(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM messages WHERE expires <= ?", (now,))
            db.execute("INSERT INTO messages (channel, body, expires) VALUES (?, ?, ?)",
                       (channel, json.dumps(message), now + MESSAGE_TTL_S))
        await self._run(push)

    async def _pop(self, channel: str, timeout_s: float) -> dict[str, Any] | None:
        def pop(db: sqlite3.Connection) -> str | None:
            row = db.execute("SELECT id, body FROM messages WHERE channel = ? AND expires > ? ORDER BY id LIMIT 1",
                             (channel, self._clock())).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM messages WHERE id = ?", (row[0],))
            return row[1]
        deadline = time.monotonic() + timeout_s
        while True:
            body = await self._run(pop)
            if body is not None:
                try:
                    message = json.loads(body)
                except ValueError:
                    return None
                return message if isinstance(message, dict) else None
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(POLL_S)

    async def send_control(self, instance: str, message: dict[str, Any]) -> None:
        await self._push(f"control:{instance}", message)

    async def next_control(self, instance: str, timeout_s: float) -> dict[str, Any] | None:
        return await self._pop(f"control:{instance}", timeout_s)

    async def reply(self, request_id: str, message: dict[str, Any]) -> None:
        await self._push(f"reply:{request_id}", message)

    async def wait_reply(self, request_id: str, timeout_s: float) -> dict[str, Any] | None:
        return await self._pop(f"reply:{request_id}", timeout_s)

    async def put_session(self, handle: str, key_id: str, body: dict[str, Any], ttl_s: float, *,
                          per_key: int, limit: int) -> None:
        now = self._clock()

        def put(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM console_sessions WHERE expires <= ?", (now,))
            db.execute("INSERT OR REPLACE INTO console_sessions VALUES (?, ?, ?, ?)",
                       (handle, key_id, json.dumps(body), now + ttl_s))
            # All last as long: the soonest to expire are the oldest, and go first.
            db.execute("DELETE FROM console_sessions WHERE key_id = ? AND handle NOT IN (SELECT handle FROM "
                       "console_sessions WHERE key_id = ? ORDER BY expires DESC LIMIT ?)", (key_id, key_id, per_key))
            db.execute("DELETE FROM console_sessions WHERE handle NOT IN (SELECT handle FROM console_sessions "
                       "ORDER BY expires DESC LIMIT ?)", (limit,))
        await self._run(put)

    async def get_session(self, handle: str) -> dict[str, Any] | None:
        row = await self._run(lambda db: db.execute("SELECT body FROM console_sessions WHERE handle = ? AND expires > ?",
                                                    (handle, self._clock())).fetchone())
        return _json_object(row[0]) if row else None

    async def drop_session(self, handle: str, key_id: str) -> None:
        await self._run(lambda db: db.execute("DELETE FROM console_sessions WHERE handle = ?", (handle,)))

    async def live_calls(self) -> dict[str, str]:
        rows = await self._run(lambda db: db.execute("SELECT call_sid, instance FROM calls WHERE expires > ? LIMIT ?",
                                                     (self._clock(), MAX_LIVE_LISTED)).fetchall())
        return dict(rows)

    async def publish_live(self, batch: LiveBatch) -> None:
        now = self._clock()

        def publish(db: sqlite3.Connection) -> None:
            gone = db.execute("DELETE FROM live_pictures WHERE expires <= ?", (now,)).rowcount
            for call_sid, summary in batch.calls.items():
                db.execute("INSERT OR REPLACE INTO live_pictures VALUES (?, ?, ?)",
                           (call_sid, json.dumps(summary), now + batch.ttl_s))
            for call_sid, lines in batch.lines.items():
                db.executemany("INSERT INTO live_lines (call_sid, body) VALUES (?, ?)",
                               [(call_sid, json.dumps(line)) for line in lines])
                db.execute("DELETE FROM live_lines WHERE call_sid = ? AND id NOT IN (SELECT id FROM live_lines "
                           "WHERE call_sid = ? ORDER BY id DESC LIMIT ?)", (call_sid, call_sid, batch.max_lines))
            db.executemany("DELETE FROM live_pictures WHERE call_sid = ?", [(sid,) for sid in batch.ended])
            if gone or batch.ended:
                # The lines of ended calls, and of calls whose holder stopped renewing them, go with their picture.
                db.execute("DELETE FROM live_lines WHERE call_sid NOT IN (SELECT call_sid FROM live_pictures)")
            db.executemany("INSERT INTO live_feed (body) VALUES (?)", [(json.dumps(e),) for e in batch.events])
            db.execute("DELETE FROM live_feed WHERE id <= (SELECT MAX(id) FROM live_feed) - ?", (LIVE_FEED_MAX,))
        await self._run(publish)

    async def live_pictures(self, call_sids: list[str]) -> dict[str, dict[str, Any]]:
        now = self._clock()

        def read(db: sqlite3.Connection) -> dict[str, dict[str, Any]]:
            found = {}
            for call_sid in call_sids:
                row = db.execute("SELECT body FROM live_pictures WHERE call_sid = ? AND expires > ?",
                                 (call_sid, now)).fetchone()
                summary = _json_object(row[0]) if row else None
                if summary is not None:
                    lines = db.execute("SELECT body FROM live_lines WHERE call_sid = ? ORDER BY id", (call_sid,))
                    found[call_sid] = {"call": summary, "lines": [line for (body,) in lines
                                                                  if (line := _json_object(body)) is not None]}
            return found
        return await self._run(read)

    async def read_live(self, after: str, timeout_s: float) -> tuple[str, list[dict[str, Any]]]:
        if not after.isdigit():
            last = await self._run(lambda db: db.execute("SELECT COALESCE(MAX(id), 0) FROM live_feed").fetchone()[0])
            return str(last), []
        deadline = time.monotonic() + timeout_s
        while True:  # polled, only while a console's live view is open on this process
            rows = await self._run(lambda db: db.execute("SELECT id, body FROM live_feed WHERE id > ? ORDER BY id "
                                                         "LIMIT ?", (int(after), LIVE_READ_MAX)).fetchall())
            if rows or time.monotonic() >= deadline:
                events = [event for _, body in rows if (event := _json_object(body)) is not None]
                return (str(rows[-1][0]) if rows else after), events
            await asyncio.sleep(LIVE_POLL_S)

    async def aclose(self) -> None:
        pass


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
