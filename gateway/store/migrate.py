"""Versioned schema migrations: numbered SQL files per backend, applied in order, each once, at start-up.

``gateway/store/sql/<dialect>/NNNN_name.sql`` (dialect ``sqlite`` or ``postgresql``) are the migrations; the table
``schema_version`` (version, name, applied_at) says which ones a database has. Opening a store brings its database
up to the newest version, in place:

* each migration runs in its own transaction together with its ``schema_version`` row: it is applied whole or not
  at all, and a crash half-way leaves the previous version;
* it is idempotent: a database at the newest version is left alone, so every start-up may run it;
* two processes starting at once apply each migration once: SQLite serialises them with ``BEGIN IMMEDIATE`` (the
  second waits for the first's write lock, then finds the work done); PostgreSQL with an advisory lock held for
  the whole upgrade (the same lock the store took before it had migrations, so an older gateway starting beside a
  newer one waits too);
* a database made before migrations existed (its tables there, no ``schema_version``) is recognised: migration 1
  is exactly the schema that code created, so the database is marked at version 1 and upgraded from there, never
  recreated;
* a database newer than this code (a rolled-back deploy) is used as it is, with a warning: migrations only add
  nullable columns and indexes, so the previous version's statements still work.

Why a small runner rather than a migration tool. The gateway's schema is two tables and a handful of migrations in
plain SQL, for two backends it already talks to directly (stdlib ``sqlite3`` in a worker thread, ``psycopg`` 3's
async pool). Alembic brings SQLAlchemy and its own engine and connection handling beside ours, for features
(autogenerate from models, branching, downgrades) this schema does not use. yoyo-migrations is small and speaks raw
SQL, but it is synchronous and would open its own connections (a psycopg driver URL beside ``STORE_URL``), keeps
four bookkeeping tables and its own lock table (a crashed process leaves a lock row that must be broken by hand),
and still needs code of ours to recognise a database made before migrations. The runner below is about a hundred
lines on the connections the store already has, with PostgreSQL's advisory lock (released by the server when a
process dies), and it is tested against both backends, concurrent start-ups and an upgrade from the old schema.
"""

from __future__ import annotations

import importlib.resources
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("gateway.store")

VERSION_TABLE = "schema_version"
# The advisory lock of schema changes; the same number the store used before migrations (two hosts starting at once
# create the tables once).
PG_SCHEMA_LOCK = 0x6761_7465_7761_7901
_FILE_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_VERSION_DDL = {
    "sqlite": f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
              "applied_at REAL NOT NULL)",
    "postgresql": f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                  "applied_at DOUBLE PRECISION NOT NULL)",
}
# The tables migration 1 creates: all of them there and no schema_version is a database from before migrations.
_INITIAL_TABLES = ("call_settings", "calls")
BASELINE_NAME = "initial (found: made before migrations)"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def split_statements(text: str) -> tuple[str, ...]:
    """The statements of a migration file: ``--`` comment lines dropped, then split on ``;``. Migration files
    therefore keep ``;`` for ending statements (no string literal or trigger body holds one)."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return tuple(statement.strip() for statement in "\n".join(lines).split(";") if statement.strip())


def load_migrations(dialect: str) -> list[Migration]:
    """The migrations of ``dialect`` ("sqlite" or "postgresql"), in order; numbered 1, 2, 3... with no gap."""
    folder = importlib.resources.files("gateway.store").joinpath("sql", dialect)
    migrations = []
    for entry in folder.iterdir():
        match = _FILE_NAME.fullmatch(entry.name)
        if match:
            migrations.append(Migration(int(match.group(1)), match.group(2),
                                        split_statements(entry.read_text(encoding="utf-8"))))
    migrations.sort(key=lambda migration: migration.version)
    if [m.version for m in migrations] != list(range(1, len(migrations) + 1)):
        raise RuntimeError(f"{dialect} migrations must be numbered 1, 2, 3... without gaps: "
                           f"{[m.version for m in migrations]}")
    return migrations


def latest_version(dialect: str) -> int:
    return len(load_migrations(dialect))


def _check_not_newer(current: int, migrations: list[Migration], dialect: str) -> None:
    if current > len(migrations):
        log.warning("the %s database is at schema version %d, newer than this gateway's %d: using it as it is",
                    dialect, current, len(migrations))


# ---- SQLite (synchronous: the store calls it in its worker thread, holding its connection lock)


def _sqlite_current(db: Any, now: float) -> int:
    """The database's version, inside the caller's transaction; a pre-migration database is marked version 1."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if VERSION_TABLE not in tables:
        db.execute(_VERSION_DDL["sqlite"])
        if all(name in tables for name in _INITIAL_TABLES):
            db.execute(f"INSERT INTO {VERSION_TABLE} (version, name, applied_at) VALUES (1, ?, ?)",
                       (BASELINE_NAME, now))
            log.info("SQLite database from before migrations: marked at schema version 1")
    return db.execute(f"SELECT COALESCE(MAX(version), 0) FROM {VERSION_TABLE}").fetchone()[0]


