"""Who is asking: the request's console session, looked up in the shared state once before its route runs.

Sessions live in the shared state (:mod:`.session`), so any worker of any instance knows every login. When that
state cannot be reached, the request is refused with 503 (HTML for pages, JSON for the live page's actions), never
let through unchecked.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from gateway.api.errors import ApiError, error_response
from gateway.console import pages
from gateway.console.session import COOKIE_NAME, ConsoleSession
from gateway.state.base import StateUnavailable

log = logging.getLogger("gateway.console")

SESSION_SCOPE_KEY = "gateway.console_session"
STATE_DOWN = "The console cannot reach the gateway's shared state (its logins live there): try again shortly."


class SessionLookup:
    """Wraps the console's router: puts the request's session (or None) in its scope for :func:`session_of`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and "/static/" not in scope["path"]:
            session = None
            cookie = Request(scope).cookies.get(COOKIE_NAME)
            if cookie:
                try:
                    session = await scope["app"].state.gateway.console_sessions.get(cookie)
                except StateUnavailable as error:
                    log.error("console: the shared state is unavailable, a request is refused: %s", error)
                    await state_down(scope["path"])(scope, receive, send)
                    return
            scope[SESSION_SCOPE_KEY] = session
        await self.app(scope, receive, send)


def session_of(request: Request) -> ConsoleSession | None:
    """The request's live console session (looked up by :class:`SessionLookup`), or None."""
    return request.scope.get(SESSION_SCOPE_KEY)


def state_down(path: str) -> Response:
    """503: the shared state did not answer."""
    if "/live/calls/" in path:  # the live page's buttons read JSON
        return error_response(ApiError(503, "state_unavailable", "the shared state is unavailable; retry later",
                                       headers={"Retry-After": "5"}))
    return HTMLResponse(pages.message_page("Unavailable", STATE_DOWN), status_code=503, headers={"Retry-After": "5"})
