"""Who may open a media stream, and which URL a Twilio signature is checked against.

**Stream credentials.** Every ``<Stream>`` URL the gateway hands to Twilio carries a per-call credential in its
path: ``wss://host/media-stream/<credential>``. Twilio forbids query strings in Stream URLs, not path segments, and
it signs the WebSocket upgrade over the exact URL, so the ``X-Twilio-Signature`` of the upgrade is per call too: a
captured upgrade header is worth one stream of one call, once, for a few minutes. A credential is::

    v1.<kind>.<CallSid>.<expires, unix s>.<nonce>.<MAC>

``kind`` is ``i`` (an inbound call, issued by the signed ``/incoming-call`` webhook) or ``o`` (an outbound call,
issued by the signed answer webhook Twilio fetches when the callee picks up). The MAC is HMAC-SHA256 with the
server's stream secret over everything before it, truncated to 128 bits, so any instance that shares the secret can
verify it without asking anyone. The stream is accepted only if the MAC is right, it has not expired, its nonce was
never used before (:mod:`gateway.state`: a second stream with the same credential is refused, during or after the
first), and Twilio's ``start`` names the same CallSid.

The secret is ``STREAM_SECRET``; unset, it is derived from ``TWILIO_AUTH_TOKEN`` (every instance of one deployment
has that already), and with neither (the keyless embedded demo) a random one is made per process.

**Signature URLs.** Twilio signs the URL it was told to call. The gateway checks signatures against ``PUBLIC_URL``;
``Host`` and ``X-Forwarded-*`` are client-controlled, so they are believed only from a proxy listed in
``TRUSTED_PROXY_IPS``. With neither, a signed request cannot be checked and is refused.

**Secure by default.** :func:`startup_problems` lists what stops ``gateway serve`` with a real model (no auth token,
no public https URL) unless ``INSECURE_DEV_MODE`` is set; :func:`insecure_warnings` is what ``/healthz`` repeats.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import ipaddress
import re
import secrets
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping
from urllib.parse import urlsplit

from gateway.config import Settings
from gateway.twilio.sids import is_call_sid

CREDENTIAL_VERSION = "v1"
INBOUND = "i"
OUTBOUND = "o"
_MAC_BYTES = 16
# v1.<kind>.<CallSid>.<expires>.<nonce>.<mac>: base64url pieces only, so the whole thing is one safe path segment.
_CREDENTIAL = re.compile(r"v1\.([io])\.(CA[0-9a-fA-F]{32})\.([0-9]{1,12})\.([A-Za-z0-9_-]{16,32})\.([A-Za-z0-9_-]{22})")
MAX_CREDENTIAL_CHARS = 160
PEER_SCOPE_KEY = "gateway.peer"  # the ASGI scope key holding the TCP peer's address, before any proxy rewrite


class CredentialRejected(Exception):
    """A stream credential that must not open a stream; the message is safe to log (it never echoes input)."""


@dataclass(frozen=True, slots=True)
class StreamGrant:
    """What a valid credential allows: one stream for ``call_sid``, identified by ``nonce`` for single use."""

    kind: str  # INBOUND or OUTBOUND
    call_sid: str
    nonce: str
    expires_at: int

    @property
    def outbound(self) -> bool:
        return self.kind == OUTBOUND


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def stream_secret(settings: Settings) -> bytes:
    """The MAC key: STREAM_SECRET, else derived from TWILIO_AUTH_TOKEN, else random for this process."""
    if settings.stream_secret:
        return settings.stream_secret.encode("utf-8")
    if settings.twilio_auth_token:
        # A derived key, never the token itself: a MAC that leaked would say nothing about the token.
        return hmac.new(settings.twilio_auth_token.encode("utf-8"), b"gateway stream credential v1", hashlib.sha256).digest()
    return secrets.token_bytes(32)


class StreamCredentials:
    """Issues and verifies stream credentials with one secret; ``clock`` is injectable for tests."""

    def __init__(self, secret: bytes, ttl_s: int, *, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < 16:
            raise ValueError("the stream secret must be at least 16 bytes")
        self._secret = secret
        self.ttl_s = ttl_s
        self._clock = clock

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._secret, body.encode("ascii"), hashlib.sha256).digest()[:_MAC_BYTES])

    def issue(self, call_sid: str, kind: str = INBOUND) -> str:
        if kind not in (INBOUND, OUTBOUND) or not is_call_sid(call_sid):
            raise ValueError("a stream credential needs a kind and a CallSid (CA + 32 hex digits)")
        expires = int(self._clock()) + self.ttl_s
        body = f"{CREDENTIAL_VERSION}.{kind}.{call_sid}.{expires}.{_b64(secrets.token_bytes(12))}"
        return f"{body}.{self._mac(body)}"

    def verify(self, credential: str) -> StreamGrant:
        """The grant of a genuine, unexpired credential; :class:`CredentialRejected` otherwise."""
        if not isinstance(credential, str) or len(credential) > MAX_CREDENTIAL_CHARS:
            raise CredentialRejected("malformed stream credential")
        match = _CREDENTIAL.fullmatch(credential)
        if match is None:
            raise CredentialRejected("malformed stream credential")
        kind, call_sid, expires, nonce, mac = match.groups()
        body = credential[: credential.rindex(".")]
        if not hmac.compare_digest(mac, self._mac(body)):
            raise CredentialRejected("stream credential with a bad MAC")
        if int(expires) < self._clock():
            raise CredentialRejected("expired stream credential")
        return StreamGrant(kind, call_sid, nonce, int(expires))


# ---------------------------------------------------------------------- URLs Twilio signs


@functools.lru_cache(maxsize=64)
def _networks(entries: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def is_trusted_proxy(client_host: str | None, trusted: Iterable[str]) -> bool:
    """True when the peer address is one of TRUSTED_PROXY_IPS (addresses or networks). The networks are parsed
    once per setting: this runs for every new socket (gateway.server.connection_caps)."""
    if not client_host:
        return False
    try:
        address = ipaddress.ip_address(client_host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket reports an IPv4 proxy as ::ffff:a.b.c.d
    return any(address in network for network in _networks(tuple(trusted)))


def _last(headers: Mapping[str, str], name: str) -> str:
    # A proxy appends what it saw (to the value, or as a header line of its own); only the value our trusted proxy
    # added, the last one, is not the client's.
    getlist = getattr(headers, "getlist", None)
    values = getlist(name) if getlist is not None else [headers.get(name, "")]
    return ",".join(values).split(",")[-1].strip()


def signature_base(settings: Settings, headers: Mapping[str, str], client_host: str | None) -> str | None:
    """``https://host`` to check a Twilio signature against, or None when nothing trustworthy says it.

    PUBLIC_URL wins. Else X-Forwarded-Proto/Host, but only from a trusted proxy. ``Host`` alone is never used:
    a signature Twilio made for another host or app of the same account would pass."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    if settings.trusted_proxy_ips and is_trusted_proxy(client_host, settings.trusted_proxy_ips):
        proto, host = _last(headers, "x-forwarded-proto"), _last(headers, "x-forwarded-host")
        if proto in ("http", "https") and host and re.fullmatch(r"[A-Za-z0-9.:\[\]-]{1,255}", host):
            return f"{proto}://{host}"
    return None


