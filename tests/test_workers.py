"""``gateway serve --workers 2``: two processes behind one port share credentials, state and metrics; SIGTERM
drains both and the parent exits 0."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from gateway.tooling.fuzz import _clean_env
from gateway.tooling.replay import CallerTurn, load_sample, run_call
from gateway.observe.process_metrics import parent_of
from gateway.server.runner import free_port

from .helpers import metric, serving


async def test_two_workers_share_credentials_state_and_metrics(tmp_path) -> None:
    port = free_port()
    env = {**_clean_env(), "STORE_URL": f"sqlite:///{tmp_path}/records.db", "LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--workers", "2", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        await serving(base, proc, "/readyz")

        async def one_call(index: int) -> bool:
            async with httpx.AsyncClient(base_url=base) as http:
                twiml = (await http.post("/incoming-call", data={"CallSid": f"CA{index:032x}"})).text
            path = re.search(r'url="wss?://[^/"]+(/media-stream/[^"]+)"', twiml).group(1)
            report = await run_call(f"ws://127.0.0.1:{port}{path}",
                                    [CallerTurn(load_sample("caller_hello"), after_silence_ms=300)],
                                    timeout_s=30, hangup_after_ms=500, call_sid=f"CA{index:032x}")
            assert report.turns, (report.ended_by, report.violations)
            return report.turns[0].response_ms is not None and report.violations == []

        # Credentials issued by whichever worker answered the webhook open streams on whichever gets the socket.
        results = await asyncio.gather(*(one_call(i) for i in range(4)))
        assert all(results), results
        async with httpx.AsyncClient(base_url=base) as http:
            for _ in range(50):
                text = (await http.get("/metrics")).text
                if metric(text, "gateway_calls_active") == 0 and metric(text, "gateway_calls_total") >= 4:
                    break
                await asyncio.sleep(0.1)
        # Whichever worker answered /metrics, it counts every worker's calls.
        assert metric(text, "gateway_calls_total") == 4, text
        assert metric(text, "gateway_turn_latency_seconds_count") == 4
        # Memory and CPU of each process of the group (the supervisor and both workers), for the alerts.
        pids = set(re.findall(r'^process_resident_memory_bytes\{pid="(\d+)"\} [0-9.e+]+$', text, re.M))
        assert str(proc.pid) in pids and len(pids) == 3, pids
        assert metric(text, "process_cpu_seconds_total") > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_sigterm_while_the_workers_start_is_a_clean_stop(tmp_path) -> None:
    """The workers are still importing (no signal handlers yet) when the stop comes: they held no call, exit 0."""
    port = free_port()
    env = {**_clean_env(), "STORE_URL": f"sqlite:///{tmp_path}/records.db", "LOG_LEVEL": "info"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--workers", "2", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the parent says so once its handlers are in and the workers are spawned
            if "workers on" in line:
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _children(pid: int) -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and parent_of(int(entry)) == pid]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().split(b") ", 1)[1][:1] != b"Z"  # a zombie is gone, only not yet reaped
    except OSError:
        return False


async def test_workers_stop_when_their_supervisor_is_killed(tmp_path) -> None:
    """kill -9 of the supervisor: its workers drain and exit instead of serving the port with nobody over them."""
    port = free_port()
    env = {**_clean_env(), "STORE_URL": f"sqlite:///{tmp_path}/records.db", "LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--workers", "2", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    workers: list[int] = []
    try:
        await serving(f"http://127.0.0.1:{port}", proc, "/readyz")
        workers = [pid for pid in _children(proc.pid)
                   if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]  # closed at once
        assert len(workers) == 2, workers
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not any(_alive(pid) for pid in workers), "workers outlived their supervisor"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
