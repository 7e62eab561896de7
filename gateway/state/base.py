"""The interface of the shared state, its one error, and the time allowance of a request's state calls."""

from __future__ import annotations

import asyncio
import inspect
import time
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

    async def aclose(self) -> None: ...
