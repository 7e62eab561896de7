"""Reading a Twilio webhook at the edge: a bounded form body, the public URL, the signature check.

Used by every route Twilio calls (``/incoming-call``, ``/twilio/call-status``), so the rules live once.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

from starlette.requests import HTTPConnection, Request
from twilio.request_validator import RequestValidator

from gateway.config import Settings
from gateway.twilio.twiml import public_base_url

log = logging.getLogger("gateway.twilio.webhook")


class WebhookRejected(Exception):
    """The request is not an acceptable Twilio webhook; answer ``status`` with ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def public_base(connection: HTTPConnection, settings: Settings) -> str:
    """``https://host`` Twilio reaches us at (PUBLIC_URL, else X-Forwarded-*, else the request)."""
    return public_base_url(settings.public_url, connection.headers, connection.url.scheme, connection.url.netloc)


async def bounded_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to exceed ``limit`` (never buffered past it)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def read_twilio_webhook(
    request: Request, settings: Settings, validator: RequestValidator | None, limit: int
) -> dict[str, str]:
    """The webhook's parameters (form body for POST, query for GET), signature-checked when a validator is set."""
    params: dict[str, str] = dict(request.query_params)
    if request.method == "POST":
        body = await bounded_body(request, limit)
        if body is None:
            raise WebhookRejected(413, "request body too large")
        # Twilio posts application/x-www-form-urlencoded; parse it here rather than pull in a multipart parser.
        params = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    if validator is not None:
        url = public_base(request, settings) + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        signed_params = params if request.method == "POST" else {}
        if not validator.validate(url, signed_params, request.headers.get("x-twilio-signature", "")):
            log.warning("rejected %s with a bad X-Twilio-Signature", request.url.path)
            raise WebhookRejected(403, "invalid Twilio signature")
    return params
