"""State shared by every instance of the gateway, behind one small interface: :class:`SharedState`.

Implementations, chosen by ``REDIS_URL`` / ``STATE_SQLITE_PATH`` (:func:`open_state`):

* :class:`MemoryState` (the default): in-process, bounded, nothing to install. One process only.
* :class:`RedisState`: Redis, shared by every instance behind a load balancer.
* :class:`SQLiteState`: one SQLite file, shared by the worker processes of one host (``gateway serve --workers``).

What it holds: single-use claims of stream credentials, the daily cost total, concurrency leases (global and per
called number, with a TTL renewed while a call lives), the registry of live calls (which instance holds which)
and the control messages that reach the instance holding a call; for the console (:mod:`gateway.console`), its
login sessions (by the SHA-256 of the cookie) and the live view's relay (each call's picture and the live feed).

When the shared state cannot be reached, :class:`StateUnavailable` is raised and the caller fails closed: a
stream whose credential cannot be claimed is refused (Twilio's ``<Connect>`` then goes on to the next verb). On the
webhook path, :class:`StateDeadline` bounds a request's state calls (300 ms in total): a hung Redis is an
unavailable one, never a wait.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.state.base import SharedState, StateDeadline, StateUnavailable
from gateway.state.memory import MemoryState
from gateway.state.sqlite import SQLiteState

if TYPE_CHECKING:
    from gateway.state.redis import RedisState


def __getattr__(name: str) -> Any:
    # The Redis client library costs a worker about 8 MB of memory: imported only by a deployment that uses it.
    if name == "RedisState":
        from gateway.state.redis import RedisState

        return RedisState
    raise AttributeError(name)


def open_state(redis_url: str = "", sqlite_path: str = "") -> SharedState:
    """Redis when ``redis_url`` is set; else one SQLite file when ``sqlite_path`` is (the workers of one host);
    else in-process."""
    if redis_url:
        from gateway.state.redis import RedisState

        return RedisState(redis_url)
    if sqlite_path:
        return SQLiteState(sqlite_path)
    return MemoryState()


__all__ = ["MemoryState", "RedisState", "SQLiteState", "SharedState", "StateDeadline", "StateUnavailable", "open_state"]
