"""A stand-in for Twilio's REST API on 127.0.0.1, for the real ``twilio`` library to talk to.

It serves ``POST /2010-04-01/Accounts/{AC}/Calls.json`` (create) and ``POST .../Calls/{CA}.json`` (update:
``Status=completed`` or ``Twiml``), and the look-ups ``gateway doctor`` makes: ``GET /2010-04-01/Accounts/{AC}.json``,
``.../IncomingPhoneNumbers.json`` (``fake.numbers``) and ``.../OutgoingCallerIds.json`` (``fake.verified_caller_ids``).
It checks HTTP Basic auth (account SID + auth token), records every request with its form fields, answers
Twilio-shaped JSON, and can be told to fail with a Twilio error. It can also play Twilio's part in the other
direction: post signed status callbacks to the URL a call was created with.

    async with start_fake_twilio() as fake:
        settings: twilio_account_sid=fake.account_sid, twilio_auth_token=fake.auth_token,
                  twilio_api_base_url=fake.base_url
        ...
        await fake.answer(gateway_http_url, call_sid)  # the callee picks up: Twilio asks the call's Url for TwiML
        call = fake.calls[call_sid]; call.stream_url, call.stream_parameters  # what to "dial"
        await fake.send_status(gateway_http_url, call_sid, CallStatus="ringing")
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import itertools
import secrets
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from twilio.request_validator import RequestValidator

from gateway.server.runner import running_app

from .helpers import eventually

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "fake-auth-token-0123456789abcdef"


@dataclass
class FakeRequest:
    method: str
    path: str
    form: dict[str, list[str]]
    authorization: tuple[str, str] | None  # (username, password) from Basic auth, None if absent or not Basic

    def one(self, name: str) -> str | None:
        values = self.form.get(name)
        return values[0] if values else None


@dataclass
class FakeCall:
    sid: str
    to: str
    from_: str
    twiml: str
    status: str
    form: dict[str, list[str]]
    updates: list[dict[str, list[str]]] = field(default_factory=list)
    _sequence: Any = field(default_factory=itertools.count)

    @property
    def status_callback(self) -> str:
        return (self.form.get("StatusCallback") or [""])[0]

    @property
    def url(self) -> str:
        """The answer URL Twilio fetches the call's TwiML from (``calls.create(url=...)``)."""
        return (self.form.get("Url") or [""])[0]

    @property
    def stream_url(self) -> str:
        return self._stream().get("url", "")

    @property
    def stream_parameters(self) -> dict[str, str]:
        """The ``<Parameter>``s of the ``<Stream>``: what Twilio puts in ``start.customParameters``."""
        if not self.twiml:
            return {}
        stream = ElementTree.fromstring(self.twiml).find("./Connect/Stream")
        if stream is None:
            return {}
        return {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}

    def _stream(self) -> dict[str, str]:
        if not self.twiml:
            return {}
        stream = ElementTree.fromstring(self.twiml).find("./Connect/Stream")
        return dict(stream.attrib) if stream is not None else {}

    @property
    def redirected_twiml(self) -> list[str]:
        return [update["Twiml"][0] for update in self.updates if "Twiml" in update]