def twiml_base(settings: Settings, headers: Mapping[str, str], client_host: str | None, request_scheme: str,
               request_host: str) -> str:
    """``https://host`` to put in TwiML: the signature base when there is one, else the request's own host
    (only ever used unsigned, in development: a forged Host then only misdirects the forger's own call)."""
    trusted = signature_base(settings, headers, client_host)
    if trusted is not None:
        return trusted
    scheme = "https" if request_scheme in ("https", "wss") else "http"
    return f"{scheme}://{request_host}"


# ---------------------------------------------------------------------- secure by default


def _is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def startup_problems(settings: Settings) -> list[str]:
    """What must be set before a real model may take calls (empty: nothing). The embedded model needs nothing."""
    if settings.uses_embedded_model:
        return []
    problems = []
    if not settings.twilio_auth_token:
        problems.append("TWILIO_AUTH_TOKEN is not set: without it anyone who finds this host can open model "
                        "sessions billed to your key (Twilio console > Account > API keys & tokens > Auth token)")
    if not settings.public_url:
        problems.append("PUBLIC_URL is not set: set it to the https:// address Twilio reaches this gateway at "
                        "(signatures are checked against it)")
    elif urlsplit(settings.public_url).scheme != "https" and not _is_loopback_url(settings.public_url):
        problems.append("PUBLIC_URL must be https:// (Twilio streams only to wss://)")
    return problems


def insecure_warnings(settings: Settings) -> list[str]:
    """The warnings ``/healthz`` repeats while the gateway runs with INSECURE_DEV_MODE despite a problem."""
    if not settings.insecure_dev_mode:
        return []
    return [f"INSECURE_DEV_MODE: {problem}" for problem in startup_problems(settings)]


def unsigned_streams_allowed(settings: Settings) -> bool:
    """May a stream connect without a credential (``/media-stream``)? Only with no auth token configured, and
    then only for the free embedded model or an explicit INSECURE_DEV_MODE: a demo, never production."""
    if settings.twilio_auth_token:
        return False
    return settings.uses_embedded_model or settings.insecure_dev_mode
