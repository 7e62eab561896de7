"""Reading a Twilio webhook at the edge: a bounded form body, read in bounded time, and the signature check.

Used by every route Twilio calls (``/incoming-call``, ``/twilio/answer``, ``/twilio/call-status``), so the rules
live once. The URL a signature is checked against comes from :func:`gateway.twilio.security.signature_base`
(``PUBLIC_URL``, or a trusted proxy's ``X-Forwarded-*``), never from the client's own ``Host``.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import parse_qsl

from starlette.requests import HTTPConnection, Request
from twilio.request_validator import RequestValidator

from gateway.config import Settings
from gateway.twilio.security import PEER_SCOPE_KEY, StreamCredentials, signature_base, twiml_base
from gateway.twilio.sids import is_call_sid
from gateway.twilio.twiml import MEDIA_STREAM_PATH, connect_stream_twiml, stream_url

log = logging.getLogger("gateway.twilio.webhook")

MAX_FORM_FIELDS = 100  # Twilio's voice webhooks carry a few dozen
MAX_FIELD_CHARS = 4096
BODY_TIMEOUT_S = 10.0  # a client that trickles its body is not Twilio


class WebhookRejected(Exception):
    """The request is not an acceptable Twilio webhook; answer ``status`` with ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BodyTooLarge(Exception):
    """A body past its route's limit, raised by a route that has no refusal of its own to answer with: the app
    answers 413 with a short text (``gateway.server.app``)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body too large (at most {limit} bytes)")


def _client_host(connection: HTTPConnection) -> str | None:
    # The socket's own peer (kept before X-Forwarded-For rewrites the client): only it says "a trusted proxy".
    peer = connection.scope.get(PEER_SCOPE_KEY)
    if peer is not None:
        return peer
    return connection.client.host if connection.client else None


def signed_base(connection: HTTPConnection, settings: Settings) -> str | None:
    """``https://host`` Twilio's signatures are made over, or None when nothing trustworthy says it."""
    return signature_base(settings, connection.headers, _client_host(connection))


def public_base(connection: HTTPConnection, settings: Settings) -> str:
    """``https://host`` to put in TwiML (the signed base, else the request's own host, for development)."""
    return twiml_base(settings, connection.headers, _client_host(connection), connection.url.scheme,
                      connection.url.netloc)


def stream_twiml(connection: HTTPConnection, settings: Settings, credentials: StreamCredentials, call_sid: str,
                 kind: str, parameters: dict[str, str]) -> str:
    """``<Connect><Stream url="wss://host/media-stream/<credential>">``: a stream for this call only, once."""
    path = f"{MEDIA_STREAM_PATH}/{credentials.issue(call_sid, kind)}"
    return connect_stream_twiml(stream_url(public_base(connection, settings), path), parameters,
                                fallback_message=settings.fallback_message)


async def bounded_body(request: Request, limit: int, timeout_s: float = BODY_TIMEOUT_S) -> bytes | None:
    """The request body, or None as soon as it is known to exceed ``limit`` (never buffered past it).
    Raises TimeoutError when it does not arrive within ``timeout_s``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async with asyncio.timeout(timeout_s):
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return None
    return bytes(body)


def parse_webhook_form(body: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as Twilio posts it; WebhookRejected(400) past the bounds.
    A repeated name keeps its last value (Twilio never repeats one)."""
    try:
        pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        raise WebhookRejected(400, f"more than {MAX_FORM_FIELDS} form fields") from None
    if any(len(name) > MAX_FIELD_CHARS or len(value) > MAX_FIELD_CHARS for name, value in pairs):
        raise WebhookRejected(400, f"a form field is longer than {MAX_FIELD_CHARS} characters")
    return dict(pairs)


async def read_call_webhook(
    request: Request, settings: Settings, validator: RequestValidator | None, limit: int
) -> tuple[dict[str, str], str]:
    """A Twilio voice webhook about one call: its parameters and its CallSid (WebhookRejected 400 if malformed)."""
    params = await read_twilio_webhook(request, settings, validator, limit)
    call_sid = params.get("CallSid", "")
    if not is_call_sid(call_sid):
        raise WebhookRejected(400, "CallSid missing or malformed")
    return params, call_sid


async def read_twilio_webhook(
    request: Request, settings: Settings, validator: RequestValidator | None, limit: int
) -> dict[str, str]:
    """The webhook's parameters (form body for POST, query for GET), signature-checked when a validator is set."""
    params: dict[str, str] = parse_webhook_form(request.url.query.encode("utf-8"))
    if request.method == "POST":
        try:
            body = await bounded_body(request, limit)
        except TimeoutError:
            raise WebhookRejected(408, "request body not received in time") from None
        if body is None:
            raise WebhookRejected(413, "request body too large")
        # Twilio posts application/x-www-form-urlencoded; parse it here rather than pull in a multipart parser.
        params = parse_webhook_form(body)
    if validator is not None:
        base = signed_base(request, settings)
        if base is None:
            log.warning("rejected %s: a signature cannot be checked without PUBLIC_URL (or a trusted proxy)",
                        request.url.path)
            raise WebhookRejected(403, "the gateway cannot check Twilio signatures: PUBLIC_URL is not set")
        url = base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        signed_params = params if request.method == "POST" else {}
        if not validator.validate(url, signed_params, request.headers.get("x-twilio-signature", "")):
            log.warning("rejected %s with a bad X-Twilio-Signature", request.url.path)
            raise WebhookRejected(403, "invalid Twilio signature")
    return params
