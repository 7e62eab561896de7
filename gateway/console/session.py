"""Console logins: a random session id in an HTTP-only cookie, mapped here to the API key id that logged in.

The cookie holds 32 random bytes and nothing else; this table holds only their SHA-256 (a memory dump gives no usable
cookie), the key's id (never the key), whether it is an operator key, the session's CSRF token and its expiry. A
session lasts ``CONSOLE_SESSION_TTL_S`` from login; logout ends it at once. The table is per process and bounded
(the oldest session goes first). Behind a load balancer with several instances the console needs sticky sessions.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

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
        return bool(token) and hmac.compare_digest(token.encode("utf-8", "replace"), self.csrf.encode("ascii"))


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()


class ConsoleSessions:
    def __init__(self, ttl_s: float, *, max_sessions: int = MAX_SESSIONS,
                 clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: OrderedDict[str, ConsoleSession] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, key_id: str, operator: bool) -> tuple[str, ConsoleSession]:
        """A new session: (the cookie's value, the session)."""
        session_id = secrets.token_urlsafe(32)
        handle = _digest(session_id)
        session = ConsoleSession(handle, key_id, operator, secrets.token_urlsafe(32), self._clock() + self.ttl_s)
        self._sessions[handle] = session
        self._forget_expired()
        # One key cannot push everyone else's sessions out: past MAX_SESSIONS_PER_KEY its own oldest go first.
        mine = [h for h, s in self._sessions.items() if s.key_id == key_id]
        for old in mine[: max(0, len(mine) - MAX_SESSIONS_PER_KEY)]:
            del self._sessions[old]
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session_id, session

    def get(self, session_id: str | None) -> ConsoleSession | None:
        """The live session of a cookie's value; None when unknown, ended or expired."""
        if not session_id or len(session_id) > 128:
            return None
        handle = _digest(session_id)
        session = self._sessions.get(handle)
        if session is not None and session.expires_at <= self._clock():
            del self._sessions[handle]
            return None
        return session

    def end(self, session_id: str | None) -> ConsoleSession | None:
        session = self.get(session_id)
        if session is not None:
            self._sessions.pop(session.handle, None)
        return session

    def _forget_expired(self) -> None:
        now = self._clock()  # sessions are in creation order, and all last as long: the expired ones come first
        while self._sessions and next(iter(self._sessions.values())).expires_at <= now:
            self._sessions.popitem(last=False)
