"""Only real calls get a media stream: per-call credentials signed by Twilio, used once, bound to the CallSid.

Every refusal is checked over real sockets against a gateway under uvicorn with signatures on: the upgrade is
closed with 1008 and the embedded model server saw no session at all. A genuine call still works end to end,
with the replay phone ringing the signed webhook first, exactly as Twilio does.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

import httpx
import pytest
import websockets
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect

from gateway.config import ConfigError, Settings
from gateway.server.app import create_app
from gateway.tooling.replay import CallerTurn, TwilioAccount, load_sample, run_call
from gateway.tooling.replay.dial import StreamInvite, answer_inbound, sign_upgrade, stream_from_twiml
from gateway.twilio.security import CredentialRejected, StreamCredentials, stream_secret
from gateway.state import MemoryState, RedisState, StateUnavailable

from .conftest import GatewayUnderTest, start_gateway
from .helpers import eventually

TOKEN = "twilio-auth-token-for-tests-0123"
PUBLIC_URL = "https://gateway.example.test"
ACCOUNT = TwilioAccount(TOKEN, PUBLIC_URL)
POLICY_VIOLATION = 1008


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def start_frame(call_sid: str, stream_sid: str | None = None) -> str:
    stream_sid = stream_sid or new_sid("MZ")
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": stream_sid, "start": {
        "accountSid": new_sid("AC"), "streamSid": stream_sid, "callSid": call_sid, "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}, "customParameters": {}}})


async def try_stream(url: str, headers: dict[str, str], call_sid: str) -> int | None:
    """Open a stream as Twilio would and say ``start`` for ``call_sid``: the close code if the gateway closes it
    within 1 s (None: still open, i.e. accepted)."""
    async with connect(url, compression=None, additional_headers=headers, ping_interval=None) as ws:
        try:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(start_frame(call_sid))
            while True:
                await asyncio.wait_for(ws.recv(), 1.0)
        except websockets.exceptions.ConnectionClosed:
            return ws.close_code
        except TimeoutError:
            return None


async def invite(gw: GatewayUnderTest, call_sid: str) -> StreamInvite:
    return await answer_inbound(gw.ws_url, ACCOUNT, call_sid=call_sid, account_sid=new_sid("AC"))


def model_sessions(gw: GatewayUnderTest) -> int:
    return len(gw.local_server.sessions)


@pytest.fixture
async def secure() -> Any:
    async with start_gateway(twilio_auth_token=TOKEN, public_url=PUBLIC_URL) as gw:
        yield gw


# ---------------------------------------------------------------------- refusals


async def test_the_webhook_issues_a_per_call_stream_url_that_twilio_signs(secure: GatewayUnderTest) -> None:
    first, second = await invite(secure, new_sid("CA")), await invite(secure, new_sid("CA"))
    assert first.connect_url != second.connect_url  # per call: no constant URL, no constant signature
    assert first.headers != second.headers
    assert "/media-stream/v1.i.CA" in first.connect_url and "?" not in first.connect_url


async def test_a_genuine_call_works_end_to_end_with_signatures_on(secure: GatewayUnderTest) -> None:
    report = await run_call(secure.ws_url, [CallerTurn(load_sample("caller_hello"), after_silence_ms=300)],
                            twilio=ACCOUNT, timeout_s=20, hangup_after_ms=300)
    assert report.violations == [] and report.turns[0].response_ms is not None
    assert model_sessions(secure) == 1


async def test_a_replayed_upgrade_is_refused_while_and_after_the_first_stream_runs(secure: GatewayUnderTest) -> None:
    call_sid = new_sid("CA")
    genuine = await invite(secure, call_sid)
    async with connect(genuine.connect_url, compression=None, additional_headers=genuine.headers) as ws:
        await ws.send(start_frame(call_sid))
        await eventually(lambda: model_sessions(secure) == 1, what="the call's model session")
        # The same URL and signature (captured from a proxy log, say) while the call runs ...
        assert await try_stream(genuine.connect_url, genuine.headers, call_sid) == POLICY_VIOLATION
    # ... and after it ended.
    await eventually(lambda: not secure.state.active_calls, what="the call over")
    assert await try_stream(genuine.connect_url, genuine.headers, call_sid) == POLICY_VIOLATION
    assert model_sessions(secure) == 1


async def test_a_stream_claiming_another_call_sid_is_refused(secure: GatewayUnderTest) -> None:
    mine, victim = new_sid("CA"), new_sid("CA")
    stream = await invite(secure, mine)
    # A valid credential and signature for my call cannot speak for (and hang up) the victim's.
    assert await try_stream(stream.connect_url, stream.headers, victim) == POLICY_VIOLATION
    assert model_sessions(secure) == 0


async def test_an_expired_credential_is_refused(secure: GatewayUnderTest) -> None:
    call_sid = new_sid("CA")
    secret = stream_secret(secure.state.settings)
    old = StreamCredentials(secret, 600, clock=lambda: time.time() - 3600).issue(call_sid)
    public = f"wss://gateway.example.test/media-stream/{old}"
    url = secure.ws_url + "/" + old
    assert await try_stream(url, sign_upgrade(ACCOUNT, public), call_sid) == POLICY_VIOLATION
    assert model_sessions(secure) == 0


@pytest.mark.parametrize("how", ["unsigned", "bad-signature", "other-token", "signed-https-form", "bad-mac",
                                 "malformed", "no-credential"])
async def test_upgrades_without_a_valid_signature_and_credential_are_refused(secure: GatewayUnderTest, how: str) -> None:
    call_sid = new_sid("CA")
    stream = await invite(secure, call_sid)
    public = "wss://gateway.example.test/" + stream.connect_url.split("/", 3)[3]
    url, headers = stream.connect_url, dict(stream.headers)
    if how == "unsigned":
        headers = {}
    elif how == "bad-signature":
        headers = {"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"}
    elif how == "other-token":
        headers = {"X-Twilio-Signature": RequestValidator("another-token").compute_signature(public, {})}
    elif how == "signed-https-form":
        headers = {"X-Twilio-Signature": RequestValidator(TOKEN).compute_signature(public.replace("wss", "https"), {})}
    elif how == "bad-mac":
        url = url[:-4] + ("AAAA" if not url.endswith("AAAA") else "BBBB")
        headers = sign_upgrade(ACCOUNT, public[:-4] + url[-4:])
    elif how == "malformed":
        url = secure.ws_url + "/not-a-credential"
        headers = sign_upgrade(ACCOUNT, "wss://gateway.example.test/media-stream/not-a-credential")
    elif how == "no-credential":
        url = secure.ws_url  # the bare path of the keyless demo
        headers = sign_upgrade(ACCOUNT, "wss://gateway.example.test/media-stream")
    assert await try_stream(url, headers, call_sid) == POLICY_VIOLATION
    assert model_sessions(secure) == 0
    # The genuine stream was not burnt by the refused attempt (the signature is checked before the claim).
    assert await try_stream(stream.connect_url, stream.headers, call_sid) is None
    assert model_sessions(secure) == 1


async def test_forwarded_host_is_not_trusted_for_signatures() -> None:
    # No PUBLIC_URL: a signature made for another host (another app of the same account) must not pass because
    # the client says X-Forwarded-Host is that host.
    async with start_gateway(twilio_auth_token=TOKEN) as gw:
        form = {"CallSid": new_sid("CA"), "From": "+15550100", "To": "+15550199"}
        forged_host = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "other-app.example.com"}
        signature = RequestValidator(TOKEN).compute_signature("https://other-app.example.com/incoming-call", form)
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            webhook = await http.post("/incoming-call", data=form, headers={**forged_host,
                                                                             "X-Twilio-Signature": signature})
        assert webhook.status_code == 403
        credential = gw.state.credentials.issue(form["CallSid"])
        upgrade = sign_upgrade(ACCOUNT, f"wss://other-app.example.com/media-stream/{credential}")
        assert await try_stream(f"{gw.ws_url}/{credential}", {**forged_host, **upgrade},
                                form["CallSid"]) == POLICY_VIOLATION
        assert model_sessions(gw) == 0
    # With PUBLIC_URL set, the forwarded host is ignored: its signature fails too.
    async with start_gateway(twilio_auth_token=TOKEN, public_url=PUBLIC_URL) as gw:
        credential = gw.state.credentials.issue(form["CallSid"])
        upgrade = sign_upgrade(ACCOUNT, f"wss://other-app.example.com/media-stream/{credential}")
        assert await try_stream(f"{gw.ws_url}/{credential}", {**forged_host, **upgrade},
                                form["CallSid"]) == POLICY_VIOLATION
        assert model_sessions(gw) == 0


async def test_a_trusted_proxy_may_say_the_public_host() -> None:
    async with start_gateway(twilio_auth_token=TOKEN, trusted_proxy_ips=("127.0.0.1",)) as gw:
        call_sid = new_sid("CA")
        form = {"CallSid": call_sid, "From": "+15550100", "To": "+15550199"}
        forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "proxied.example.com"}
        signature = RequestValidator(TOKEN).compute_signature("https://proxied.example.com/incoming-call", form)
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            webhook = await http.post("/incoming-call", data=form, headers={**forwarded, "X-Twilio-Signature": signature})
        assert webhook.status_code == 200
        stream_url, _ = stream_from_twiml(webhook.text)
        assert stream_url.startswith("wss://proxied.example.com/media-stream/v1.i.")
        path = stream_url.split("proxied.example.com", 1)[1]
        url = gw.http_url.replace("http://", "ws://") + path
        assert await try_stream(url, {**forwarded, **sign_upgrade(ACCOUNT, stream_url)}, call_sid) is None


async def test_when_the_shared_state_is_down_streams_are_refused() -> None:
    unreachable = RedisState("redis://127.0.0.1:1/0", timeout_s=0.5)
    with pytest.raises(StateUnavailable):
        await unreachable.claim_once("x", 10)
    async with start_gateway(twilio_auth_token=TOKEN, public_url=PUBLIC_URL) as gw:
        gw.state.shared = RedisState("redis://127.0.0.1:1/0", timeout_s=0.5)  # fail closed, never a hang
        call_sid = new_sid("CA")
        stream = await invite(gw, call_sid)
        assert await try_stream(stream.connect_url, stream.headers, call_sid) == POLICY_VIOLATION
        assert model_sessions(gw) == 0


# ---------------------------------------------------------------------- capacity and secure defaults


async def test_over_max_calls_the_webhook_says_so_and_streams_are_refused() -> None:
    async with start_gateway(max_calls=1) as gw:
        report_task = asyncio.create_task(run_call(
            gw.ws_url, [CallerTurn(load_sample("caller_hello"), after_silence_ms=300)], timeout_s=20,
            hangup_after_ms=1500))
        await eventually(lambda: gw.state.active_calls, what="the first call up")
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            busy = await http.post("/incoming-call", data={"CallSid": new_sid("CA")})
        assert busy.status_code == 200 and "<Say>" in busy.text and "<Hangup" in busy.text and "<Stream" not in busy.text
        assert await try_stream(gw.ws_url, {}, new_sid("CA")) == POLICY_VIOLATION
        assert (await report_task).violations == []
        assert model_sessions(gw) == 1


def test_a_real_model_without_auth_token_and_public_url_refuses_to_start() -> None:
    real = Settings.from_env({"OPENAI_API_KEY": "sk-test"})
    with pytest.raises(ConfigError) as refused:
        create_app(real)
    assert "TWILIO_AUTH_TOKEN" in str(refused.value) and "PUBLIC_URL" in str(refused.value)
    assert "INSECURE_DEV_MODE" in str(refused.value)
    with pytest.raises(ConfigError, match="https"):
        create_app(Settings.from_env({"OPENAI_API_KEY": "sk-test", "TWILIO_AUTH_TOKEN": TOKEN,
                                      "PUBLIC_URL": "http://gateway.example.test"}))
    create_app(Settings.from_env({"OPENAI_API_KEY": "sk-test", "TWILIO_AUTH_TOKEN": TOKEN, "PUBLIC_URL": PUBLIC_URL}))
    create_app(Settings.from_env({}))  # the keyless embedded demo needs neither


async def test_insecure_dev_mode_starts_and_healthz_repeats_the_warning(caplog: pytest.LogCaptureFixture) -> None:
    async with start_gateway(api_key="sk-test", realtime_url="ws://127.0.0.1:1/v1/realtime",
                             insecure_dev_mode=True) as gw:
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            health = (await http.get("/healthz")).json()
    assert health["status"] == "ok" and health["signatures"] is False
    assert any("TWILIO_AUTH_TOKEN" in warning for warning in health["warnings"])
    assert any("INSECURE_DEV_MODE" in r.getMessage() for r in caplog.records)


def test_the_cli_refuses_to_serve_a_real_model_insecurely(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    from gateway.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    for name in ("TWILIO_AUTH_TOKEN", "PUBLIC_URL", "INSECURE_DEV_MODE"):
        monkeypatch.delenv(name, raising=False)
    assert main(["serve", "--port", "1"]) == 2
    assert "TWILIO_AUTH_TOKEN" in capsys.readouterr().err


# ---------------------------------------------------------------------- the pieces


def test_credentials_are_bound_to_their_call_and_expire() -> None:
    now = [1_000_000.0]
    credentials = StreamCredentials(b"k" * 32, 300, clock=lambda: now[0])
    call_sid = new_sid("CA")
    credential = credentials.issue(call_sid)
    grant = credentials.verify(credential)
    assert grant.call_sid == call_sid and not grant.outbound and grant.expires_at == 1_000_300
    assert credentials.verify(credentials.issue(call_sid, "o")).outbound
    other_secret = StreamCredentials(b"x" * 32, 300, clock=lambda: now[0])
    for bad in (credential.replace(call_sid, new_sid("CA")), credential[:-1] + ("A" if credential[-1] != "A" else "B"),
                credential.replace(".i.", ".o."), "v1", "", "x" * 1000):
        with pytest.raises(CredentialRejected):
            credentials.verify(bad)
    with pytest.raises(CredentialRejected, match="MAC"):
        other_secret.verify(credential)
    now[0] += 301
    with pytest.raises(CredentialRejected, match="expired"):
        credentials.verify(credential)


def test_the_secret_is_configured_or_derived_from_the_auth_token_never_the_token_itself() -> None:
    base = Settings.from_env({})
    from dataclasses import replace

    assert stream_secret(replace(base, stream_secret="s" * 40)) == b"s" * 40
    derived = stream_secret(replace(base, twilio_auth_token=TOKEN))
    assert derived == stream_secret(replace(base, twilio_auth_token=TOKEN)) and TOKEN.encode() not in derived
    assert stream_secret(base) != stream_secret(base)  # random per process for the keyless demo


async def test_memory_claims_are_single_use_until_they_expire() -> None:
    now = [0.0]
    state = MemoryState(clock=lambda: now[0], max_claims=3)
    assert await state.claim_once("a", 10) and not await state.claim_once("a", 10)
    now[0] = 11
    assert await state.claim_once("a", 10)  # expired: the credential it guarded has expired too
    for key in "bcde":
        await state.claim_once(key, 10)
    assert len(state._claims) == 3  # bounded


async def test_redis_claims_are_single_use_across_instances() -> None:
    import redis.asyncio as aioredis

    url = "redis://127.0.0.1:6379/0"
    try:
        probe = aioredis.Redis.from_url(url, socket_connect_timeout=0.5)
        await probe.ping()
        await probe.aclose()
    except Exception as error:  # noqa: BLE001
        pytest.skip(f"no Redis at {url}: {error}")
    prefix = f"gateway-test-{secrets.token_hex(4)}:"
    one, two = RedisState(url, prefix=prefix), RedisState(url, prefix=prefix)
    try:
        results = await asyncio.gather(*(state.claim_once("stream:n1", 5) for state in (one, two, one, two)))
        assert sorted(results) == [False, False, False, True]
    finally:
        await one.aclose()
        await two.aclose()


async def test_concurrent_admissions_never_exceed_max_calls_even_when_the_shared_state_is_slow() -> None:
    class SlowState(MemoryState):
        async def claim_once(self, key: str, ttl_s: float) -> bool:
            await asyncio.sleep(0.02)  # a Redis round trip: every admission waits here at the same time
            return await super().claim_once(key, ttl_s)

    async with start_gateway(twilio_auth_token=TOKEN, public_url=PUBLIC_URL, max_calls=2) as gw:
        gw.state.shared = SlowState()
        calls = [new_sid("CA") for _ in range(6)]
        invites = [await invite(gw, call_sid) for call_sid in calls]
        codes = await asyncio.gather(*(try_stream(i.connect_url, i.headers, c) for i, c in zip(invites, calls)))
        assert codes.count(None) <= 2 and codes.count(POLICY_VIOLATION) >= 4
        assert model_sessions(gw) <= 2


async def test_only_the_trusted_proxys_own_forwarded_host_line_counts() -> None:
    async with start_gateway(twilio_auth_token=TOKEN, trusted_proxy_ips=("127.0.0.1",)) as gw:
        form = {"CallSid": new_sid("CA"), "From": "+15550100", "To": "+15550199"}
        # The client's own X-Forwarded-Host line first, the proxy's line after it.
        signature = RequestValidator(TOKEN).compute_signature("https://other-app.example.com/incoming-call", form)
        headers = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "other-app.example.com"),
                   ("X-Forwarded-Host", "proxied.example.com"), ("X-Twilio-Signature", signature)]
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            assert (await http.post("/incoming-call", data=form, headers=headers)).status_code == 403


async def test_gateway_replay_calls_a_signature_checking_gateway_as_twilio_does(tmp_path) -> None:
    from gateway.cli import main

    async with start_gateway(twilio_auth_token=TOKEN, public_url=PUBLIC_URL) as gw:
        common = ["replay", "simple-exchange", "--url", gw.ws_url, "--out", str(tmp_path), "--json"]
        signed = await asyncio.to_thread(main, common + ["--auth-token", TOKEN, "--public-url", PUBLIC_URL])
        unsigned = await asyncio.to_thread(main, common)
    assert signed == 0  # the webhook first, then the signed stream its TwiML named
    assert unsigned == 1  # a bare stream to a signature-checking gateway is refused
