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


async def json_body(request: Any, limit: int) -> bytes:
    """A request's JSON body, read at the edge: 415 unless it says JSON, 413 past ``limit`` bytes (never buffered
    past it), 408 when it does not arrive in time."""
    from gateway.twilio.webhook import bounded_body

    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "unsupported_media_type", "the body must be JSON (Content-Type: application/json)")
    try:
        body = await bounded_body(request, limit)
    except TimeoutError:
        raise ApiError(408, "body_timeout", "the body did not arrive in time") from None
    if body is None:
        raise ApiError(413, "body_too_large", f"the body must be at most {limit} bytes")
    return body
