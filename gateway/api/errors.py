"""One error shape for the whole HTTP API: ``{"error": {"code": "...", "message": "...", ...}}``."""

from __future__ import annotations

from typing import Any, Mapping

from starlette.responses import JSONResponse


class ApiError(Exception):
    """Raised anywhere in a handler; turned into its JSON response by :func:`error_response`."""

    def __init__(self, status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra


def error_response(error: ApiError) -> JSONResponse:
    body = {"error": {"code": error.code, "message": error.message, **error.extra}}
    return JSONResponse(body, status_code=error.status, headers=error.headers)
