"""The interface of the shared state and its one error."""

from __future__ import annotations

from typing import Any, Protocol


class StateUnavailable(Exception):
    """The shared state did not answer; the caller must refuse, never let the request through."""


class SharedState(Protocol):
    async def claim_once(self, key: str, ttl_s: float) -> bool:
        """True for the first claim of ``key`` within ``ttl_s``; False for every later one.
        Raises :class:`StateUnavailable` when it cannot tell."""
        ...

    async def add_to_total(self, key: str, amount: float, ttl_s: float) -> float:
        """Add ``amount`` to the running total ``key`` (kept ``ttl_s`` from its first addition); the new total.
        Raises :class:`StateUnavailable` when it cannot tell."""
        ...

    async def get_total(self, key: str) -> float:
        """The running total ``key`` (0 when there is none). Raises :class:`StateUnavailable`."""
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

    async def aclose(self) -> None: ...
