"""``gateway doctor`` against real servers on 127.0.0.1: the embedded Realtime server (requiring a key and a model),
the local stand-in for Twilio's REST API driven by the real ``twilio`` library, a gateway under uvicorn, Redis and
SQLite. Every check is shown passing, and each failure a first real call usually meets is shown failing with its
reason and its fix."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import AsyncIterator

import pytest

from gateway.cli import main
from gateway.doctor import FAIL, PASS, SKIP, Check, bounded, describe, format_report, run_checks
from gateway.local import LocalRealtimeServer
from gateway.local.server import Faults
from gateway.server.runner import free_port
from tests.conftest import start_gateway
from tests.fake_twilio import FakeTwilio, start_fake_twilio

KEY = "sk-doctor-0123456789abcdef"
PUBLIC = "https://voice.example.test"
FROM = "+14155550100"
TIMEOUT_S = 3.0


@contextlib.asynccontextmanager
async def services() -> AsyncIterator[tuple[FakeTwilio, LocalRealtimeServer]]:
    """Twilio (the account owns FROM, whose calls go to the gateway) and a model that knows one key and one model."""
    async with start_fake_twilio() as fake, LocalRealtimeServer(api_keys=(KEY,), models=("gpt-realtime",),
                                                                validate_events=True) as model:
        fake.numbers = {FROM: f"{PUBLIC}/incoming-call"}
        yield fake, model
        assert model.validation_failures == []


def environment(fake: FakeTwilio, model: LocalRealtimeServer, **changes: str | None) -> dict[str, str]:
    env: dict[str, str | None] = {
        "PUBLIC_URL": PUBLIC, "TWILIO_AUTH_TOKEN": fake.auth_token, "TWILIO_ACCOUNT_SID": fake.account_sid,
        "TWILIO_API_BASE_URL": fake.base_url, "TWILIO_FROM_NUMBER": FROM, "OPENAI_API_KEY": KEY,
        "REALTIME_URL": model.url, "AUDIO_FORMAT": "pcmu", "VOICE": "cedar", "STORE_URL": "memory://",
    }
    env.update(changes)
    return {name: value for name, value in env.items() if value is not None}


async def doctor(env: dict[str, str], *skip: str) -> dict[str, Check]:
    return {check.name: check for check in await run_checks(env, skip=("reach", *skip), timeout_s=TIMEOUT_S)}


def failed(results: dict[str, Check]) -> set[str]:
    return {name for name, check in results.items() if check.status == FAIL}


async def test_a_sound_configuration_passes_every_check(tmp_path):
    async with services() as (fake, model):
        results = await doctor(environment(fake, model, STORE_URL=f"sqlite:///{tmp_path}/calls.db"))
        sessions = list(model.sessions)
    assert failed(results) == set(), format_report(list(results.values()))
    assert {name for name, check in results.items() if check.status == SKIP} == {"reach", "redis"}
    assert "the call store at sqlite:///" in results["store"].reason
    # What Twilio will be told, from PUBLIC_URL: the console's voice webhook and the TwiML's stream URL.
    assert f"{PUBLIC}/incoming-call (POST)" in results["public-url"].reason
    assert "wss://voice.example.test/media-stream/<per-call credential>" in results["public-url"].reason
    assert "voice cedar, audio pcmu" in results["model"].reason
    # A real session.update with the configured voice and format, and not a byte of audio.
    [session] = sessions
    assert session.config.voice == "cedar" and session.config.output_format == "pcmu"
    assert session.input_audio_ms == 0
    assert f"calls to {FROM} come to {PUBLIC}/incoming-call" in results["webhook"].reason
    assert "ready for a call" in format_report(list(results.values()))


@pytest.mark.parametrize("public_url, words", [
    ("http://voice.example.test", "only over wss://"),
    ("https://voice.example.test/gateway", "has a path"),
    ("https://127.0.0.1:8443", "Twilio cannot reach"),
    (None, "PUBLIC_URL is not set"),
])
async def test_a_public_url_twilio_cannot_use_fails(public_url, words):
    async with services() as (fake, model):
        results = await doctor(environment(fake, model, PUBLIC_URL=public_url), "model")
    check = results["public-url"]
    assert check.status == FAIL and words in check.reason and check.fix, check


async def test_without_signatures_the_gateway_is_open_to_anyone():
    async with services() as (fake, model):
        missing = await doctor(environment(fake, model, TWILIO_AUTH_TOKEN=None), "model")
        insecure = await doctor(environment(fake, model, INSECURE_DEV_MODE="true"), "model")
    assert missing["signatures"].status == FAIL and "TWILIO_AUTH_TOKEN is not set" in missing["signatures"].reason
    assert missing["twilio-account"].status == FAIL  # the REST API needs the token too
    assert insecure["signatures"].status == FAIL and "INSECURE_DEV_MODE" in insecure["signatures"].reason


async def test_a_key_the_model_refuses_fails_with_what_to_fix():
    async with services() as (fake, model):
        wrong_key = await doctor(environment(fake, model, OPENAI_API_KEY="sk-wrong-key-000000000000"))
        model.faults = Faults(refuse_connects=1, refuse_status=401)
        refused = await doctor(environment(fake, model))
        model.faults = Faults(refuse_connects=1, refuse_status=403)
        no_realtime = await doctor(environment(fake, model))
    assert failed(wrong_key) == {"model"} and "invalid_api_key" in wrong_key["model"].reason
    assert "OPENAI_API_KEY" in wrong_key["model"].fix
    assert failed(refused) == {"model"} and "HTTP 401" in refused["model"].reason
    assert failed(no_realtime) == {"model"} and "no access to the Realtime API" in no_realtime["model"].reason


async def test_an_unknown_model_or_voice_fails():
    async with services() as (fake, model):
        unknown_model = await doctor(environment(fake, model, REALTIME_MODEL="gpt-nonexistent"))
        unknown_voice = await doctor(environment(fake, model, VOICE="nobody"))
    assert failed(unknown_model) == {"model"} and "model_not_found" in unknown_model["model"].reason
    assert "REALTIME_MODEL" in unknown_model["model"].fix
    assert failed(unknown_voice) == {"model"} and "'nobody'" in unknown_voice["model"].reason


async def test_an_unreachable_model_fails_within_the_timeout():
    async with services() as (fake, model):
        results = await doctor(environment(fake, model, REALTIME_URL=f"ws://127.0.0.1:{free_port()}/v1/realtime"))
    assert failed(results) == {"model"} and "cannot open" in results["model"].reason


async def test_twilio_credentials_the_account_refuses_fail():
    async with services() as (fake, model):
        results = await doctor(environment(fake, model, TWILIO_AUTH_TOKEN="another-token-0123456789abcdef"),
                               "model")
    assert failed(results) == {"twilio-account"}
    assert "refused TWILIO_ACCOUNT_SID" in results["twilio-account"].reason
    assert results["caller-ids"].status == results["webhook"].status == SKIP


async def test_a_caller_id_that_is_not_the_accounts_fails_and_a_verified_one_passes():
    async with services() as (fake, model):
        stranger = await doctor(environment(fake, model, TWILIO_FROM_NUMBER=f"{FROM},+14155550199"), "model")
        fake.verified_caller_ids = ["+14155550199"]
        verified = await doctor(environment(fake, model, TWILIO_FROM_NUMBER=f"{FROM},+14155550199"), "model")
    assert failed(stranger) == {"caller-ids"} and "+14155550199" in stranger["caller-ids"].reason
    assert "21210" in stranger["caller-ids"].reason
    assert verified["caller-ids"].status == PASS


async def test_a_number_whose_webhook_points_elsewhere_fails():
    async with services() as (fake, model):
        fake.numbers = {FROM: f"{PUBLIC}/voice", "+14155550101": "https://demo.twil.io/other"}
        wrong_path = await doctor(environment(fake, model), "model")
        fake.numbers = {}
        no_number = await doctor(environment(fake, model, TWILIO_FROM_NUMBER=None), "model")
    assert failed(wrong_path) == {"webhook"}
    assert f"{FROM} -> {PUBLIC}/voice" in wrong_path["webhook"].reason
    assert f"{PUBLIC}/incoming-call, HTTP POST" in wrong_path["webhook"].fix
    assert failed(no_number) == {"webhook"} and "no phone number" in no_number["webhook"].reason


async def test_an_unreachable_redis_or_store_fails(tmp_path):
    async with services() as (fake, model):
        results = await doctor(environment(fake, model, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
                                           STORE_URL=f"postgresql://nobody@127.0.0.1:{free_port()}/db"), "model")
    assert failed(results) == {"redis", "store"}
    assert "cannot be used" in results["redis"].reason and "STORE_URL" in results["store"].fix


async def test_a_reachable_redis_passes():
    url = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    async with services() as (fake, model):
        results = await doctor(environment(fake, model, REDIS_URL=url), "model")
    if results["redis"].status == FAIL:
        pytest.skip(f"no Redis at {url}: {results['redis'].reason}")
    assert results["redis"].status == PASS


async def test_settings_that_do_not_parse_fail_first():
    results = await run_checks({"VAD_THRESHOLD": "3", "STORE_URL": "memory://"})
    assert results[0].status == FAIL and "VAD_THRESHOLD" in results[0].reason
    assert all(check.status == SKIP for check in results[1:])


async def reach(public_url: str) -> dict[str, Check]:
    env = {"PUBLIC_URL": public_url, "STORE_URL": "memory://"}
    return {check.name: check for check in await run_checks(env, timeout_s=TIMEOUT_S)}


async def test_reach_finds_the_gateway_and_its_websocket_route():
    async with start_gateway() as gateway, start_fake_twilio() as not_a_gateway:
        here = await reach(gateway.http_url)
        elsewhere = await reach(not_a_gateway.base_url)
    nobody = await reach(f"http://127.0.0.1:{free_port()}")
    assert here["reach"].status == PASS and "WebSocket upgrades reach it" in here["reach"].reason
    assert here["public-url"].status == FAIL  # http, on 127.0.0.1: reachable here, never by Twilio
    assert elsewhere["reach"].status == FAIL and "not the gateway's health report" in elsewhere["reach"].reason
    assert nobody["reach"].status == FAIL and "nothing answers" in nobody["reach"].reason
    assert "--skip reach" in nobody["reach"].fix


def test_the_command_exits_1_on_a_failure_and_0_when_nothing_fails(monkeypatch, capsys):
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "REALTIME_", "AZURE_", "TWILIO_", "PUBLIC_URL", "REDIS_", "STORE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("STORE_URL", "memory://")
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  signatures" in out and "fix: set TWILIO_AUTH_TOKEN" in out and "result:" in out
    # Behind a trusted proxy, with signatures on and nothing else configured, nothing fails.
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "token-0123456789abcdef0123456789")
    monkeypatch.setenv("TRUSTED_PROXY_IPS", "10.0.0.1")
    assert main(["doctor"]) == 0, capsys.readouterr().out


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 that accepts connections and never says a word (a hung database or Redis)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_a_refused_postgresql_fails_at_once_with_the_fix():
    started = time.monotonic()
    results = await run_checks({"STORE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/db"},
                               skip=("reach", "model"), timeout_s=TIMEOUT_S)
    store = {check.name: check for check in results}["store"]
    assert store.status == FAIL and "nothing accepts connections at 127.0.0.1:" in store.reason, store
    assert "start PostgreSQL" in store.fix and "STORE_URL" in store.fix
    assert time.monotonic() - started < TIMEOUT_S  # refused is known at once: no waiting out a pool's timeout


async def test_a_hung_postgresql_or_redis_fails_within_the_timeout_with_a_message_and_a_fix():
    async with silent_server() as pg_port, silent_server() as redis_port:
        started = time.monotonic()
        results = await run_checks({"STORE_URL": f"postgresql://nobody@127.0.0.1:{pg_port}/db",
                                    "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"},
                                   skip=("reach", "model"), timeout_s=TIMEOUT_S)
        elapsed = time.monotonic() - started
    by_name = {check.name: check for check in results}
    for name in ("store", "redis"):
        check = by_name[name]
        assert check.status == FAIL and ("no answer" in check.reason or "Timeout reading" in check.reason), check
        assert not check.reason.rstrip().endswith(":"), check  # never "TimeoutError: " with nothing after it
    assert "STORE_URL" in by_name["store"].fix and "REDIS_URL" in by_name["redis"].fix
    assert elapsed < 2 * (TIMEOUT_S + 1) + 2, elapsed  # each check within its bound, not a driver's 10 s default


async def test_a_check_that_stalls_or_breaks_fails_with_its_reason():
    async def stalls() -> Check:
        await asyncio.sleep(60)
        raise AssertionError("not reached")

    def breaks() -> Check:
        raise TimeoutError()  # no message at all

    stalled = await bounded("model", stalls, 0.2)
    broken = await bounded("store", breaks, 0.2)
    assert stalled.status == FAIL and "no answer within 1.2 s" in stalled.reason and "REALTIME_URL" in stalled.fix
    assert broken.status == FAIL and broken.reason == "no answer within 1.2 s" and "STORE_URL" in broken.fix
    assert describe(TimeoutError()) == "TimeoutError" and describe(OSError("a\nb")) == "OSError: a b"


async def test_a_hung_twilio_api_fails_within_the_timeout_and_doctor_exits_then():
    """The request runs in a thread a cancelled check cannot stop: it must carry the timeout itself, or the process
    waits for it at exit (10 s) whatever --timeout says."""
    import sys

    from gateway.tooling.fuzz import _clean_env

    async with silent_server() as twilio_port:
        env = {**_clean_env(), "TWILIO_API_BASE_URL": f"http://127.0.0.1:{twilio_port}",
               "TWILIO_ACCOUNT_SID": "AC" + "1" * 32, "TWILIO_AUTH_TOKEN": "token-0123456789abcdef",
               "PUBLIC_URL": PUBLIC, "STORE_URL": "memory://"}
        started = time.monotonic()
        doctor_run = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "doctor", "--skip", "reach", "--skip", "model", "--timeout", "2",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(doctor_run.communicate(), 60)
        elapsed = time.monotonic() - started
    report = out.decode()
    assert doctor_run.returncode == 1 and "FAIL  twilio-account" in report, report
    assert elapsed < 8, (elapsed, report)  # 2 s per check and start-up, not the REST client's 10 s default
