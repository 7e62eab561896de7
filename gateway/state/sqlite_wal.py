"""Switching a SQLite file to write-ahead logging when several processes open it at once (the workers of one host
share the state and the records in SQLite files)."""

from __future__ import annotations

import sqlite3
import time

WAL_SWITCH_TIMEOUT_S = 10.0


def switch_to_wal(db: sqlite3.Connection, timeout_s: float = WAL_SWITCH_TIMEOUT_S) -> None:
    """``PRAGMA journal_mode=WAL``, retried for up to ``timeout_s``: while another process holds the file, SQLite may
    answer "database is locked" at once, without waiting out the connection's busy timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            retry = "locked" in str(error) or "busy" in str(error)
            if not retry or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
