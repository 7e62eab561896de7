"""The interface of the shared state and its one error."""

from __future__ import annotations

from typing import Protocol


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

    async def aclose(self) -> None: ...
