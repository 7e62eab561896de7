"""The store's interface (:class:`CallStore`) and the half every backend shares (:class:`StoreBase`).

A backend provides a few primitives, each one atomic in its own way (a lock, a transaction, a single statement):
put/get/take a settings row with its expiry, ``_modify`` (read a record, apply a pure function, write the result, as
one step), ``_query`` (a page of records), ``upsert_call``, ``get_call``, ``delete_calls_before`` and ``close``.
Everything with a rule in it (the settings' TTL, which status wins, who may claim a machine action, how the live
call's final record merges with what Twilio's callbacks wrote, paging) is written once, here and in
:mod:`gateway.store.model`.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Protocol

from gateway.store.model import (
    DEFAULT_SETTINGS_TTL_S, MAX_PAGE_SIZE, UPDATABLE, CallPage, CallQuery, CallRecord, OutboundCallSettings,
    apply_status, as_final_record, claim_action, decode_cursor, merge_final, merge_lost, merge_start, settings_expiry,
)

MAX_OPEN_CALLS = 20_000  # open records one sweep looks at: every live call of a large fleet, and the lost ones

Change = Callable[[CallRecord | None], CallRecord | None]


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

    async def upsert_call(self, record: CallRecord) -> None:
        """Store ``record`` as it is, replacing any record of its call_sid."""
        ...

    async def get_call(self, call_sid: str) -> CallRecord | None: ...

    async def update_status(self, call_sid: str, status: str | None = None, **fields: Any) -> CallRecord | None:
        """Move the status forward (see :func:`next_status`) and set ``fields`` (answered_by, duration_s,
        machine_action, metadata); returns the new record, None for an unknown call."""
        ...

    async def claim_machine_action(self, call_sid: str, action: str) -> bool:
        """Set machine_action if it is still unset; True for the one caller that did (acts once per call)."""
        ...

    async def finish_call(self, record: CallRecord | Mapping[str, Any]) -> CallRecord:
        """Write a call's final record (at its end, inbound or outbound) over what is stored, in one atomic step
        (:func:`merge_final`); returns the stored record. ``record`` may also be the live call's own summary
        (:func:`gateway.store.model.as_final_record` says which keys are read)."""
        ...

    async def start_call(self, record: CallRecord) -> CallRecord:
        """Write what is known when a call's stream starts (:func:`merge_start`: status in-progress, the holder),
        in one atomic step; idempotent, and never reopens a record that has ended. Returns the stored record."""
        ...

    async def mark_lost(self, call_sid: str, reason: str) -> CallRecord | None:
        """Mark an open record lost (:func:`merge_lost`); the new record, None if it was not open (or unknown)."""
        ...

    async def open_calls(self, max_records: int = MAX_OPEN_CALLS) -> list[CallRecord]:
        """The open records (a holder, no end yet: live calls, or lost ones), newest first, at most
        ``max_records``."""
        ...

    async def list_calls(self, query: CallQuery | None = None, **filters: Any) -> CallPage:
        """Records matching ``query`` (or a CallQuery made of ``filters``), newest first, one page."""
        ...

    async def overview(self, since: float, until: float, api_key_id: str | None, bucket_s: int) -> Any:
        """The console's overview of the calls created in [since, until) (those ``api_key_id`` placed; None: all):
        a :class:`gateway.store.figures.Overview`, its latency series per ``bucket_s`` (3600 or 86400)."""
        ...

    async def delete_calls_before(self, cutoff: float, limit: int = 1000) -> list[tuple[str, str | None]]:
        """Delete at most ``limit`` records created before ``cutoff`` (epoch s); their (call_sid, recording)."""
        ...

    async def close(self) -> None: ...


class StoreBase:
    """The rules, over a backend's primitives (see the module docstring)."""

    def __init__(self, *, settings_ttl_s: float = DEFAULT_SETTINGS_TTL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings_ttl_s = settings_ttl_s
        self._clock = clock  # the settings' TTL runs on it; record times are wall-clock (time.time)

    # ---- primitives (each backend)

    async def _put_settings(self, key: str, data: dict[str, Any], expires_at: float, now: float) -> None:
        """Save (replacing) ``key``, and drop the settings expired at ``now``."""
        raise NotImplementedError

    async def _get_settings(self, key: str, now: float) -> dict[str, Any] | None:
        """The data under ``key`` if it is alive at ``now`` (:func:`settings_alive`)."""
        raise NotImplementedError

    async def _take_settings(self, key: str, now: float) -> dict[str, Any] | None:
        """As :meth:`_get_settings`, deleting the row in the same atomic step (alive or not)."""
        raise NotImplementedError

    async def _modify(self, call_sid: str, change: Change) -> tuple[CallRecord | None, CallRecord | None]:
        """Atomically: read the record, ``change(record)``, and write its result unless it is None or the record
        itself. Returns (the record before, what ``change`` returned)."""
        raise NotImplementedError

    async def _query(self, query: CallQuery) -> list[CallRecord]:
        """Up to ``query.limit + 1`` matching records, newest first (created_at, call_sid descending)."""
        raise NotImplementedError

    # ---- per-call settings

    async def save_call_settings(self, key: str, settings: OutboundCallSettings) -> None:
        now = self._clock()
        await self._put_settings(key, settings.to_json(), settings_expiry(now, self.settings_ttl_s), now)

    async def get_call_settings(self, key: str) -> OutboundCallSettings | None:
        data = await self._get_settings(key, self._clock())
        return OutboundCallSettings.from_json(data) if data is not None else None

    async def take_call_settings(self, key: str) -> OutboundCallSettings | None:
        data = await self._take_settings(key, self._clock())
        return OutboundCallSettings.from_json(data) if data is not None else None

    # ---- call records

    async def create_call(self, record: CallRecord) -> CallRecord:
        before, _ = await self._modify(record.call_sid, lambda existing: existing if existing is not None else record)
        return before if before is not None else record

    async def update_status(self, call_sid: str, status: str | None = None, **fields: Any) -> CallRecord | None:
        unknown = set(fields) - UPDATABLE
        if unknown:
            raise TypeError(f"update_status: unknown fields {sorted(unknown)}")
        _, after = await self._modify(
            call_sid, lambda existing: None if existing is None else apply_status(existing, status, fields, time.time()))
        return after

    async def claim_machine_action(self, call_sid: str, action: str) -> bool:
        _, after = await self._modify(call_sid, lambda existing: claim_action(existing, action, time.time()))
        return after is not None

    async def finish_call(self, record: CallRecord | Mapping[str, Any]) -> CallRecord:
        final = as_final_record(record)
        if not final.call_sid:
            raise ValueError("finish_call: the record has no call_sid")
        _, after = await self._modify(final.call_sid, lambda existing: merge_final(existing, final, time.time()))
        assert after is not None
        return after

    async def start_call(self, record: CallRecord) -> CallRecord:
        _, after = await self._modify(record.call_sid, lambda existing: merge_start(existing, record, time.time()))
        assert after is not None
        return after

    async def mark_lost(self, call_sid: str, reason: str) -> CallRecord | None:
        before, after = await self._modify(call_sid, lambda existing: merge_lost(existing, reason, time.time()))
        return after if after is not before else None

    async def open_calls(self, max_records: int = MAX_OPEN_CALLS) -> list[CallRecord]:
        # Page by page (the partial index calls_open, migration 3, serves each: a few rows, however many records the
        # table holds), so that an old lost call is found behind any number of live ones.
        found: list[CallRecord] = []
        after = None
        while len(found) < max_records:
            page = await self.list_calls(CallQuery(open_only=True, after=after, limit=MAX_PAGE_SIZE))
            found.extend(page.records)
            if page.next_cursor is None:
                break
            after = decode_cursor(page.next_cursor)
        return found[:max_records]

    async def list_calls(self, query: CallQuery | None = None, **filters: Any) -> CallPage:
        if query is None:
            query = CallQuery(**filters)
        elif filters:
            raise TypeError("list_calls: pass a CallQuery or filters, not both")
        return query.page(await self._query(query))
