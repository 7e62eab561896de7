"""Call records and per-call settings, behind one small interface: :class:`CallStore`.

* Per-call settings (:class:`OutboundCallSettings`) are saved by ``POST /calls`` under the CallSid Twilio returned,
  and taken (read and deleted at once) by the media stream of that very call: single use, bound to the call, never
  in a URL, a TwiML parameter, a log line or a recording. They expire (TTL) if the call never starts.
* Call records (:class:`CallRecord`), for every call, inbound and outbound. An outbound call's record is made when
  it is placed and follows Twilio's status callbacks: a status only moves forward (queued < initiated < ringing <
  in-progress < a final status), so callbacks that arrive out of order, or late, never undo a later state. When a
  call ends, the live call writes its final record (:meth:`CallStore.finish_call`): SIDs, start and end, outcome
  and who ended it, turns, tool calls, reconnects and rollovers, usage and cost. ``GET /calls`` lists them
  (:meth:`CallStore.list_calls`); :mod:`gateway.store.retention` prunes them (``RECORD_RETENTION_DAYS``).
  A live call also writes its record when its stream starts (:meth:`CallStore.start_call`: in progress, naming
  the instance that holds it), so a call whose instance dies is marked lost (:meth:`CallStore.mark_lost`) rather
  than forgotten; :mod:`gateway.store.records` writes both, spooling (:mod:`gateway.store.spool`) what the store
  does not take.

The package:

* :mod:`~gateway.store.model`: the records and every rule about them (TTL, status order, the final-record merge,
  filters and paging), pure; :mod:`~gateway.store.base`: the interface, and those rules over each backend's
  primitives (read-modify-write written once);
* one module per backend, chosen by ``STORE_URL`` (:func:`open_store`):
  :mod:`~gateway.store.memory` (``memory://``: one process, bounded),
  :mod:`~gateway.store.sqlite` (``sqlite:///path.db``, the default: several workers on one host),
  :mod:`~gateway.store.postgres` (``postgresql://user@host:port/db``: several hosts);
* :mod:`~gateway.store.migrate`: versioned schema migrations (``sql/<dialect>/NNNN_*.sql``), applied in place when a
  SQLite or PostgreSQL store opens;
* :mod:`~gateway.store.retention`: pruning of old records and their recordings.
* :mod:`~gateway.store.figures`: the console's views of many calls: the listing's sort orders (a whitelist) and
  the overview's figures (SQL in SQLite and PostgreSQL, the same in Python for the memory store).
"""

from __future__ import annotations

import os
import sqlite3
from urllib.parse import urlsplit

from gateway.store.base import CallStore, StoreBase
from gateway.store.memory import MemoryCallStore
from gateway.store.model import (
    CALL_STATUSES, DEFAULT_MAX_CALLS, DEFAULT_MAX_SETTINGS, DEFAULT_PAGE_SIZE, DEFAULT_SETTINGS_TTL_S,
    DIRECTION_FILTERS, ENDED_BY, FINAL_STATUSES, INBOUND, MACHINE_DETECTION_CHOICES, MAX_PAGE_SIZE, OUTBOUND_API,
    CallPage, CallQuery, CallRecord, OutboundCallSettings, SessionChange, ToolRun, Turn, as_final_record,
    decode_cursor, encode_cursor, merge_final, next_status, status_rank,
)
from gateway.store.postgres import PostgresCallStore
from gateway.store.retention import prune, run_retention
from gateway.store.sqlite import SQLiteCallStore

__all__ = [
    "CALL_STATUSES", "DEFAULT_MAX_CALLS", "DEFAULT_MAX_SETTINGS", "DEFAULT_PAGE_SIZE", "DEFAULT_SETTINGS_TTL_S",
    "DIRECTION_FILTERS", "ENDED_BY", "FINAL_STATUSES", "INBOUND", "MACHINE_DETECTION_CHOICES", "MAX_PAGE_SIZE",
    "OUTBOUND_API", "CallPage", "CallQuery", "CallRecord", "CallStore", "MemoryCallStore", "OutboundCallSettings",
    "PostgresCallStore", "SQLiteCallStore", "SessionChange", "StoreBase", "StoreOpenError", "ToolRun", "Turn",
    "as_final_record", "decode_cursor", "encode_cursor", "merge_final", "next_status", "open_store", "prune",
    "run_retention", "status_rank",
]


class StoreOpenError(RuntimeError):
    """The store ``STORE_URL`` names cannot be opened (a SQLite file in a directory this user cannot write, say):
    ``str()`` names ``STORE_URL``, the path and the fix, on one line (``gateway serve`` prints it and exits);
    :attr:`reason` and :attr:`fix` are its two halves (``gateway doctor`` shows them apart)."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(f"{reason}; fix: {fix}")
        self.reason = reason
        self.fix = fix


def _sqlite_open_error(url: str, path: str, error: Exception) -> StoreOpenError:
    from gateway.config import redact_url
    from gateway.observe.logsafe import escape_controls

    file = os.path.abspath(path)
    folder = os.path.dirname(file)
    uid = os.getuid() if hasattr(os, "getuid") else None
    user = f"this user (uid {uid})" if uid is not None else "this user"
    elsewhere = (f"set DATA_DIR to a directory {user} can write (the container image's /data volume), or STORE_URL "
                 "to a writable sqlite:////path.db or postgresql://...")
    if not os.path.isdir(folder):
        why, fix = f"its directory {folder} does not exist", f"create it, or {elsewhere}"
    elif not os.access(folder, os.W_OK | os.X_OK):
        why, fix = f"its directory {folder} is not writable by {user}", elsewhere
    else:  # the directory is fine: the file itself (not a database, read-only, locked, from a newer version)
        why = f"{type(error).__name__}: {escape_controls(str(error))[:200]}"
        fix = f"check that {file} is this gateway's SQLite file and {user} can write it, or {elsewhere}"
    return StoreOpenError(f"STORE_URL={redact_url(url)}: cannot open the SQLite file {file} ({why})", fix)


def open_store(url: str) -> CallStore:
    """The store ``STORE_URL`` names: ``""``/``memory://`` in-process, ``sqlite:///relative.db``,
    ``sqlite:////absolute/path.db`` or ``sqlite:///:memory:``, ``postgresql://user@host:port/db``
    (or ``postgres://``). A SQLite database is migrated here; a PostgreSQL one on first use."""
    scheme = urlsplit(url).scheme if url else "memory"
    if scheme == "memory":
        return MemoryCallStore()
    if scheme == "sqlite":
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        if not path:
            raise ValueError(f"STORE_URL for SQLite must be sqlite:///path.db, got {url!r}")
        try:
            return SQLiteCallStore(path)
        except (sqlite3.Error, OSError) as error:
            raise _sqlite_open_error(url, path, error) from error
    if scheme in ("postgresql", "postgres"):
        return PostgresCallStore(url)
    raise ValueError(f"unsupported STORE_URL scheme {scheme!r}: use memory://, sqlite:///path.db or "
                     "postgresql://user@host:port/db")
