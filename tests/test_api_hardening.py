"""The outbound HTTP API against hostile callers: real uvicorn, the real twilio library, a fake Twilio on 127.0.0.1.

Key guessing is throttled per client address and presented key (429 once ``API_AUTH_FAILURES_PER_MINUTE`` is
spent, never for a good key), hostile JSON is a 400 and never a 500, ``from`` must be one of the gateway's caller IDs, NANP premium and
non-geographic codes are refused, and the configuration refuses ``+`` and a premium TRANSFER_NUMBER.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any, AsyncIterator

import httpx
import pytest

from gateway.api.auth import AuthFailureLimiter, client_key
from gateway.api.errors import ApiError
from gateway.api.requests import MAX_BODY_BYTES, parse_call_request, parse_json_object
from gateway.config import ConfigError, Settings
from gateway.twilio.numbers import NANP_PCS_AREA_CODES, PREMIUM_RATE_PREFIXES, destination_refusal
from tests.conftest import GatewayUnderTest, start_gateway
from tests.fake_twilio import FakeTwilio, start_fake_twilio

API_KEY = "test-key-aaaaaaaaaaaaaaaaaaaaaaaa"
WRONG_KEY = "guess-key-0000000000000000000000"
PUBLIC = "https://gateway.example.test"
FROM = "+14155550100"
SECOND_FROM = "+14155550101"
TO = "+14155550123"
AUTH = {"authorization": f"Bearer {API_KEY}"}
JSON = {**AUTH, "content-type": "application/json"}


@contextlib.asynccontextmanager
async def outbound(**overrides: Any) -> AsyncIterator[tuple[GatewayUnderTest, FakeTwilio, httpx.AsyncClient]]:
    async with start_fake_twilio() as fake:
        settings: dict[str, Any] = dict(
            api_keys=(API_KEY,), twilio_account_sid=fake.account_sid, twilio_auth_token=fake.auth_token,
            twilio_api_base_url=fake.base_url, twilio_from_number=FROM, twilio_caller_ids=(FROM, SECOND_FROM),
            public_url=PUBLIC, outbound_rate_limit_per_minute=1000,
            # The test client is the "proxy": X-Forwarded-For then names the client address being throttled.
            trusted_proxy_ips=("127.0.0.1",),
        )
        settings.update(overrides)
        async with start_gateway(**settings) as gateway, httpx.AsyncClient(base_url=gateway.http_url) as client:
            yield gateway, fake, client


def error_code(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


def from_address(address: str, headers: dict[str, str]) -> dict[str, str]:
    return {**headers, "x-forwarded-for": address}


# ---- failed authentication: throttled per client address


async def test_auth_failures_are_throttled_per_address_and_key_never_for_a_good_key(caplog):
    caplog.set_level(logging.WARNING, logger="gateway.api.auth")
    async with outbound(api_auth_failures_per_minute=3) as (gateway, fake, client):
        now = [1000.0]
        gateway.state.outbound.auth_failures = AuthFailureLimiter(3, clock=lambda: now[0])
        attacker, bystander = "203.0.113.7", "198.51.100.9"
        wrong = from_address(attacker, {"authorization": f"Bearer {WRONG_KEY}", "content-type": "application/json"})
        for _ in range(3):
            response = await client.post("/calls", json={"to": TO}, headers=wrong)
            assert (response.status_code, error_code(response)) == (401, "unauthorized")

        # The fourth try of that key is refused (429); a good key from the same address is never throttled (issue 17).
        response = await client.post("/calls", json={"to": TO}, headers=wrong)
        assert (response.status_code, error_code(response)) == (429, "too_many_auth_failures"), response.text
        assert 1 <= int(response.headers["retry-after"]) <= 60
        assert (await client.post("/calls", json={"to": TO}, headers=from_address(attacker, JSON))).status_code == 201
        throttled_get = await client.get(f"/calls/CA{'0' * 32}", headers=from_address(attacker, AUTH))
        assert (throttled_get.status_code, error_code(throttled_get)) == (404, "call_not_found")

        # Another address is not affected.
        assert (await client.post("/calls", json={"to": TO}, headers=from_address(bystander, JSON))).status_code == 201

        # The window passes: the wrong key is answered 401 again.
        now[0] += 61
        assert (await client.post("/calls", json={"to": TO}, headers=wrong)).status_code == 401
        assert len(fake.calls) == 2

    lines = [record.getMessage() for record in caplog.records if record.name == "gateway.api.auth"]
    assert len(lines) == 2  # one line per address per minute, however many failures; the next one summarises
    assert "2 more failure(s) and 1 throttled request(s)" in lines[1]
    assert "client=203.0.113.7" in lines[0] and "reason=unknown API key" in lines[0]
    assert all(WRONG_KEY not in line and "Bearer" not in line for line in lines)


async def test_auth_failure_reasons_are_logged_without_the_header(caplog):
    caplog.set_level(logging.WARNING, logger="gateway.api.auth")
    async with outbound() as (_, _, client):
        cases = [({}, "no Authorization header"), ({"authorization": "Basic dXNlcjpwYXNz"}, "not a Bearer"),
                 ({"authorization": "Bearer"}, "empty bearer token"),
                 ({"authorization": f"Bearer {WRONG_KEY}"}, "unknown API key")]
        for number, (headers, _) in enumerate(cases):
            response = await client.post("/calls", json={"to": TO}, headers=from_address(f"192.0.2.{number}", headers))
            assert response.status_code == 401
    lines = [record.getMessage() for record in caplog.records if record.name == "gateway.api.auth"]
    assert len(lines) == len(cases)
    for number, (line, (_, reason)) in enumerate(zip(lines, cases)):
        assert f"client=192.0.2.{number} " in line and f"reason={reason}" in line, line
        assert "dXNlcjpwYXNz" not in line and WRONG_KEY not in line


def test_auth_failure_limiter_window_memory_bound_and_log_summaries(caplog):
    caplog.set_level(logging.WARNING, logger="gateway.api.auth")
    now = [0.0]
    limiter = AuthFailureLimiter(3, clock=lambda: now[0])
    for t in (0.0, 1.0, 2.0):
        now[0] = t
        assert limiter.retry_after("192.0.2.1") == 0.0
        limiter.record_failure("192.0.2.1", "unknown API key")
    assert limiter.retry_after("192.0.2.1") == pytest.approx(58.0)  # the window began at the first failure
    assert limiter.retry_after("192.0.2.2") == 0.0
    now[0] = 59.5
    assert limiter.retry_after("192.0.2.1") == pytest.approx(0.5)
    now[0] = 60.0
    assert limiter.retry_after("192.0.2.1") == 0.0  # the window is over
    limiter.record_failure("192.0.2.1", "unknown API key")  # the first failure of a new window
    assert limiter.retry_after("192.0.2.1") == 0.0

    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2  # t=0 and t=60: one line per address per minute...
    assert "failures_this_minute=1" in lines[0] and "more failure" not in lines[0]
    assert "2 more failure(s) and 2 throttled request(s)" in lines[1]  # ...and the second summarises the first's minute

    # Client text in a log line is escaped and bounded.
    caplog.clear()
    limiter.record_failure("evil\n2025-01-01 ERROR forged\x1b[31m" + "x" * 500, "unknown API key")
    [line] = [record.getMessage() for record in caplog.records]
    assert "\n" not in line and "\x1b" not in line and len(line) < 400

    # IPv6 clients are throttled per /64: one host holds the whole network.
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_key("::ffff:192.0.2.9") == "192.0.2.9" and client_key(None) == "unknown"

    # Bounded memory: at most max_clients addresses, the least recently failing forgotten first.
    bounded = AuthFailureLimiter(1, max_clients=100, clock=lambda: now[0])
    for n in range(1000):
        bounded.record_failure(f"10.0.{n // 256}.{n % 256}", "unknown API key")
    assert len(bounded) == 100
    assert bounded.retry_after("10.0.3.231") > 0  # the last one is still blocked
    assert bounded.retry_after("10.0.0.0") == 0.0  # the first one was forgotten
    # Entries whose minute is over go first, whatever the bound.
    now[0] += 61
    bounded.record_failure("10.9.9.9", "unknown API key")
    assert len(bounded) == 1


def test_auth_failures_setting():
    assert Settings.from_env({}).api_auth_failures_per_minute == 10
    assert Settings.from_env({"API_AUTH_FAILURES_PER_MINUTE": "25"}).api_auth_failures_per_minute == 25
    for bad in ("0", "ten"):
        with pytest.raises(ConfigError, match="API_AUTH_FAILURES_PER_MINUTE"):
            Settings.from_env({"API_AUTH_FAILURES_PER_MINUTE": bad})


# ---- hostile JSON: 400, never 500


async def test_hostile_json_bodies_are_400_never_500():
    async with outbound() as (_, fake, client):
        nested = b"[" * (MAX_BODY_BYTES - 10)  # fits the body limit, exhausts the parser's recursion
        cases: list[tuple[str, bytes, int, str]] = [
            ("nested arrays", nested, 400, "invalid_json"),
            ("nested objects", b'{"a":' * 3000, 400, "invalid_json"),
            ("balanced nesting", b'{"to": "+14155550123", "metadata": ' + b"[" * 3000 + b"]" * 3000 + b"}", 400,
             "invalid_json"),
            ("huge integer", b'{"to": ' + b"1" * 5000 + b"}", 400, "invalid_json"),
            ("lone surrogate", b'{"to": "+14155550123", "instructions": "hi \\ud800"}', 400, "invalid_json"),
            ("lone surrogate key", b'{"\\udfff": 1}', 400, "invalid_json"),
            ("NUL", b'{"to": "+14155550123", "greeting": "a\\u0000b"}', 400, "invalid_json"),
            ("Infinity", b'{"to": "+14155550123", "metadata": {"a": Infinity}}', 400, "invalid_json"),
            ("overflowing float", b'{"to": "+14155550123", "machine_detection": 1e999}', 422, "invalid_field"),
            ("object as machine_detection", b'{"to": "+14155550123", "machine_detection": {}}', 422,
             "invalid_field"),
            ("too many metadata entries", json.dumps({"to": TO, "metadata": {str(n): "v" for n in range(33)}}).encode(),
             422, "invalid_field"),
            ("long metadata key", json.dumps({"to": TO, "metadata": {"k" * 65: "v"}}).encode(), 422, "invalid_field"),
            ("control character in a metadata key", json.dumps({"to": TO, "metadata": {"a\nb": "v"}}).encode(), 422,
             "invalid_field"),
            ("empty metadata key", json.dumps({"to": TO, "metadata": {"": "v"}}).encode(), 422, "invalid_field"),
            ("huge unknown field", json.dumps({"to": TO, "x" * 10000: 1}).encode(), 400, "unknown_field"),
        ]
        for name, content, status, code in cases:
            response = await client.post("/calls", content=content, headers=JSON)
            assert (response.status_code, error_code(response)) == (status, code), (name, response.text[:300])
            assert len(response.content) < 2000, name  # the error never echoes the body back
        ok = await client.post("/calls", headers=JSON, content=json.dumps(
            {"to": TO, "metadata": {f"key-{n}": "v" for n in range(32)}}).encode())
        assert ok.status_code == 201, ok.text
        assert len(fake.calls) == 1


def test_parse_json_object_survives_what_the_socket_cannot_carry():
    for body in (b"[" * 100_000, b'{"a":' * 100_000, b"-" + b"9" * 100_000):
        with pytest.raises(ApiError) as raised:
            parse_json_object(body)
        assert (raised.value.status, raised.value.code) == (400, "invalid_json")
    with pytest.raises(ApiError) as raised:
        parse_call_request(b"[" * 100_000, caller_ids=(FROM,), allowed_prefixes=("+1",), voicemail_configured=False)
    assert raised.value.status == 413


# ---- caller IDs


async def test_from_must_be_a_configured_caller_id():
    async with outbound() as (_, fake, client):
        assert (await client.post("/calls", json={"to": TO, "from": SECOND_FROM}, headers=AUTH)).status_code == 201
        assert (await client.post("/calls", json={"to": TO}, headers=AUTH)).status_code == 201
        assert [request.one("From") for request in fake.requests] == [SECOND_FROM, FROM]  # default: the first
        refused = await client.post("/calls", json={"to": TO, "from": "+14155550199"}, headers=AUTH)
        assert (refused.status_code, error_code(refused)) == (403, "caller_id_not_allowed")
        assert refused.json()["error"]["field"] == "from" and "TWILIO_FROM_NUMBER" in refused.json()["error"]["message"]
        assert len(fake.requests) == 2

    # No caller ID configured: nothing is allowed, and a missing "from" is a missing field.
    async with outbound(twilio_from_number="", twilio_caller_ids=()) as (_, fake, client):
        refused = await client.post("/calls", json={"to": TO, "from": FROM}, headers=AUTH)
        assert (refused.status_code, error_code(refused)) == (403, "caller_id_not_allowed")
        missing = await client.post("/calls", json={"to": TO}, headers=AUTH)
        assert (missing.status_code, error_code(missing)) == (422, "missing_field")
        assert fake.requests == []


def test_caller_ids_from_env():
    settings = Settings.from_env({"TWILIO_FROM_NUMBER": f" {FROM}, {SECOND_FROM} ,{FROM}"})
    assert settings.twilio_from_number == FROM and settings.twilio_caller_ids == (FROM, SECOND_FROM)
    assert Settings.from_env({}).twilio_caller_ids == () and Settings.from_env({}).twilio_from_number == ""
    with pytest.raises(ConfigError, match="TWILIO_FROM_NUMBER"):
        Settings.from_env({"TWILIO_FROM_NUMBER": f"{FROM},4155550101"})


# ---- toll-fraud guard: NANP premium and non-geographic codes


NEW_NANP_REFUSALS = ["+15005550100", "+15215550100", "+15295550100", "+15325550100", "+15385550100",
                     "+15425550100", "+15495550100", "+15505550100", "+15565550100", "+15895550100",
                     "+14565550100", "+16005550100", "+16225550100", "+17105550100", "+18805550100",
                     "+18825550100", "+19005550100", "+12129765555", "+16479761234"]


async def test_nanp_premium_and_non_geographic_codes_are_403():
    async with outbound() as (_, fake, client):
        for number in NEW_NANP_REFUSALS:
            response = await client.post("/calls", json={"to": number}, headers=AUTH)
            assert (response.status_code, error_code(response)) == (403, "destination_premium_rate"), number
        assert fake.requests == []
        # Geographic 5XX codes between the PCS ones, and ordinary toll-free, are still callable.
        for number in ("+15485550100", "+15575550100", "+15315550100", "+18885550100", "+18335550100"):
            assert (await client.post("/calls", json={"to": number}, headers=AUTH)).status_code == 201, number


def test_every_pcs_code_is_refused_under_any_allow_list():
    for code in NANP_PCS_AREA_CODES:
        number = f"+1{code}5550100"
        assert f"+1{code}" in PREMIUM_RATE_PREFIXES
        for allowed in (("+1",), (f"+1{code}",), ("+",)):
            refusal = destination_refusal(number, allowed)
            assert refusal is not None and refusal[0] == "destination_premium_rate", (number, allowed)
    assert "+1888" not in PREMIUM_RATE_PREFIXES and "+1548" not in PREMIUM_RATE_PREFIXES


# ---- configuration


def test_bare_plus_allow_list_is_a_config_error():
    for raw in ("+", "+1,+", " + , +44"):
        with pytest.raises(ConfigError, match="allows every country"):
            Settings.from_env({"OUTBOUND_ALLOWED_PREFIXES": raw})
    assert Settings.from_env({"OUTBOUND_ALLOWED_PREFIXES": "+1,+44"}).outbound_allowed_prefixes == ("+1", "+44")


def test_transfer_number_passes_the_toll_fraud_guard_at_start_up():
    for number, prefixes in (("+19005550123", "+1"), ("+15325550100", "+1"), ("+12129765555", "+1"),
                             ("+442071838750", "+1"), ("+18765550123", "+1"), ("+449012345678", "+1,+44")):
        with pytest.raises(ConfigError, match="TRANSFER_NUMBER"):
            Settings.from_env({"TRANSFER_NUMBER": number, "OUTBOUND_ALLOWED_PREFIXES": prefixes})
    assert Settings.from_env({"TRANSFER_NUMBER": "+442071838750", "OUTBOUND_ALLOWED_PREFIXES": "+1,+44"})
    assert Settings.from_env({"TRANSFER_NUMBER": "sip:desk@pbx.example.com"}).transfer_number.startswith("sip:")
    assert Settings.from_env({"TRANSFER_NUMBER": "+14155550111"}).transfer_number == "+14155550111"
