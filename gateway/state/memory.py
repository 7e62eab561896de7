"""In-process shared state: the embedded default (one process, nothing to install)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, defaultdict, deque
from typing import Any, Callable

from gateway.state.base import LIVE_FEED_MAX, LIVE_READ_MAX, MAX_LIVE_LISTED, LiveBatch

DEFAULT_MAX_CLAIMS = 100_000


class MemoryState:
    """Claims kept in insertion order with their expiry; bounded: past ``max_claims`` the oldest go first.

    Evicting a claim early could let a credential be used twice, so the bound is far above what one process
    can hold (a credential lives minutes; ``MAX_CALLS`` streams at a time)."""

    def __init__(self, *, max_claims: int = DEFAULT_MAX_CLAIMS, clock: Callable[[], float] = time.monotonic) -> None:
        self._claims: OrderedDict[str, float] = OrderedDict()
        self._max_claims = max_claims
        self._clock = clock
        # key -> ({contributor: share}, expires at): a few keys (one a day), a share per process that added to it
        self._totals: dict[str, tuple[dict[str, float], float]] = {}
        self._leases: defaultdict[str, dict[str, float]] = defaultdict(dict)  # scope -> holder -> expires at
        self._calls: dict[str, tuple[str, float]] = {}  # call_sid -> (instance, expires at)
        self._queues: defaultdict[str, asyncio.Queue[dict[str, Any]]] = defaultdict(asyncio.Queue)
        self._sessions: OrderedDict[str, tuple[str, dict[str, Any], float]] = OrderedDict()  # handle -> (key, body, exp)
        # The live view: the feed (sequence number, event), and each call's picture (summary, its lines, expires at).
        self._live_feed: deque[tuple[int, dict[str, Any]]] = deque(maxlen=LIVE_FEED_MAX)
        self._live_seq = 0
        self._live_new = asyncio.Event()
        self._pictures: dict[str, tuple[dict[str, Any], deque[dict[str, Any]], float]] = {}

    async def claim_once(self, key: str, ttl_s: float) -> bool:
        now = self._clock()
        self._expire(now)
        if key in self._claims:
            return False
        self._claims[key] = now + ttl_s
        while len(self._claims) > self._max_claims:
            self._claims.popitem(last=False)
        return True

    def _expire(self, now: float) -> None:
        # Claims are added with one TTL per caller, so expiry order is nearly insertion order: stop at the first live one.
        while self._claims:
            key, expires = next(iter(self._claims.items()))
            if expires > now:
                break
            del self._claims[key]

    async def set_share(self, key: str, contributor: str, amount: float, ttl_s: float) -> float:
        now = self._clock()
        self._totals = {k: v for k, v in self._totals.items() if v[1] > now}
        shares, _ = self._totals.setdefault(key, ({}, now + ttl_s))
        shares[contributor] = max(amount, shares.get(contributor, 0.0))
        return sum(shares.values())

    async def get_total(self, key: str) -> float:
        shares, expires = self._totals.get(key, ({}, 0.0))
        return sum(shares.values()) if expires > self._clock() else 0.0

    async def acquire_lease(self, scope: str, holder: str, limit: int, ttl_s: float) -> bool:
        now = self._clock()
        leases = self._leases[scope]
        for expired in [h for h, expires in leases.items() if expires <= now]:
            del leases[expired]
        if holder not in leases and len(leases) >= limit:
            return False
        leases[holder] = now + ttl_s
        return True

    async def renew_lease(self, scope: str, holder: str, ttl_s: float) -> None:
        if holder in self._leases.get(scope, {}):
            self._leases[scope][holder] = self._clock() + ttl_s

    async def release_lease(self, scope: str, holder: str) -> None:
        leases = self._leases.get(scope)
        if leases is not None:
            leases.pop(holder, None)
            if not leases:
                del self._leases[scope]

    async def register_call(self, call_sid: str, instance: str, ttl_s: float) -> None:
        self._calls[call_sid] = (instance, self._clock() + ttl_s)

    async def call_holder(self, call_sid: str) -> str | None:
        found = self._calls.get(call_sid)
        return found[0] if found is not None and found[1] > self._clock() else None

    async def unregister_call(self, call_sid: str, instance: str) -> None:
        if self._calls.get(call_sid, ("",))[0] == instance:
            del self._calls[call_sid]

    async def send_control(self, instance: str, message: dict[str, Any]) -> None:
        self._queues[f"control:{instance}"].put_nowait(message)

    async def next_control(self, instance: str, timeout_s: float) -> dict[str, Any] | None:
        return await self._get(f"control:{instance}", timeout_s)

    async def reply(self, request_id: str, message: dict[str, Any]) -> None:
        queue = self._queues.get(f"reply:{request_id}")
        if queue is not None:  # nobody waits any more (timed out): dropped, not kept forever
            queue.put_nowait(message)

    async def wait_reply(self, request_id: str, timeout_s: float) -> dict[str, Any] | None:
        try:
            return await self._get(f"reply:{request_id}", timeout_s)
        finally:
            self._queues.pop(f"reply:{request_id}", None)

    async def _get(self, name: str, timeout_s: float) -> dict[str, Any] | None:
        try:
            return await asyncio.wait_for(self._queues[name].get(), timeout_s)
        except TimeoutError:
            return None

    async def put_session(self, handle: str, key_id: str, body: dict[str, Any], ttl_s: float, *,
                          per_key: int, limit: int) -> None:
        now = self._clock()
        # Sessions all last as long and come in creation order: the expired ones are the first.
        while self._sessions and next(iter(self._sessions.values()))[2] <= now:
            self._sessions.popitem(last=False)
        self._sessions[handle] = (key_id, body, now + ttl_s)
        mine = [h for h, (owner, _, _) in self._sessions.items() if owner == key_id]
        for old in mine[: max(0, len(mine) - per_key)]:
            del self._sessions[old]
        while len(self._sessions) > limit:
            self._sessions.popitem(last=False)

    async def get_session(self, handle: str) -> dict[str, Any] | None:
        found = self._sessions.get(handle)
        if found is None or found[2] <= self._clock():
            self._sessions.pop(handle, None)
            return None
        return found[1]

    async def drop_session(self, handle: str, key_id: str) -> None:
        self._sessions.pop(handle, None)

    async def live_calls(self) -> dict[str, str]:
        now = self._clock()
        live = ((sid, instance) for sid, (instance, expires) in self._calls.items() if expires > now)
        return dict(item for item, _ in zip(live, range(MAX_LIVE_LISTED)))

    async def publish_live(self, batch: LiveBatch) -> None:
        now = self._clock()
        for call_sid in [sid for sid, (_, _, expires) in self._pictures.items() if expires <= now]:
            del self._pictures[call_sid]
        for call_sid, summary in batch.calls.items():
            old = self._pictures.get(call_sid)
            lines = old[1] if old is not None else deque(maxlen=batch.max_lines)
            self._pictures[call_sid] = (summary, lines, now + batch.ttl_s)
        for call_sid, new_lines in batch.lines.items():
            if call_sid in self._pictures:
                self._pictures[call_sid][1].extend(new_lines)
        for call_sid in batch.ended:
            self._pictures.pop(call_sid, None)
        for event in batch.events:
            self._live_seq += 1
            self._live_feed.append((self._live_seq, event))
        if batch.events:
            self._live_new.set()
            self._live_new = asyncio.Event()  # readers waiting on the old one wake; new waits take this one

    async def live_pictures(self, call_sids: list[str]) -> dict[str, dict[str, Any]]:
        now = self._clock()
        return {sid: {"call": found[0], "lines": list(found[1])} for sid in call_sids
                if (found := self._pictures.get(sid)) is not None and found[2] > now}

    async def read_live(self, after: str, timeout_s: float) -> tuple[str, list[dict[str, Any]]]:
        if not after:
            return str(self._live_seq), []
        cursor = int(after) if after.isdigit() else self._live_seq
        if cursor >= self._live_seq:
            try:
                await asyncio.wait_for(self._live_new.wait(), timeout_s)
            except TimeoutError:
                return str(cursor), []
        events = [(seq, event) for seq, event in self._live_feed if seq > cursor][:LIVE_READ_MAX]
        return (str(events[-1][0]) if events else str(cursor)), [event for _, event in events]

    async def aclose(self) -> None:
        self._leases.clear()
        self._calls.clear()
        self._claims.clear()
        self._totals.clear()
