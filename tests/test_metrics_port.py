"""Where ``/metrics`` is served (``gateway.server.metrics_listener``): off the public port with a real model unless
``METRICS_PORT`` (a listener of its own, on ``METRICS_HOST``) or ``METRICS_API_KEY`` says otherwise; on the public
port for the keyless demo; every worker's metrics from the one metrics port with ``--workers``. Real sockets: the
gateway under uvicorn in this process, and real ``gateway serve`` processes."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import sys

import httpx
import pytest

from gateway.config import ConfigError, Settings
from gateway.tooling.fuzz import _clean_env
from gateway.tooling.replay import CallerTurn, load_sample, run_call
from gateway.server.runner import free_port

from .conftest import start_gateway
from .test_operator_paths import run_once, serving
from .helpers import metric

TOKEN = "twilio-auth-token-for-metrics-01"
REAL_MODEL = {"api_key": "sk-test-not-a-real-key", "twilio_auth_token": TOKEN, "public_url": "https://gw.example.test"}
METRICS_KEY = "metrics-key-0123456789abcdef"


async def test_with_a_real_model_and_neither_setting_metrics_are_not_on_the_public_port(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.server.app")
    async with start_gateway(**REAL_MODEL) as gw, httpx.AsyncClient(base_url=gw.http_url) as http:
        assert (await http.get("/metrics")).status_code == 404
        assert (await http.get("/healthz")).status_code == 200
    notice = [record.getMessage() for record in caplog.records if "GET /metrics" in record.getMessage()]
    assert notice and "METRICS_PORT" in notice[0] and "METRICS_API_KEY" in notice[0], notice


async def test_with_a_real_model_a_metrics_key_serves_them_on_the_public_port() -> None:
    async with start_gateway(**REAL_MODEL, metrics_api_key=METRICS_KEY) as gw, \
            httpx.AsyncClient(base_url=gw.http_url) as http:
        assert (await http.get("/metrics")).status_code == 401
        response = await http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"})
        assert response.status_code == 200 and "gateway_calls_active" in response.text


async def test_the_metrics_port_is_a_listener_of_its_own_on_metrics_host() -> None:
    port = free_port()
    async with start_gateway(**REAL_MODEL, metrics_port=port) as gw:
        async with httpx.AsyncClient() as http:
            assert (await http.get(gw.http_url + "/metrics")).status_code == 404
            response = await http.get(f"http://127.0.0.1:{port}/metrics")
            assert response.status_code == 200 and "gateway_calls_active" in response.text
            assert (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 404  # /metrics only
        # Bound to METRICS_HOST (127.0.0.1 by default), not to every address of the host.
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.2", port)
    # Closed with the app.
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_the_metrics_port_asks_for_the_key_when_one_is_set() -> None:
    port = free_port()
    async with start_gateway(**REAL_MODEL, metrics_port=port, metrics_api_key=METRICS_KEY) as gw, \
            httpx.AsyncClient() as http:
        assert (await http.get(gw.http_url + "/metrics")).status_code == 404
        assert (await http.get(f"http://127.0.0.1:{port}/metrics")).status_code == 401
        response = await http.get(f"http://127.0.0.1:{port}/metrics",
                                  headers={"Authorization": f"Bearer {METRICS_KEY}"})
        assert response.status_code == 200


async def test_the_keyless_demo_keeps_metrics_on_the_public_port(gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.http_url) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200 and "gateway_calls_active" in response.text


def test_metrics_settings_are_validated() -> None:
    assert Settings.from_env({}).metrics_host == "127.0.0.1"
    settings = Settings.from_env({"METRICS_PORT": "9090", "METRICS_HOST": "0.0.0.0"})
    assert (settings.metrics_port, settings.metrics_host) == (9090, "0.0.0.0")
    with pytest.raises(ConfigError, match="METRICS_PORT must differ from PORT"):
        Settings.from_env({"METRICS_PORT": "8080"})
    with pytest.raises(ConfigError, match="METRICS_HOST"):
        Settings.from_env({"METRICS_PORT": "9090", "METRICS_HOST": "not an address"})


async def test_gateway_serve_with_a_real_model_serves_metrics_on_the_metrics_port_only(tmp_path) -> None:
    port, metrics_port = free_port(), free_port()
    env = {**_clean_env(), "OPENAI_API_KEY": REAL_MODEL["api_key"], "TWILIO_AUTH_TOKEN": TOKEN,
           "PUBLIC_URL": REAL_MODEL["public_url"], "STORE_URL": "memory://", "METRICS_PORT": str(metrics_port),
           "LOG_LEVEL": "info"}
    with serving([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)], cwd=tmp_path, env=env) as gw:
        gw.wait_for_health(port)
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"http://127.0.0.1:{port}/metrics")).status_code == 404
            response = await http.get(f"http://127.0.0.1:{metrics_port}/metrics")
            assert response.status_code == 200 and "gateway_calls_active" in response.text
        assert f"127.0.0.1:{metrics_port}/metrics" in gw.output()


async def test_every_workers_metrics_from_the_one_metrics_port(tmp_path) -> None:
    port, metrics_port = free_port(), free_port()
    env = {**_clean_env(), "STORE_URL": f"sqlite:///{tmp_path}/records.db", "LOG_LEVEL": "info",
           "METRICS_PORT": str(metrics_port)}
    base = f"http://127.0.0.1:{port}"
    with serving([sys.executable, "-m", "gateway.cli", "serve", "--workers", "2", "--port", str(port)],
                 cwd=tmp_path, env=env) as gw:
        gw.wait_for_health(port)

        async def one_call(index: int) -> None:
            call_sid = f"CA{index:032x}"
            async with httpx.AsyncClient(base_url=base) as http:
                twiml = (await http.post("/incoming-call", data={"CallSid": call_sid})).text
            path = re.search(r'url="wss?://[^/"]+(/media-stream/[^"]+)"', twiml).group(1)
            report = await run_call(f"ws://127.0.0.1:{port}{path}",
                                    [CallerTurn(load_sample("caller_hello"), after_silence_ms=300)],
                                    timeout_s=30, hangup_after_ms=500, call_sid=call_sid)
            assert report.turns, (report.ended_by, report.violations)

        await asyncio.gather(*(one_call(index) for index in range(4)))
        async with httpx.AsyncClient() as http:
            assert (await http.get(base + "/metrics")).status_code == 404  # not on the public port of any worker
            for _ in range(100):
                text = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
                if metric(text, "gateway_calls_total") >= 4 and metric(text, "gateway_calls_active") == 0:
                    break
                await asyncio.sleep(0.1)
        # Whichever worker held a call, the one port counts it.
        assert metric(text, "gateway_calls_total") == 4, text
        # Memory and CPU of every process of the group, served by the supervisor's thread (not its own parent's).
        pids = set(re.findall(r'^process_resident_memory_bytes\{pid="(\d+)"\} [0-9.e+]+$', text, re.M))
        assert str(gw.process.pid) in pids and len(pids) == 3, pids
        assert gw.output().count(f"127.0.0.1:{metrics_port}/metrics") == 1, gw.output()  # the parent's, no worker's


async def test_a_metrics_port_in_use_stops_the_start_with_a_clear_error(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics_port = taken.getsockname()[1]
        env = {**_clean_env(), "STORE_URL": "memory://", "METRICS_PORT": str(metrics_port)}
        for workers in ("1", "2"):
            done = run_once([sys.executable, "-m", "gateway.cli", "serve", "--workers", workers, "--port",
                             str(free_port())], cwd=tmp_path, env=env)
            assert done.returncode != 0
            assert f"METRICS_PORT {metrics_port} on METRICS_HOST 127.0.0.1 cannot be listened on" in done.stderr, \
                done.stderr[-2000:]
