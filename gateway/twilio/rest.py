"""Twilio's REST API: the only module that talks to it (place a call, hang up, redirect with TwiML, and the
look-ups ``gateway doctor`` makes: the account, its phone numbers and verified caller IDs).

It uses the official ``twilio`` library's synchronous client, run in a worker thread (:func:`asyncio.to_thread`)
so the event loop, which carries every call's audio, never waits on Twilio. Every failure comes out as one typed
error, :class:`TwilioError`, carrying Twilio's error code, HTTP status and message.

``TWILIO_API_BASE_URL`` points the client somewhere other than ``https://api.twilio.com`` (the tests' local
fake): :func:`_rebasing_http_client`'s client rewrites the scheme and host of every request.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:  # the twilio client (and requests under it) cost a worker about 6 MB: loaded on first use
    from twilio.rest import Client

from gateway.config import DEFAULT_TWILIO_API_BASE_URL, Settings

log = logging.getLogger("gateway.twilio.rest")

STATUS_CALLBACK_EVENTS = ("initiated", "ringing", "answered", "completed")
# machine_detection of POST /calls -> Twilio's MachineDetection. "voicemail" waits for the end of the greeting
# (the beep) so the message is recorded whole; "hangup" only needs to know it is a machine, so it answers sooner.
MACHINE_DETECTION_MODES = {"hangup": "Enable", "voicemail": "DetectMessageEnd"}
REQUEST_TIMEOUT_S = 10.0
MAX_TWIML_CHARS = 4000  # Twilio's limit for the Twiml parameter


class TwilioError(Exception):
    """A Twilio REST call failed. ``code`` is Twilio's error code (21211, ...) when it gave one;
    ``status`` the HTTP status (0 when Twilio was not reached at all)."""

    def __init__(self, message: str, *, code: int | None = None, status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class TwilioNotConfigured(TwilioError):
    """TWILIO_ACCOUNT_SID or TWILIO_AUTH_TOKEN is missing."""


@dataclass(frozen=True, slots=True)
class PlacedCall:
    call_sid: str
    status: str


@dataclass(frozen=True, slots=True)
class AccountInfo:
    status: str  # "active", "suspended" or "closed"
    type: str  # "Full" or "Trial"


@dataclass(frozen=True, slots=True)
class AccountNumber:
    """A phone number of the account, and where Twilio sends its incoming calls."""

    phone_number: str
    voice_url: str
    voice_method: str


@lru_cache(maxsize=1)
def _rebasing_http_client() -> type:
    from twilio.http.http_client import TwilioHttpClient

    class RebasingHttpClient(TwilioHttpClient):
        """Sends requests meant for ``https://*.twilio.com`` to ``base_url`` instead, path and query unchanged."""

        def __init__(self, base_url: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            parts = urlsplit(base_url)
            self._scheme, self._netloc = parts.scheme, parts.netloc

        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            parts = urlsplit(url)
            if (parts.hostname or "").endswith("twilio.com"):
                url = urlunsplit((self._scheme, self._netloc, parts.path, parts.query, parts.fragment))
            return super().request(method, url, *args, **kwargs)

    return RebasingHttpClient


def _twilio_error(error: Exception) -> TwilioError:
    from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException

    if isinstance(error, TwilioRestException):
        return TwilioError(str(error.msg), code=error.code, status=error.status)
    if isinstance(error, TwilioServiceException):
        return TwilioError(error.detail or error.title, code=error.code, status=error.status)
    if isinstance(error, TwilioException):
        return TwilioError(str(error))
    # requests' ConnectionError / Timeout and the like: Twilio was not reached or did not answer.
    return TwilioError(f"Twilio REST API unreachable: {type(error).__name__}: {error}")


class TwilioRest:
    """Async facade over the twilio client. Construct with :meth:`from_settings`; check :attr:`configured`."""

    def __init__(self, account_sid: str, auth_token: str, api_base_url: str = DEFAULT_TWILIO_API_BASE_URL,
                 *, timeout: float = REQUEST_TIMEOUT_S) -> None:
        self.account_sid = account_sid
        self._client: Client | None = None
        if account_sid and auth_token:
            from twilio.http.http_client import TwilioHttpClient
            from twilio.rest import Client

            if api_base_url.rstrip("/") == DEFAULT_TWILIO_API_BASE_URL:
                http_client = TwilioHttpClient(timeout=timeout)
            else:
                http_client = _rebasing_http_client()(api_base_url, timeout=timeout)
            # Explicit edge/region would change the host name; the rebasing client ignores it anyway.
            self._client = Client(account_sid, auth_token, account_sid=account_sid, http_client=http_client)

    @classmethod
    def from_settings(cls, settings: Settings, *, timeout: float = REQUEST_TIMEOUT_S) -> "TwilioRest":
        """``timeout``: seconds each request may take (``gateway doctor`` passes its own ``--timeout``)."""
        return cls(settings.twilio_account_sid, settings.twilio_auth_token, settings.twilio_api_base_url,
                   timeout=timeout)

    @property
    def configured(self) -> bool:
        """True when TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are both set."""
        return self._client is not None

    def _require(self) -> Client:
        if self._client is None:
            raise TwilioNotConfigured("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN must be set to use Twilio's REST API")
        return self._client

    async def _run(self, what: str, function: Any, /, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(function, **kwargs)
        except Exception as error:  # every failure becomes one typed error (raised below)
            mapped = _twilio_error(error)
            log.warning("Twilio %s failed: status=%s code=%s %s", what, mapped.status, mapped.code, mapped.message)
            raise mapped from error

    async def place_call(self, *, to: str, from_: str, answer_url: str, status_callback: str,
                         machine_detection: str = "none", time_limit_s: int | None = None) -> PlacedCall:
        """``calls.create`` with ``url=answer_url`` (Twilio fetches the call's TwiML there, signed, once the callee
        answers); status callbacks for every progress event.

        With answering-machine detection, it runs asynchronously (the call connects to the TwiML at once, so a
        human does not wait) and its result goes to ``status_callback`` too, as ``AnsweredBy``.
        """
        kwargs: dict[str, Any] = dict(
            to=to,
            from_=from_,
            url=answer_url,
            method="POST",
            status_callback=status_callback,
            status_callback_event=list(STATUS_CALLBACK_EVENTS),
            status_callback_method="POST",
        )
        if time_limit_s:
            kwargs["time_limit"] = time_limit_s
        if machine_detection in MACHINE_DETECTION_MODES:
            kwargs.update(
                machine_detection=MACHINE_DETECTION_MODES[machine_detection],
                async_amd="true",
                async_amd_status_callback=status_callback,
                async_amd_status_callback_method="POST",
            )
        call = await self._run("calls.create", self._require().calls.create, **kwargs)
        return PlacedCall(call_sid=call.sid, status=call.status or "queued")

    async def hangup(self, call_sid: str) -> str:
        """End the call whatever its state (``status=completed`` also cancels a queued or ringing call).
        Returns the status Twilio reports."""
        call = await self._run("hangup", self._require().calls(call_sid).update, status="completed")
        return call.status or "completed"

    async def update_twiml(self, call_sid: str, twiml: str) -> str:
        """Redirect a live call to new TwiML (transfer with ``<Dial>``, voicemail with ``<Say>``). Any
        ``<Connect><Stream>`` in progress ends: Twilio closes the media stream. Returns the call's status."""
        if len(twiml) > MAX_TWIML_CHARS:
            raise TwilioError(f"TwiML is {len(twiml)} characters, Twilio accepts at most {MAX_TWIML_CHARS}")
        call = await self._run("redirect", self._require().calls(call_sid).update, twiml=twiml)
        return call.status or ""

    async def account(self) -> AccountInfo:
        """The account of TWILIO_ACCOUNT_SID, fetched with the auth token: a TwilioError (20003) if they do not match."""
        account = await self._run("account lookup", self._require().api.v2010.accounts(self.account_sid).fetch)
        return AccountInfo(status=account.status or "", type=account.type or "")

    async def phone_numbers(self) -> list[AccountNumber]:
        """The account's own phone numbers (bought or ported), with their voice webhooks."""
        numbers = await self._run("phone number lookup", self._require().incoming_phone_numbers.list, limit=1000)
        return [AccountNumber(n.phone_number or "", n.voice_url or "", n.voice_method or "") for n in numbers]

    async def verified_caller_ids(self) -> list[str]:
        """Numbers verified on the account: not its own, but usable as the caller ID of its calls."""
        caller_ids = await self._run("caller ID lookup", self._require().outgoing_caller_ids.list, limit=1000)
        return [c.phone_number or "" for c in caller_ids]

    def close(self) -> None:
        if self._client is not None:
            session = getattr(self._client.http_client, "session", None)
            if session is not None:
                session.close()
