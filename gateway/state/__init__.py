"""State shared by every instance of the gateway, behind one small interface: :class:`SharedState`.

Today it holds the single-use claims of stream credentials (a credential opens one stream, once, whichever
instance the stream lands on). Two implementations, chosen by ``REDIS_URL`` (:func:`open_state`):

* :class:`MemoryState` (the default): in-process, bounded, nothing to install. One process only.
* :class:`RedisState`: ``SET key NX PX ttl`` in Redis, shared by every instance behind a load balancer.

When the shared state cannot be reached, :class:`StateUnavailable` is raised and the caller fails closed: a
stream whose credential cannot be claimed is refused (Twilio's ``<Connect>`` then goes on to the next verb).
"""

from __future__ import annotations

from gateway.state.base import SharedState, StateUnavailable
from gateway.state.memory import MemoryState
from gateway.state.redis import RedisState


def open_state(redis_url: str = "") -> SharedState:
    """Redis when ``redis_url`` is set, else in-process."""
    if redis_url:
        return RedisState(redis_url)
    return MemoryState()


__all__ = ["MemoryState", "RedisState", "SharedState", "StateUnavailable", "open_state"]