def migrate_sqlite(db: Any, *, clock: Callable[[], float] = time.time) -> list[int]:
    """Bring the SQLite database of ``db`` (a ``sqlite3`` connection in autocommit mode, ``isolation_level=None``)
    to the newest version; returns the versions applied now."""
    migrations = load_migrations("sqlite")
    applied: list[int] = []
    while True:
        db.execute("BEGIN IMMEDIATE")  # the write lock, before reading the version: one process migrates at a time
        try:
            current = _sqlite_current(db, clock())
            pending = [m for m in migrations if m.version > current]
            if pending:
                migration = pending[0]
                for statement in migration.statements:
                    db.execute(statement)
                db.execute(f"INSERT INTO {VERSION_TABLE} (version, name, applied_at) VALUES (?, ?, ?)",
                           (migration.version, migration.name, clock()))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        if not pending:
            _check_not_newer(current, migrations, "SQLite")
            return applied
        applied.append(migration.version)
        log.info("SQLite schema migrated to version %d (%s)", migration.version, migration.name)


# ---- PostgreSQL (psycopg 3, async; the connection is in autocommit mode)


async def _pg_current(conn: Any, now: float) -> int:
    cursor = await conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
    tables = {row[0] for row in await cursor.fetchall()}
    if VERSION_TABLE not in tables:
        await conn.execute(_VERSION_DDL["postgresql"])
        if all(name in tables for name in _INITIAL_TABLES):
            await conn.execute(f"INSERT INTO {VERSION_TABLE} (version, name, applied_at) VALUES (1, %s, %s)",
                               (BASELINE_NAME, now))
            log.info("PostgreSQL database from before migrations: marked at schema version 1")
    cursor = await conn.execute(f"SELECT COALESCE(MAX(version), 0) FROM {VERSION_TABLE}")
    return (await cursor.fetchone())[0]


async def migrate_postgres(conn: Any, *, clock: Callable[[], float] = time.time) -> list[int]:
    """Bring the database (the first schema of the connection's search_path) to the newest version; returns the
    versions applied now. Holds the schema advisory lock throughout: a second process waits, then finds the work
    done. The lock is the session's, released at the end (or by the server if this process dies)."""
    if conn.info.transaction_status != 0:  # psycopg.pq.TransactionStatus.IDLE
        raise RuntimeError("migrate_postgres needs a connection outside any transaction")
    migrations = load_migrations("postgresql")
    applied: list[int] = []
    await conn.execute("SELECT pg_advisory_lock(%s)", (PG_SCHEMA_LOCK,))
    try:
        while True:
            async with conn.transaction():
                current = await _pg_current(conn, clock())
                pending = [m for m in migrations if m.version > current]
                if pending:
                    migration = pending[0]
                    for statement in migration.statements:
                        await conn.execute(statement)
                    await conn.execute(f"INSERT INTO {VERSION_TABLE} (version, name, applied_at) VALUES (%s, %s, %s)",
                                       (migration.version, migration.name, clock()))
            if not pending:
                _check_not_newer(current, migrations, "PostgreSQL")
                return applied
            applied.append(migration.version)
            log.info("PostgreSQL schema migrated to version %d (%s)", migration.version, migration.name)
    finally:
        try:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (PG_SCHEMA_LOCK,))
        except Exception as error:  # noqa: BLE001 - a broken connection: the server released the lock with the session
            log.warning("could not release the schema lock: %s", error)
