"""``gateway bench`` (one run): the gateway's own CPU per call-second under a realistic load.

Three processes, so each one's CPU time is its own:

* the embedded model server (``gateway local-realtime``, the echo agent) in a subprocess;
* the gateway (``gateway serve``, pointed at it with ``REALTIME_URL`` and an API key, so it does not start
  its own embedded server) in another subprocess;
* the load generator: ``calls`` replay phones (:mod:`gateway.tooling.replay.phone`) in this process, started evenly
  over ``ramp`` seconds. Every phone says a bundled phrase, waits for the echo agent's answer (media +
  marks, played back in real time, marks echoed), says it again, and so on: 50 caller frames/s each, the
  whole time.

Every call lasts ``ramp + seconds + 2 * MARGIN_S``, so all ``calls`` are up for the whole measured window
of ``seconds``, which starts ``MARGIN_S`` after the last call was started. The CPU times (utime + stime from
``/proc/PID/stat`` for the subprocesses, ``getrusage`` for this one) and the phones' message counters are
sampled at both ends of that window; the figures are the differences. A benchmark is a program that prints
figures: nothing here asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from gateway.tooling.command import Stopped, run_command
from gateway.tooling.replay.load import LoadReport, Percentiles, run_load
from gateway.tooling.replay.phone import FRAME_MS, CallerTurn, Phone, call_with
from gateway.tooling.replay.report import CallReport
from gateway.server.runner import free_port
from gateway.audio.wavio import load_sample

MARGIN_S = 1.0  # between the last call's start and the window, and between the window and the first call's end
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
THINK_MS = 400.0  # the caller's silence after the agent's answer, before talking again
SAMPLE = "caller_hello"
LAG_SATURATED_MS = FRAME_MS  # a phone that sends a frame a whole frame late: the harness cannot keep up
BUSY_SATURATED = 0.9  # the machine busier than this (fraction of all cores): everything competes for CPU


# ---------------------------------------------------------------------- CPU time of a process


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU time of process ``pid`` so far, in seconds (Linux ``/proc``; psutil elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            raise ProcessLookupError(pid) from None
        import psutil  # not on Linux: optional

        times = psutil.Process(pid).cpu_times()
        return float(times.user), float(times.system)
    # The command name (field 2) is in parentheses and may hold spaces: split after its closing one.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK  # fields 14 and 15: utime, stime


def process_cpu_s(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far, in seconds."""
    return sum(process_cpu_times(pid))


