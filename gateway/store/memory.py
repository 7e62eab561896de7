"""``memory://``: in-process, bounded (oldest evicted first), TTL on settings. One process only: with
several workers or instances, the worker that placed a call may not be the one Twilio streams it to."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Callable

from gateway.store.base import Change, StoreBase
from gateway.store.figures import Overview, overview_of_records, overview_query, sort_records
from gateway.store.model import (
    DEFAULT_MAX_CALLS, DEFAULT_MAX_SETTINGS, DEFAULT_SETTINGS_TTL_S, CallQuery, CallRecord, settings_alive,
)


class MemoryCallStore(StoreBase):
    """In-process store: bounded (oldest first out), TTL on per-call settings. Single process only.

    No method awaits between its read and its write, so each one is atomic on the event loop."""

    def __init__(self, *, settings_ttl_s: float = DEFAULT_SETTINGS_TTL_S, max_settings: int = DEFAULT_MAX_SETTINGS,
                 max_calls: int = DEFAULT_MAX_CALLS, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(settings_ttl_s=settings_ttl_s, clock=clock)
        self.max_settings = max_settings
        self.max_calls = max_calls
        # Insertion order is expiry order (one TTL for all), so expired entries are always at the front.
        self._settings: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._calls: OrderedDict[str, CallRecord] = OrderedDict()

    def _expire(self, now: float) -> None:
        while self._settings:
            key, (expires, _) = next(iter(self._settings.items()))
            if settings_alive(expires, now):
                break
            del self._settings[key]

    async def _put_settings(self, key: str, data: dict[str, Any], expires_at: float, now: float) -> None:
        self._expire(now)
        self._settings.pop(key, None)
        self._settings[key] = (expires_at, data)
        while len(self._settings) > self.max_settings:
            self._settings.popitem(last=False)

    async def _get_settings(self, key: str, now: float) -> dict[str, Any] | None:
        self._expire(now)
        entry = self._settings.get(key)
        return entry[1] if entry is not None else None

    async def _take_settings(self, key: str, now: float) -> dict[str, Any] | None:
        self._expire(now)
        entry = self._settings.pop(key, None)
        return entry[1] if entry is not None else None

    def _insert(self, record: CallRecord) -> None:
        self._calls.pop(record.call_sid, None)
        self._calls[record.call_sid] = record
        while len(self._calls) > self.max_calls:
            self._calls.popitem(last=False)

    async def _modify(self, call_sid: str, change: Change) -> tuple[CallRecord | None, CallRecord | None]:
        existing = self._calls.get(call_sid)
        new = change(existing)
        if new is not None and new is not existing:
            if existing is None:
                self._insert(new)
            else:
                self._calls[call_sid] = new  # in place: eviction order stays creation order
        return existing, new

    async def _query(self, query: CallQuery) -> list[CallRecord]:
        found = sort_records((record for record in self._calls.values() if query.matches(record)), query)
        return found[query.offset:query.offset + query.limit + 1]

    async def overview(self, since: float, until: float, api_key_id: str | None, bucket_s: int) -> Overview:
        """The console's overview (gateway.store.figures), from the records in memory."""
        query = overview_query(since, until, api_key_id, bucket_s)
        return overview_of_records([r for r in self._calls.values() if query.matches(r)], since, until, bucket_s)

    async def upsert_call(self, record: CallRecord) -> None:
        self._insert(record)

    async def get_call(self, call_sid: str) -> CallRecord | None:
        return self._calls.get(call_sid)

    async def delete_calls_before(self, cutoff: float, limit: int = 1000) -> list[tuple[str, str | None]]:
        old = [record for record in self._calls.values() if record.created_at < cutoff][:limit]
        for record in old:
            del self._calls[record.call_sid]
        return [(record.call_sid, record.recording) for record in old]

    async def close(self) -> None:
        self._settings.clear()
        self._calls.clear()
