"""Twilio's side of answering a call, before the media stream: the signed webhook, the TwiML, the signed upgrade.

A gateway that checks signatures (``TWILIO_AUTH_TOKEN``) admits a media stream only with the per-call URL its
webhook answered (``wss://host/media-stream/<credential>``) and Twilio's ``X-Twilio-Signature`` over that URL. So
the replay phone, given the auth token, does what Twilio does for an inbound call:

1. ``POST /incoming-call`` with the call's form fields (CallSid, AccountSid, From, To, ...), signed over the
   gateway's public URL;
2. reads ``<Connect><Stream url=...>`` and its ``<Parameter>``s from the TwiML answer;
3. opens the WebSocket at that URL's path (on the address it was told to call: the public host of a test gateway
   is usually not resolvable), signing the upgrade over the URL exactly as the TwiML gave it, and sends the
   parameters back in ``start.customParameters``.

:class:`TwilioAccount` says which token signs and which public URL the gateway believes it is at.
"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from twilio.request_validator import RequestValidator

WEBHOOK_PATH = "/incoming-call"
WEBHOOK_TIMEOUT_S = 10.0


class DialError(Exception):
    """The gateway did not answer the webhook with a media stream (refused, busy, or not a gateway)."""


@dataclass(frozen=True, slots=True)
class TwilioAccount:
    """What signs like Twilio: the auth token, and the https base the gateway is configured with (``PUBLIC_URL``;
    empty: the address the phone calls)."""

    auth_token: str
    public_url: str = ""
    account_sid: str = ""


@dataclass(frozen=True, slots=True)
class StreamInvite:
    """Where to open the media stream, with which headers, and the parameters to send back in ``start``."""

    connect_url: str
    headers: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)


def _http_base(ws_url: str) -> str:
    parts = urlsplit(ws_url)
    return urlunsplit(("https" if parts.scheme == "wss" else "http", parts.netloc, "", "", ""))


def stream_from_twiml(twiml: str) -> tuple[str, dict[str, str]]:
    """The ``<Stream url>`` and its ``<Parameter>``s of a ``<Connect>`` answer; DialError for anything else."""
    try:
        root = ElementTree.fromstring(twiml)
    except ElementTree.ParseError as error:
        raise DialError(f"the webhook did not answer TwiML: {error}") from None
    stream = root.find("./Connect/Stream")
    if stream is None or not stream.get("url"):
        said = " ".join(say.text or "" for say in root.iter("Say")).strip()
        raise DialError("the webhook answered no <Connect><Stream>" + (f" (it said: {said!r})" if said else ""))
    return stream.get("url", ""), {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}


def sign_upgrade(account: TwilioAccount, stream_url: str) -> dict[str, str]:
    """Twilio's upgrade header: the signature over the exact wss:// URL, with no parameters."""
    return {"X-Twilio-Signature": RequestValidator(account.auth_token).compute_signature(stream_url, {})}


async def answer_inbound(ws_url: str, account: TwilioAccount, *, call_sid: str, account_sid: str,
                         from_: str = "+15005550006", to: str = "+15005550001") -> StreamInvite:
    """Ring the gateway whose Media Stream endpoint is at ``ws_url`` (its host is what is called) as Twilio does
    for an inbound call; the invitation to its media stream."""
    import requests  # the twilio library's own HTTP client; no extra dependency

    base = _http_base(ws_url)
    public = (account.public_url or base).rstrip("/")
    form = {"CallSid": call_sid, "AccountSid": account_sid, "From": from_, "To": to, "Direction": "inbound",
            "CallStatus": "ringing", "ApiVersion": "2010-04-01"}
    signature = RequestValidator(account.auth_token).compute_signature(public + WEBHOOK_PATH, form)

    def post() -> requests.Response:
        return requests.post(base + WEBHOOK_PATH, data=form, headers={"X-Twilio-Signature": signature},
                             timeout=WEBHOOK_TIMEOUT_S)

    try:
        response = await asyncio.to_thread(post)
    except requests.RequestException as error:
        raise DialError(f"the webhook {base + WEBHOOK_PATH} could not be reached: {error}") from None
    if response.status_code != 200:
        raise DialError(f"the webhook answered HTTP {response.status_code}: {response.text[:200]!r}")
    stream_url, parameters = stream_from_twiml(response.text)
    # Open the socket where the phone was told to call, at the path the TwiML gave; sign the URL as given.
    ws_parts, stream_parts = urlsplit(ws_url), urlsplit(stream_url)
    connect_url = urlunsplit((ws_parts.scheme, ws_parts.netloc, stream_parts.path, "", ""))
    return StreamInvite(connect_url, sign_upgrade(account, stream_url), parameters)