def process_rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` in MB (Linux), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def self_cpu_times() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def machine_busy_s() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine so far, all cores (``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (total - idle) / _CLK_TCK, total / _CLK_TCK


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    return {
        "nproc": os.cpu_count(),
        "cpu": model or platform.processor(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "event_loop": _event_loop_name(),
    }


def _event_loop_name() -> str:
    """What ``uvicorn`` picks for the gateway (``loop="auto"``): uvloop when installed, else asyncio."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


# ---------------------------------------------------------------------- the phones


@dataclass
class Counters:
    """Messages both ways on the Twilio side, counted by the phones; frame-send lags while ``in_window``."""

    sent: dict[str, int] = field(default_factory=dict)  # phone -> gateway, by event
    received: dict[str, int] = field(default_factory=dict)  # gateway -> phone, by event
    live: int = 0  # calls open now
    in_window: bool = False
    lags_ms: list[float] = field(default_factory=list)

    def snapshot(self) -> tuple[dict[str, int], dict[str, int], int]:
        return dict(self.sent), dict(self.received), self.live


class BenchPhone(Phone):
    """A replay phone that counts its messages, hangs up at ``duration_ms``, and notes each frame's send lag."""

    def __init__(self, turns: list[CallerTurn], counters: Counters, duration_ms: float) -> None:
        super().__init__(turns, hangup_after_ms=duration_ms, timeout_ms=duration_ms + 30_000.0)
        self._counters = counters
        self._duration_ms = duration_ms
        self._open = False

    def _count(self, out: list[dict[str, Any]]) -> list[dict[str, Any]]:
        sent = self._counters.sent
        for message in out:
            event = message["event"]
            sent[event] = sent.get(event, 0) + 1
        if self.done and self._open:
            self._open = False
            self._counters.live -= 1
        return out

    def open(self, now_ms: float = 0.0) -> list[dict[str, Any]]:
        self._open = True
        self._counters.live += 1
        return self._count(super().open(now_ms))

    def receive(self, message: str | bytes, now_ms: float) -> list[dict[str, Any]]:
        media, marks, clears = self._media_received, len(self._marks), len(self._clears)
        out = super().receive(message, now_ms)
        received = self._counters.received
        kinds = (
            ("media", self._media_received - media),
            ("mark", len(self._marks) - marks),
            ("clear", len(self._clears) - clears),
        )
        known = 0
        for kind, n in kinds:
            if n:
                received[kind] = received.get(kind, 0) + n
                known += n
        if not known:
            received["other"] = received.get("other", 0) + 1
        return self._count(out)

    def tick(self, now_ms: float) -> list[dict[str, Any]]:
        if now_ms >= self._duration_ms:
            return self._count(self.hangup(now_ms))
        if self._counters.in_window:
            lag = now_ms - (self._frame + 1) * FRAME_MS  # how late the next frame goes out, if one is due
            if lag >= 0:
                self._counters.lags_ms.append(lag)
        return self._count(super().tick(now_ms))

    def gateway_closed(self, now_ms: float) -> None:
        super().gateway_closed(now_ms)
        self._count([])


def caller_turns(duration_ms: float, audio: bytes, think_ms: float = THINK_MS) -> list[CallerTurn]:
    """Enough turns of ``audio`` to talk for ``duration_ms``: each one after the agent's answer to the last."""
    n = max(1, math.ceil(duration_ms / max(1.0, len(audio) / 8.0)) + 1)
    return [CallerTurn(audio, after_silence_ms=think_ms, name=f"say{i}") for i in range(n)]


# ---------------------------------------------------------------------- the subprocesses


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux send the child SIGTERM if this process dies (even by SIGKILL)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the forked child
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


class Child:
    """One subprocess of the bench, its stderr in a temporary file (shown if it fails)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.log = tempfile.TemporaryFile(mode="w+b")
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal reaches the bench, which stops us in order
            preexec_fn=_die_with_parent(),  # noqa: PLW1509 - one prctl call, resolved before the fork
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError, ValueError):
            self.log.seek(0)
            text = self.log.read().decode("utf-8", "replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    def check_running(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with status {code}:\n{self.output_tail()}")


def stop_children(children: list[Child], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM every child still running, wait up to ``timeout_s`` in all, SIGKILL the rest, reap them all."""
    for child in children:
        if child.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.terminate()
    deadline = time.monotonic() + timeout_s
    for child in children:
        try:
            child.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(2.0)
        child.log.close()


async def _http_get(host: str, port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


async def _wait_until(child: Child, ready: Callable[[], Any], timeout_s: float = STARTUP_TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        child.check_running()
        with contextlib.suppress(OSError, ValueError, IndexError):
            result = await ready()
            if result is not None:
                return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"{child.name} not ready after {timeout_s:g} s:\n{child.output_tail()}")
        await asyncio.sleep(0.05)


async def _port_open(host: str, port: int) -> bool | None:
    _, writer = await asyncio.open_connection(host, port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


# ---------------------------------------------------------------------- the bench


@dataclass
class BenchConfig:
    calls: int = 50
    seconds: float = 20.0
    audio_format: str = "pcm16"
    ramp: float = 5.0

    def command(self) -> str:
        return (
            f"gateway bench --calls {self.calls} --seconds {self.seconds:g} "
            f"--audio-format {self.audio_format} --ramp {self.ramp:g}"
        )


@dataclass
class Sample:
    """Everything the bench reads at one end of the window."""

    wall_s: float
    gateway_cpu: tuple[float, float]  # (user, system) seconds
    model_cpu: tuple[float, float]
    load_cpu: tuple[float, float]
    machine: tuple[float, float] | None
    sent: dict[str, int]
    received: dict[str, int]
    live: int

    @classmethod
    def take(cls, gateway_pid: int, model_pid: int, counters: Counters) -> Sample:
        sent, received, live = counters.snapshot()
        return cls(
            time.monotonic(),
            process_cpu_times(gateway_pid),
            process_cpu_times(model_pid),
            self_cpu_times(),
            machine_busy_s(),
            sent,
            received,
            live,
        )


@dataclass
class BenchResult:
    config: BenchConfig
    machine: dict[str, Any]
    gateway_pid: int
    model_pid: int
    start: Sample
    end: Sample
    load: LoadReport
    frame_lag_ms: Percentiles | None
    gateway_rss_mb: float | None
    warnings: list[str] = field(default_factory=list)

    # ---- derived figures

    @property
    def window_s(self) -> float:
        return self.end.wall_s - self.start.wall_s

    @property
    def call_seconds(self) -> float:
        """Calls times seconds in the window (the calls up at its start; see ``calls_up``)."""
        return self.start.live * self.window_s

    def _per_call_s_ms(self, cpu_s: float) -> float:
        return cpu_s * 1000.0 / self.call_seconds if self.call_seconds > 0 else float("nan")

    def _pct(self, cpu_s: float) -> float:
        return cpu_s / self.window_s * 100.0 if self.window_s > 0 else float("nan")

    def cpu(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, key in (("gateway", "gateway_cpu"), ("model_server", "model_cpu"), ("load_generator", "load_cpu")):
            (user0, sys0), (user1, sys1) = getattr(self.start, key), getattr(self.end, key)
            user, system = user1 - user0, sys1 - sys0
            cpu_s = user + system
            out[name] = {
                "cpu_s": round(cpu_s, 3),
                "user_s": round(user, 3),
                "system_s": round(system, 3),
                "ms_per_call_second": round(self._per_call_s_ms(cpu_s), 3),
                "pct_of_one_core": round(self._pct(cpu_s), 1),
            }
        return out

    def machine_busy_pct(self) -> float | None:
        if self.start.machine is None or self.end.machine is None:
            return None
        busy = self.end.machine[0] - self.start.machine[0]
        total = self.end.machine[1] - self.start.machine[1]
        return busy / total * 100.0 if total > 0 else None

    def bench_share_pct(self) -> float:
        """The three bench processes' CPU in the window, in percent of all the machine's CPUs."""
        cpu = sum(c["cpu_s"] for c in self.cpu().values())
        cores = self.machine.get("nproc") or 1
        return cpu / (self.window_s * cores) * 100.0 if self.window_s > 0 else float("nan")

    def messages(self) -> dict[str, dict[str, float]]:
        """Twilio-side WebSocket messages per call-second in the window, by direction and event."""

        def rates(end: dict[str, int], start: dict[str, int]) -> dict[str, float]:
            keys = sorted(set(end) | set(start))
            out = {k: round((end.get(k, 0) - start.get(k, 0)) / self.call_seconds, 2) for k in keys} if self.call_seconds else {}
            out = {k: v for k, v in out.items() if v}
            out["total"] = round(sum(out.values()), 2)
            return out

        return {
            "to_gateway": rates(self.end.sent, self.start.sent),
            "from_gateway": rates(self.end.received, self.start.received),
        }

    def to_dict(self) -> dict[str, Any]:
        def p(value: Percentiles | None) -> dict[str, float | int] | None:
            return None if value is None else value.to_dict()

        busy = self.machine_busy_pct()
        return {
            "command": self.config.command(),
            "machine": self.machine,
            "config": {
                "calls": self.config.calls,
                "seconds": self.config.seconds,
                "audio_format": self.config.audio_format,
                "ramp_s": self.config.ramp,
                "call_length_s": round(call_length_s(self.config), 3),
            },
            "pids": {"gateway": self.gateway_pid, "model_server": self.model_pid},
            "window_s": round(self.window_s, 3),
            "calls_up": {"window_start": self.start.live, "window_end": self.end.live},
            "calls_completed": self.load.succeeded,
            "calls_failed": self.load.failed,
            "failures": [f"call {f.index}: {f.error}" for f in self.load.failures],
            "cpu": self.cpu(),
            "machine_busy_pct": None if busy is None else round(busy, 1),
            "bench_processes_pct_of_machine": round(self.bench_share_pct(), 1),
            "gateway_rss_mb": None if self.gateway_rss_mb is None else round(self.gateway_rss_mb, 1),
            "messages_per_call_second": self.messages(),
            "frame_send_lag_ms": p(self.frame_lag_ms),
            "max_frame_lag_per_call_ms": p(self.load.metrics.get("max_frame_lag_ms")),
            "turn_latency_ms": p(self.load.metrics.get("turn_latency_ms")),
            "unanswered_turns_per_call": p(self.load.metrics.get("unanswered_turns")),
            "violations_per_call": p(self.load.metrics.get("violations")),
            "warnings": list(self.warnings),
        }

    def format(self) -> str:
        d = self.to_dict()
        m = d["machine"]
        lines = [
            f"command: {d['command']}",
            f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['implementation']} {m['python']}, gateway loop {m['event_loop']}, {m['platform']}",
            f"window:  {d['window_s']:.1f} s with {d['calls_up']['window_start']} calls up "
            f"({d['calls_up']['window_end']} at its end); every call {d['config']['call_length_s']:g} s, "
            f"started over {self.config.ramp:g} s; {d['calls_completed']} completed, {d['calls_failed']} failed",
            "",
            f"  {'process':<16}  {'CPU ms / call-s':>15}  {'% of one core':>13}  {'CPU s':>7}  {'user s':>7}  {'sys s':>7}",
            "  " + "-" * 75,
        ]
        labels = {"gateway": "gateway", "model_server": "model server", "load_generator": "load generator"}
        for key, label in labels.items():
            c = d["cpu"][key]
            lines.append(
                f"  {label:<16}  {c['ms_per_call_second']:>15.2f}  {c['pct_of_one_core']:>13.1f}  {c['cpu_s']:>7.2f}"
                f"  {c['user_s']:>7.2f}  {c['system_s']:>7.2f}"
            )
        busy = d["machine_busy_pct"]
        if busy is not None:
            lines.append(
                f"  machine busy: {busy:.0f}% of all {m['nproc']} CPUs "
                f"(the bench's three processes: {d['bench_processes_pct_of_machine']:.0f}%, the rest: other programs)"
            )
        if d["gateway_rss_mb"] is not None:
            lines.append(f"  gateway RSS at the end of the window: {d['gateway_rss_mb']:.0f} MB")
        lines.append("")
        lines.append("  Twilio-side messages per call-second (the gateway's WebSocket to the phone):")
        for direction, label in (("to_gateway", "phone -> gateway"), ("from_gateway", "gateway -> phone")):
            rates = d["messages_per_call_second"][direction]
            parts = ", ".join(f"{k} {v:g}" for k, v in rates.items() if k != "total")
            lines.append(f"    {label}: {rates['total']:g}  ({parts})")
        lines.append("")
        lines.append(f"  {'measurement':<36}  {'n':>6}  {'p50':>8}  {'p95':>8}  {'p99':>8}  {'max':>8}")
        lines.append("  " + "-" * 82)
        rows = (
            ("frame send lag in the window (ms)", self.frame_lag_ms),
            ("max frame lag per call (ms)", self.load.metrics.get("max_frame_lag_ms")),
            ("turn latency (ms)", self.load.metrics.get("turn_latency_ms")),
            ("turns unanswered / call", self.load.metrics.get("unanswered_turns")),
            ("violations / call", self.load.metrics.get("violations")),
        )
        for label, pct in rows:
            if pct is None:
                lines.append(f"  {label:<36}  {0:>6}  {'-':>8}  {'-':>8}  {'-':>8}  {'-':>8}")
            else:
                lines.append(
                    f"  {label:<36}  {pct.count:>6}  {pct.p50:>8.1f}  {pct.p95:>8.1f}  {pct.p99:>8.1f}  {pct.max:>8.1f}"
                )
        for failure in d["failures"]:
            lines.append(f"  failed: {failure}")
        for warning in d["warnings"]:
            lines.append(f"WARNING: {warning}")
        return "\n".join(lines)


def call_length_s(config: BenchConfig) -> float:
    return config.ramp + config.seconds + 2 * MARGIN_S


def _warnings(result: BenchResult) -> list[str]:
    out = []
    lag = result.frame_lag_ms
    if lag is not None and lag.p99 > LAG_SATURATED_MS:
        out.append(
            f"the phones sent frames up to {lag.p99:.0f} ms late (p99; max {lag.max:.0f} ms): the load generator "
            "could not keep its 20 ms schedule; the harness was saturated and the figures are not trustworthy"
        )
    busy = result.machine_busy_pct()
    if busy is not None and busy > BUSY_SATURATED * 100:
        out.append(
            f"the machine was {busy:.0f}% busy ({result.bench_share_pct():.0f}% the bench's processes): they competed "
            "for CPU; the gateway's CPU time per call-second is still its own, but its scheduling was not"
        )
    if result.start.live != result.config.calls or result.end.live != result.config.calls:
        out.append(
            f"only {result.start.live} calls were up at the window's start and {result.end.live} at its end "
            f"(of {result.config.calls}); the per-call-second figures use {result.start.live}"
        )
    if result.load.failed:
        out.append(f"{result.load.failed} calls failed")
    return out


async def run_bench(config: BenchConfig, *, progress: bool = True, log: Callable[[str], None] | None = None) -> BenchResult:
    """Run the bench (see the module docstring); the subprocesses are stopped however it ends."""
    if config.calls < 1:
        raise ValueError("--calls must be at least 1")
    if config.seconds <= 0:
        raise ValueError("--seconds must be positive")
    if config.ramp < 0:
        raise ValueError("--ramp must be >= 0")
    say = log or (lambda text: print(text, file=sys.stderr, flush=True))
    host = "127.0.0.1"
    children: list[Child] = []
    sigterm = False
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        task = asyncio.current_task()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, task.cancel)  # type: ignore[union-attr]
            sigterm = True
    try:
        base_env = {k: v for k, v in os.environ.items()}
        base_env["LOG_LEVEL"] = "warning"
        base_env["PYTHONUNBUFFERED"] = "1"
        model_port = free_port(host)
        model = Child(
            "model server",
            [sys.executable, "-m", "gateway.cli", "local-realtime", "--host", host, "--port", str(model_port)],
            base_env,
        )
        children.append(model)
        gateway_port = free_port(host)
        gateway_env = dict(base_env)
        gateway_env.update(
            REALTIME_URL=f"ws://{host}:{model_port}/v1/realtime",
            REALTIME_API_KEY="bench",
            AUDIO_FORMAT=config.audio_format,
            TWILIO_AUTH_TOKEN="",  # the phones do not sign their requests
            # A loopback-only measurement with a stand-in model: the unsigned development mode is what it needs.
            INSECURE_DEV_MODE="true",
            DRAIN_TIMEOUT_S="0",  # stopped by the bench once its calls are done: no drain to wait for
            MAX_CALLS=str(max(100, config.calls * 2)),
            RECORD_CALLS_DIR="",
            # Every phone calls from 127.0.0.1: one address's share must hold them all.
            MAX_CONNECTIONS=str(max(1000, config.calls * 4)),
            MAX_CONNECTIONS_PER_ADDRESS=str(max(250, config.calls * 2)),
        )
        gateway_env.pop("OPENAI_API_KEY", None)
        gateway_env.pop("AZURE_OPENAI_API_KEY", None)
        gateway = Child(
            "gateway",
            [sys.executable, "-m", "gateway.cli", "serve", "--host", host, "--port", str(gateway_port)],
            gateway_env,
        )
        children.append(gateway)

        await _wait_until(model, lambda: _port_open(host, model_port))

        async def healthy() -> dict[str, Any] | None:
            status, body = await _http_get(host, gateway_port, "/healthz")
            return json.loads(body) if status == 200 else None

        health = await _wait_until(gateway, healthy)
        if health.get("model") == "embedded":
            raise RuntimeError("the gateway started its own embedded model server; the bench needs it apart")
        say(
            f"bench: gateway pid {gateway.pid} on :{gateway_port}, model server pid {model.pid} on :{model_port}; "
            f"{config.calls} calls of {call_length_s(config):g} s, window {config.seconds:g} s "
            f"from t = {config.ramp + MARGIN_S:g} s"
        )

        url = f"ws://{host}:{gateway_port}/media-stream"
        audio = load_sample(SAMPLE)
        duration_ms = call_length_s(config) * 1000.0
        counters = Counters()

        async def one(i: int) -> CallReport:
            # Each call lasts the same; the last one starts at the end of the ramp.
            phone = BenchPhone(caller_turns(duration_ms, audio), counters, duration_ms)
            return await call_with(phone, url)

        samples: list[Sample] = []

        async def sampler(t0: float) -> None:
            start_at = t0 + config.ramp + MARGIN_S
            await asyncio.sleep(max(0.0, start_at - loop.time()))
            counters.in_window = True
            samples.append(Sample.take(gateway.pid, model.pid, counters))
            await asyncio.sleep(max(0.0, start_at + config.seconds - loop.time()))
            samples.append(Sample.take(gateway.pid, model.pid, counters))
            counters.in_window = False
            gateway.check_running()
            model.check_running()

        t0 = loop.time()
        sampling = asyncio.create_task(sampler(t0))
        try:
            load = await run_load(one, config.calls, ramp_s=config.ramp, progress=progress)
        finally:
            if not sampling.done():
                sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
        if len(samples) != 2:
            gateway.check_running()  # a crashed subprocess says why, with its output
            model.check_running()
            raise RuntimeError(f"the calls ended before the window did: {load.failed} of {config.calls} failed")
        lags = Percentiles.of(np.asarray(counters.lags_ms, dtype=np.float64)) if counters.lags_ms else None
        result = BenchResult(
            config=config,
            machine=machine(),
            gateway_pid=gateway.pid,
            model_pid=model.pid,
            start=samples[0],
            end=samples[1],
            load=load,
            frame_lag_ms=lags,
            gateway_rss_mb=process_rss_mb(gateway.pid),
        )
        result.warnings = _warnings(result)
        return result
    finally:
        if sigterm:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signal.SIGTERM)
        stop_children(children)


def main(calls: int, seconds: float, audio_format: str, ramp: float, as_json: bool) -> int:
    """``gateway bench``: run, print the table (or JSON); 0 when every call completed, 1 otherwise."""
    config = BenchConfig(calls=calls, seconds=seconds, audio_format=audio_format, ramp=ramp)
    try:
        result = run_command("bench", run_bench(config))
    except Stopped as stopped:
        return stopped.status
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.format())
    return 0 if result.load.failed == 0 else 1


__all__ = ["BenchConfig", "BenchResult", "BenchPhone", "Counters", "caller_turns", "main", "process_cpu_s", "process_cpu_times", "run_bench"]
