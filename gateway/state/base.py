"""The interface of the shared state, its one error, and the time allowance of a request's state calls."""

from __future__ import annotations

import asyncio
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol, TypeVar

T = TypeVar("T")

# The shared state's share of one webhook, or of one stream's admission: its calls (budget read, credential claim,
# leases) answer within this, in total, or the request is refused (fail closed) instead of waiting on a hung Redis.
WEBHOOK_STATE_S = 0.3


class StateUnavailable(Exception):
    """The shared state did not answer; the caller must refuse, never let the request through."""


class StateDeadline:
    """One time allowance for the state calls of one request: each call gets what is left of it, and a call still
    unanswered then raises :class:`StateUnavailable` (it is cancelled: a Redis client drops that connection)."""

    def __init__(self, seconds: float = WEBHOOK_STATE_S, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._ends = clock() + seconds

    async def run(self, call: Awaitable[T]) -> T:
        left = self._ends - self._clock()
        if left <= 0:
            if inspect.iscoroutine(call):
                call.close()  # never started: no "never awaited" warning
            raise StateUnavailable(f"no time left of the {self.seconds * 1000:.0f} ms allowed for the shared state")
        try:
            return await asyncio.wait_for(call, left)
        except TimeoutError:
            raise StateUnavailable(f"the shared state did not answer within {self.seconds * 1000:.0f} ms") from None


class SharedState(Protocol):
    async def claim_once(self, key: str, ttl_s: float) -> bool:
        """True for the first claim of ``key`` within ``ttl_s``; False for every later one.
        Raises :class:`StateUnavailable` when it cannot tell."""
        ...

    async def set_share(self, key: str, contributor: str, amount: float, ttl_s: float) -> float:
        """Set ``contributor``'s share of the running total ``key`` (kept ``ttl_s`` from its first write) to
        ``amount``, the contributor's own running sum; the new total (every share). A share only grows: an amount
        below the stored one changes nothing. So a write may be repeated (a retry after a timeout whose outcome is
        unknown, or after an outage) and nothing is ever counted twice. Raises :class:`StateUnavailable`."""
        ...

    async def get_total(self, key: str) -> float:
        """The running total ``key``, every share (0 when there is none). Raises :class:`StateUnavailable`."""
        ...

    # ---- concurrency leases: a slot held while a call lives, freed by its end or by its TTL --------------------

    async def acquire_lease(self, scope: str, holder: str, limit: int, ttl_s: float) -> bool:
        """Take one of ``limit`` slots of ``scope`` for ``holder`` (a call) for ``ttl_s``; False when all are held
        (expired leases, a crashed instance's, do not count). Raises :class:`StateUnavailable`."""
        ...

    async def renew_lease(self, scope: str, holder: str, ttl_s: float) -> None: ...

    async def release_lease(self, scope: str, holder: str) -> None: ...

    # ---- live calls: which instance holds which call -------------------------------------------------------

    async def register_call(self, call_sid: str, instance: str, ttl_s: float) -> None: ...

    async def call_holder(self, call_sid: str) -> str | None:
        """The instance holding a live call, or None. Raises :class:`StateUnavailable`."""
        ...

    async def unregister_call(self, call_sid: str, instance: str) -> None: ...

    # ---- control messages to the instance holding a call, and their replies ---------------------------------

    async def send_control(self, instance: str, message: dict[str, Any]) -> None:
        """Queue ``message`` for ``instance`` (kept briefly: an instance that is gone never reads it)."""
        ...

    async def next_control(self, instance: str, timeout_s: float) -> dict[str, Any] | None:
        """The next message for ``instance``, or None after ``timeout_s``."""
        ...

    async def reply(self, request_id: str, message: dict[str, Any]) -> None: ...

    async def wait_reply(self, request_id: str, timeout_s: float) -> dict[str, Any] | None:
        """The reply to ``request_id``, or None after ``timeout_s``."""
        ...

    # ---- console sessions (gateway.console.session): named by the SHA-256 of the cookie, never the cookie ----

    async def put_session(self, handle: str, key_id: str, body: dict[str, Any], ttl_s: float, *,
                          per_key: int, limit: int) -> None:
        """Keep ``body`` as session ``handle`` of ``key_id`` for ``ttl_s``. Bounded: past ``per_key`` sessions of
        that key its own oldest go, past ``limit`` in all the oldest go. Raises :class:`StateUnavailable`."""
        ...

    async def get_session(self, handle: str) -> dict[str, Any] | None:
        """The body of a live session, or None (unknown, ended, expired). Raises :class:`StateUnavailable`."""
        ...

    async def drop_session(self, handle: str, key_id: str) -> None:
        """End a session, for every instance at once. Raises :class:`StateUnavailable`."""
        ...

    # ---- the console's live view of every instance's calls (gateway.console.relay) ----------------------------

    async def live_calls(self) -> dict[str, str]:
        """The registry of live calls (:meth:`register_call`): call_sid -> the instance holding it, at most
        :data:`MAX_LIVE_LISTED`. Raises :class:`StateUnavailable`."""
        ...

    async def publish_live(self, batch: LiveBatch) -> None:
        """A holder's changes to its calls' live pictures, and their events appended to the live feed (bounded: past
        :data:`LIVE_FEED_MAX` events the oldest go). Raises :class:`StateUnavailable`."""
        ...

    async def live_pictures(self, call_sids: list[str]) -> dict[str, dict[str, Any]]:
        """The pictures of these calls (those that have one): ``{"call": {...}, "lines": [...]}``.
        Raises :class:`StateUnavailable`."""
        ...

    async def read_live(self, after: str, timeout_s: float) -> tuple[str, list[dict[str, Any]]]:
        """The feed's events after the cursor ``after`` (at most :data:`LIVE_READ_MAX`), waiting up to ``timeout_s``
        for one: (the next cursor, the events). ``after=""``: from now on (no events, the current cursor).
        Raises :class:`StateUnavailable`."""
        ...

    async def aclose(self) -> None: ...


LIVE_FEED_MAX = 5000  # events kept in the live feed: a reader further behind than this misses some
LIVE_READ_MAX = 500
MAX_LIVE_LISTED = 10_000


@dataclass
class LiveBatch:
    """What one holder publishes at once: the feed's new ``events``; for calls whose summary changed, ``calls``
    (call_sid -> summary, owner and instance included, kept ``ttl_s``); new transcript ``lines`` per call (the
    last ``max_lines`` kept); the calls that ``ended`` (their pictures dropped)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    lines: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    ended: list[str] = field(default_factory=list)
    ttl_s: float = 120.0
    max_lines: int = 200
