"""Graceful drain, with a real ``gateway serve`` process: SIGTERM stops new calls, lets live ones finish, exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time

import httpx

from gateway.tooling.replay import CallerTurn, load_sample, run_call
from gateway.server.runner import free_port

from .helpers import eventually, serving


def serve(**env: str) -> tuple[subprocess.Popen, str, object]:
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV")}
    for name in ("OPENAI_API_KEY", "REALTIME_API_KEY", "AZURE_OPENAI_API_KEY", "TWILIO_AUTH_TOKEN", "PUBLIC_URL",
                 "REDIS_URL", "STORE_URL", "RECORD_CALLS_DIR"):
        clean[name] = ""
    clean.update(LOG_LEVEL="info", PYTHONUNBUFFERED="1", **env)
    log = tempfile.TemporaryFile()
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)], env=clean,
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return process, f"http://127.0.0.1:{port}", log


async def call_up(url: str) -> None:
    """The gateway holds the call (its stream started)."""
    async with httpx.AsyncClient(base_url=url) as http:
        async def one_call() -> bool:
            return (await http.get("/healthz")).json()["active_calls"] == 1
        await eventually(one_call, 15, "the call up")


def output(log) -> str:
    log.seek(0)
    return log.read().decode("utf-8", "replace")


async def test_sigterm_lets_the_live_call_finish_refuses_new_ones_and_exits_0() -> None:
    process, url, log = serve(DRAIN_TIMEOUT_S="60")
    try:
        await serving(url, process)
        turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300, name="before"),
                 CallerTurn(load_sample("caller_question"), after_silence_ms=1500, name="after")]
        call = asyncio.create_task(run_call(url.replace("http", "ws") + "/media-stream", turns, timeout_s=30,
                                            hangup_after_ms=500))
        await call_up(url)
        process.send_signal(signal.SIGTERM)
        async with httpx.AsyncClient(base_url=url) as http:
            async def draining() -> httpx.Response | None:
                ready = await http.get("/readyz")
                return ready if ready.status_code == 503 else None
            ready = await eventually(draining, 10, "/readyz 503 once SIGTERM is handled")
            webhook = await http.post("/incoming-call", data={"CallSid": "CA" + "1" * 32})
            health = (await http.get("/healthz")).json()
        assert ready.status_code == 503 and ready.json()["reason"] == "draining"
        assert "<Say>" in webhook.text and "<Hangup" in webhook.text and "<Stream" not in webhook.text
        assert health["draining"] is True and health["active_calls"] == 1
        assert process.poll() is None  # still serving the live call
        report = await call
        # The call went on through the drain: its next turn was answered, and it ended by the caller's hang-up.
        assert [t.response_ms is not None for t in report.turns] == [True, True]
        assert report.ended_by == "hangup" and report.violations == []
        started = time.monotonic()
        while process.poll() is None and time.monotonic() - started < 10:
            await asyncio.sleep(0.05)
        assert process.returncode == 0, output(log)
        assert "drained" in output(log)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


async def test_sigterm_with_no_call_exits_0_at_once() -> None:
    process, url, log = serve(DRAIN_TIMEOUT_S="60")
    try:
        await serving(url, process)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 10) == 0, output(log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_the_drain_timeout_bounds_the_wait() -> None:
    process, url, log = serve(DRAIN_TIMEOUT_S="1")
    try:
        await serving(url, process)
        call = asyncio.create_task(run_call(url.replace("http", "ws") + "/media-stream",
                                            [CallerTurn(load_sample("caller_hello"), after_silence_ms=300)],
                                            timeout_s=30, hangup_after_ms=20_000))
        await call_up(url)
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert await asyncio.to_thread(process.wait, 10) == 0, output(log)
        assert time.monotonic() - started < 5
        assert "drain timeout" in output(log)
        report = await call
        assert report.ended_by == "gateway_closed"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