class FakeTwilio:
    def __init__(self, account_sid: str = ACCOUNT_SID, auth_token: str = AUTH_TOKEN) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.base_url = ""
        self.requests: list[FakeRequest] = []
        self.calls: dict[str, FakeCall] = {}
        self._failures: list[tuple[int, int, str]] = []
        # Set to a gateway's URL to post the "initiated" status callback before answering calls.create (Twilio can).
        self.early_callback_to = ""
        self._background: set[asyncio.Task[Any]] = set()
        self.account_status, self.account_type = "active", "Full"
        self.numbers: dict[str, str] = {}  # the account's phone numbers -> their voice webhook URL
        self.verified_caller_ids: list[str] = []
        self.app = Starlette(routes=[
            Route("/2010-04-01/Accounts/{account}/Calls.json", self._create, methods=["POST"]),
            Route("/2010-04-01/Accounts/{account}/Calls/{sid}.json", self._update, methods=["POST"]),
            Route("/2010-04-01/Accounts/{account}.json", self._account, methods=["GET"]),
            Route("/2010-04-01/Accounts/{account}/IncomingPhoneNumbers.json", self._numbers, methods=["GET"]),
            Route("/2010-04-01/Accounts/{account}/OutgoingCallerIds.json", self._caller_ids, methods=["GET"]),
        ])

    # ---- controls
    def fail_next(self, status: int = 400, code: int = 21211, message: str = "Invalid 'To' Phone Number") -> None:
        """The next request is answered with this Twilio error (legacy JSON shape: code, message, status)."""
        self._failures.append((status, code, message))

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        return await eventually(predicate, timeout, "fake Twilio: condition", 0.01)

    async def send_status(self, gateway_url: str, call_sid: str, *, signature: str | None = None,
                          **params: str) -> httpx.Response:
        """Post a status callback as Twilio would: to the call's StatusCallback URL (its path and query, on
        ``gateway_url``), signed over that public URL with the auth token."""
        call = self.calls[call_sid]
        form = {"AccountSid": self.account_sid, "CallSid": call_sid, "To": call.to, "From": call.from_,
                "Direction": "outbound-api", "ApiVersion": "2010-04-01",
                "SequenceNumber": str(next(call._sequence)), **params}
        return await self._post_signed(gateway_url, call.status_callback, form, signature)

    async def answer(self, gateway_url: str, call_sid: str, *, signature: str | None = None,
                     **params: str) -> httpx.Response:
        """The callee answers: ask the call's Url for its TwiML, as Twilio does (signed POST), and keep the TwiML
        (``call.twiml``, ``call.stream_url``, ``call.stream_parameters``)."""
        call = self.calls[call_sid]
        form = {"AccountSid": self.account_sid, "CallSid": call_sid, "To": call.to, "From": call.from_,
                "Direction": "outbound-api", "ApiVersion": "2010-04-01", "CallStatus": "in-progress", **params}
        response = await self._post_signed(gateway_url, call.url, form, signature)
        if response.status_code == 200:
            call.twiml = response.text
            call.status = "in-progress"
        return response

    async def _post_signed(self, gateway_url: str, public: str, form: dict[str, str],
                           signature: str | None) -> httpx.Response:
        """POST ``form`` to ``public``'s path and query on ``gateway_url``, signed over ``public``."""
        parts = urlsplit(public)
        if signature is None:
            signature = RequestValidator(self.auth_token).compute_signature(public, form)
        target = gateway_url + parts.path + (f"?{parts.query}" if parts.query else "")
        async with httpx.AsyncClient() as client:
            return await client.post(target, content=urlencode(form),
                                     headers={"content-type": "application/x-www-form-urlencoded",
                                              "x-twilio-signature": signature})

    # ---- the REST API
    def _twilio_error(self, status: int, code: int, message: str) -> JSONResponse:
        return JSONResponse({"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
                             "status": status}, status_code=status)

    async def _record(self, request: Request) -> tuple[FakeRequest, JSONResponse | None]:
        body = (await request.body()).decode()
        form = parse_qs(body, keep_blank_values=True)
        authorization = None
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            with contextlib.suppress(ValueError):
                user, _, password = base64.b64decode(encoded).decode().partition(":")
                authorization = (user, password)
        recorded = FakeRequest(request.method, request.url.path, form, authorization)
        self.requests.append(recorded)
        if authorization != (self.account_sid, self.auth_token) or request.path_params["account"] != self.account_sid:
            return recorded, self._twilio_error(401, 20003, "Authenticate")
        if self._failures:
            return recorded, self._twilio_error(*self._failures.pop(0))
        return recorded, None

    def _call_json(self, call: FakeCall) -> dict[str, Any]:
        now = email.utils.formatdate(usegmt=True)
        return {
            "sid": call.sid, "account_sid": self.account_sid, "to": call.to, "to_formatted": call.to,
            "from": call.from_, "from_formatted": call.from_, "status": call.status, "direction": "outbound-api",
            "date_created": now, "date_updated": now, "start_time": None, "end_time": None, "duration": None,
            "price": None, "price_unit": "USD", "answered_by": None, "api_version": "2010-04-01",
            "parent_call_sid": None, "phone_number_sid": None, "forwarded_from": None, "group_sid": None,
            "caller_name": None, "queue_time": "0", "trunk_sid": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Calls/{call.sid}.json", "subresource_uris": {},
        }

    async def _create(self, request: Request) -> JSONResponse:
        recorded, failure = await self._record(request)
        if failure is not None:
            return failure
        form = recorded.form
        for required in ("To", "From"):
            if not form.get(required):
                return self._twilio_error(400, 21201, f"No '{required}' number is specified")
        if not (form.get("Twiml") or form.get("Url") or form.get("ApplicationSid")):
            return self._twilio_error(400, 21205, "Url parameter is required")
        call = FakeCall(sid="CA" + secrets.token_hex(16), to=form["To"][0], from_=form["From"][0],
                        twiml=(form.get("Twiml") or [""])[0], status="queued", form=form)
        self.calls[call.sid] = call
        if self.early_callback_to:
            task = asyncio.create_task(self.send_status(self.early_callback_to, call.sid, CallStatus="initiated"))
            self._background.add(task)
            await asyncio.sleep(0.5)  # the callback is in flight before the API client has its answer
        return JSONResponse(self._call_json(call), status_code=201)

    async def _account(self, request: Request) -> JSONResponse:
        _, failure = await self._record(request)
        return failure or JSONResponse({"sid": self.account_sid, "friendly_name": "Fake account",
                                        "status": self.account_status, "type": self.account_type,
                                        "uri": f"/2010-04-01/Accounts/{self.account_sid}.json"})

    def _page(self, key: str, items: list[dict[str, Any]]) -> JSONResponse:
        return JSONResponse({key: items, "start": 0, "end": max(0, len(items) - 1), "page": 0, "page_size": 1000,
                             "first_page_uri": "", "next_page_uri": None, "previous_page_uri": None, "uri": ""})

    async def _numbers(self, request: Request) -> JSONResponse:
        _, failure = await self._record(request)
        return failure or self._page("incoming_phone_numbers", [
            {"sid": "PN" + secrets.token_hex(16), "account_sid": self.account_sid, "phone_number": number,
             "voice_url": url, "voice_method": "POST"} for number, url in self.numbers.items()])

    async def _caller_ids(self, request: Request) -> JSONResponse:
        _, failure = await self._record(request)
        return failure or self._page("outgoing_caller_ids", [
            {"sid": "PN" + secrets.token_hex(16), "account_sid": self.account_sid, "phone_number": number}
            for number in self.verified_caller_ids])

    async def _update(self, request: Request) -> JSONResponse:
        recorded, failure = await self._record(request)
        if failure is not None:
            return failure
        call = self.calls.get(request.path_params["sid"])
        if call is None:
            return self._twilio_error(404, 20404, "The requested resource was not found")
        call.updates.append(recorded.form)
        if recorded.one("Status") in ("completed", "canceled"):
            call.status = recorded.one("Status") or call.status
        return JSONResponse(self._call_json(call))


@contextlib.asynccontextmanager
async def start_fake_twilio(account_sid: str = ACCOUNT_SID, auth_token: str = AUTH_TOKEN) -> AsyncIterator[FakeTwilio]:
    fake = FakeTwilio(account_sid, auth_token)
    async with running_app(fake.app) as url:
        fake.base_url = url
        yield fake
