"""Console logins: a random session id in an HTTP-only cookie, mapped in the shared state to the API key id that
logged in.

The cookie holds 32 random bytes and nothing else; the shared state (:mod:`gateway.state`: in-process, one SQLite
file for the workers of one host, or Redis for every instance) holds only their SHA-256 (a dump of it gives no
usable cookie), the key's id (never the key), whether it is an operator key, the session's CSRF token and its
expiry. So any worker of any instance accepts a login made on another, with no sticky sessions. A session lasts
``CONSOLE_SESSION_TTL_S`` from login; logout ends it everywhere at once (the next request on any instance finds no
session, and an open live stream ends at its next check). Sessions are bounded: at most
:data:`MAX_SESSIONS_PER_KEY` per API key (its own oldest go first) and :data:`MAX_SESSIONS` in all.

When the shared state cannot be reached, :class:`gateway.state.StateUnavailable` comes out of every method: the
console answers 503 (it never lets a request through unchecked).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable

from gateway.state.base import SharedState
from gateway.state.memory import MemoryState

COOKIE_NAME = "gateway_console"
COOKIE_PATH = "/console"
MAX_SESSIONS = 10_000
MAX_SESSIONS_PER_KEY = 10  # logins of one API key kept at once


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    handle: str  # the SHA-256 of the cookie's id: names the session (to end its live streams), never the cookie
    key_id: str
    operator: bool
    csrf: str
    expires_at: float

    def csrf_ok(self, token: str | None) -> bool:
        if not token:
            return False
        return hmac.compare_digest(token.encode("utf-8", "replace"), self.csrf.encode("ascii"))


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()


def _parse(handle: str, body: dict[str, Any] | None) -> ConsoleSession | None:
    """A stored session, checked: what another process wrote is read as untrusted data."""
    if body is None:
        return None
    key_id, operator, csrf, expires_at = (body.get(name) for name in ("key_id", "operator", "csrf", "expires_at"))
    if not (isinstance(key_id, str) and isinstance(operator, bool) and isinstance(csrf, str) and csrf.isascii()
            and isinstance(expires_at, (int, float))):
        return None
    return ConsoleSession(handle, key_id, operator, csrf, float(expires_at))


class ConsoleSessions:
    """See the module docstring. ``shared`` is the gateway's shared state (in-process when not given)."""

    def __init__(self, ttl_s: float, *, shared: SharedState | None = None, max_sessions: int = MAX_SESSIONS,
                 clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.shared: SharedState = shared if shared is not None else MemoryState()
        self._clock = clock

    async def create(self, key_id: str, operator: bool) -> tuple[str, ConsoleSession]:
        """A new session: (the cookie's value, the session)."""
        session_id = secrets.token_urlsafe(32)
        session = ConsoleSession(_digest(session_id), key_id, operator, secrets.token_urlsafe(32),
                                 self._clock() + self.ttl_s)
        body = {"key_id": key_id, "operator": operator, "csrf": session.csrf, "expires_at": session.expires_at}
        await self.shared.put_session(session.handle, key_id, body, self.ttl_s, per_key=MAX_SESSIONS_PER_KEY,
                                      limit=self.max_sessions)
        return session_id, session

    async def get(self, session_id: str | None) -> ConsoleSession | None:
        """The live session of a cookie's value; None when unknown, ended or expired."""
        if not session_id or len(session_id) > 128:
            return None
        handle = _digest(session_id)
        session = _parse(handle, await self.shared.get_session(handle))
        # The state's TTL ends it too; this check holds whatever the state's clock says.
        return session if session is not None and session.expires_at > self._clock() else None

    async def end(self, session_id: str | None) -> ConsoleSession | None:
        session = await self.get(session_id)
        if session is not None:
            await self.shared.drop_session(session.handle, session.key_id)
        return session
