"""``gateway bench --steps 25,50,...``: the gateway beside a null relay, at rising concurrency, in one run.

For every step (a number of concurrent calls) and every target, in this order:

* ``relay``: the null relay (:mod:`.relay`) in front of the mirror model (:mod:`.models`): the cheapest thing
  that moves the same messages on the same stack (Starlette + uvicorn, the gateway's server options);
* ``pcmu``: the gateway, ``AUDIO_FORMAT=pcmu`` (pass-through), in front of the embedded Realtime echo agent;
* ``pcm16``: the gateway transcoding (mu-law 8 kHz <-> PCM16 24 kHz), same model.

The server under test is pinned to CPU 0; the load generator (this process: the replay phones,
:mod:`gateway.tooling.replay`) and the model process to CPU 1. Every phone says a phrase (about 1.5 s), waits for the
echo agent's answer, and barges in 600 ms into it with the next one, for the whole call: every cycle is a
barge-in. The window starts once every call of the step is up.

Per step and target: the server's CPU per call-second (user + system, ``/proc``) and its ratio to the relay's;
per-frame forwarding delay both ways (p50/p99/max, see below); caller audio lost (frames) and late (frames
more than 20 ms behind their session's best); turn latency and barge-in stop time as the phones measure them;
the server's RSS before the first call and per call; and whether the load generator kept its 20 ms schedule
(p99 of the phones' send lag under 20 ms). A step where it did not is marked ``LOAD BEHIND``: its figures are
the harness's as much as the server's, and the run stops rising.

Forwarding delay, on the one monotonic clock all the processes share, as delay above the session's best frame:

* phone -> model: the model process notes when each frame of caller audio came off its socket and where the
  frame ends on the call's audio clock; the phone sends the frame ending at ``p`` at stream time ``p``, so
  ``arrival - p`` is the one-way delay plus a per-call constant, and ``arrival - p - min(arrival - p)`` is
  what that frame took beyond the call's fastest (the phone's own send lag included, shown apart);
* model -> phone: the agent's audio is sent by the model at real time, one 100 ms chunk every 100 ms from the
  start of its answer; the phone notes when each chunk arrives, and ``arrival - 100 ms * k`` minus its
  minimum over the answer is the chunk's delay beyond the fastest.

On loopback the fastest frame's own delay is a fraction of a millisecond; it is not in the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from gateway.tooling.command import Stopped, run_command
from gateway.tooling.replay.load import Percentiles, run_load
from gateway.tooling.replay.phone import FRAME_MS, CallerTurn, call_with
from gateway.tooling.replay.report import CallReport
from gateway.server.runner import free_port
from gateway.audio.wavio import load_sample

from .models import inbound_delays
from .single import (
    MARGIN_S,
    SAMPLE,
    BenchPhone,
    Child,
    Counters,
    _http_get,
    _port_open,
    _wait_until,
    machine,
    process_cpu_times,
    process_rss_mb,
    stop_children,
)

TARGETS = ("relay", "pcmu", "pcm16")
BARGE_IN_AFTER_MS = 600.0
CHUNK_S = 0.1
NEW_ANSWER_GAP_S = 0.25  # agent audio this long after the previous chunk is the start of another answer
LATE_MS = 20.0
SERVER_CPU = 0
LOAD_CPU = 1


@dataclass
class StepsConfig:
    steps: list[int] = field(default_factory=lambda: [25, 50, 100])
    seconds: float = 20.0
    ramp: float = 5.0
    targets: tuple[str, ...] = TARGETS
    tls: bool = False
    out_dir: str = ""
    gateway_path: str = ""  # run the gateway from another checkout (PYTHONPATH), for before/after figures
    # Rounds per step: the targets run in turn, round after round, and each round's ratios are to that round's
    # relay; the summary takes the median. A shared machine's speed drifts by tens of percent over minutes, so
    # one relay run against one gateway run a minute later can say more about the machine than the gateway.
    repeat: int = 1

    def command(self) -> str:
        parts = [f"gateway bench --steps {','.join(map(str, self.steps))} --seconds {self.seconds:g} --ramp {self.ramp:g}"]
        if tuple(self.targets) != TARGETS:
            parts.append(f"--targets {','.join(self.targets)}")
        if self.tls:
            parts.append("--tls")
        if self.repeat > 1:
            parts.append(f"--repeat {self.repeat}")
        return " ".join(parts)


class StepPhone(BenchPhone):
    """A bench phone that also notes when each chunk of agent audio arrives (monotonic s) and each clear."""

    def __init__(self, turns: list[CallerTurn], counters: Counters, duration_ms: float) -> None:
        super().__init__(turns, counters, duration_ms)
        self.arrivals: list[tuple[float, int]] = []  # (monotonic s, answer number)
        self._answer = 0
        self._last = -1.0

    def receive(self, message: str | bytes, now_ms: float) -> list[dict[str, Any]]:
        arrived = time.monotonic()
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        if '"event":"media"' in text or '"event": "media"' in text:
            if arrived - self._last > NEW_ANSWER_GAP_S:
                self._answer += 1
            self._last = arrived
            self.arrivals.append((arrived, self._answer))
        elif '"clear"' in text:
            self._answer += 1
            self._last = -1.0
        return super().receive(message, now_ms)


def outbound_delays(phones: list[StepPhone], window: tuple[float, float]) -> np.ndarray:
    out: list[np.ndarray] = []
    for phone in phones:
        if not phone.arrivals:
            continue
        data = np.asarray(phone.arrivals, dtype=np.float64)
        for answer in np.unique(data[:, 1]):
            times = data[data[:, 1] == answer, 0]
            offset = (times - CHUNK_S * np.arange(len(times))) * 1000.0
            inside = (times >= window[0]) & (times < window[1])
            if inside.any() and len(times) > 1:
                out.append(offset[inside] - offset.min())
    return np.concatenate(out) if out else np.zeros(0)


def barge_in_turns(duration_ms: float, audio: bytes) -> list[CallerTurn]:
    n = max(2, int(duration_ms / 1500.0) + 2)
    first = CallerTurn(audio, after_silence_ms=400.0, name="say0")
    return [first] + [CallerTurn(audio, after_agent_heard_ms=BARGE_IN_AFTER_MS, name=f"barge{i}") for i in range(1, n)]


def self_signed(directory: str) -> tuple[str, str]:
    """A certificate for 127.0.0.1 / localhost made now (cryptography), and its key: (cert path, key path)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway bench")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


async def own_metrics(host: str, metrics_port: int, port: int) -> dict[str, dict[float, float]] | None:
    """:func:`own_delay_buckets` from METRICS_PORT, or from the gateway's own port (a ``--gateway-path`` checkout
    from before METRICS_PORT had a listener)."""
    return await own_delay_buckets(host, metrics_port) or await own_delay_buckets(host, port)


async def own_delay_buckets(host: str, port: int) -> dict[str, dict[float, float]] | None:
    """The gateway's per-frame forwarding-delay histogram from its /metrics: direction -> {le: cumulative count}."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        status, body = await _http_get(host, port, "/metrics")
    except OSError:
        return None
    if status != 200:
        return None
    buckets: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        if family.name != "gateway_frame_forward_delay_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets.setdefault(sample.labels["direction"], {})[float(sample.labels["le"])] = sample.value
    return buckets


def own_delay(start: dict[str, dict[float, float]] | None,
              end: dict[str, dict[float, float]] | None) -> dict[str, dict[str, Any]] | None:
    """Per direction, over the window: frames counted, the share written within 1, 5 and 10 ms of their arrival,
    and the bucket bound the 99th percentile falls under."""
    if not start or not end:
        return None
    result: dict[str, dict[str, Any]] = {}
    for direction, after in end.items():
        before = start.get(direction, {})
        counts = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
        total = counts.get(float("inf"), 0.0)
        if not total:
            continue
        p99 = next(le for le, count in counts.items() if count >= 0.99 * total)
        result[direction] = {"frames": int(total), "p99_under_ms": p99 * 1000.0,
                             **{f"within_{ms}_ms": round(counts.get(ms / 1000.0, 0.0) / total, 5)
                                for ms in (1, 5, 10)}}
    return result


def process_syscalls(pid: int) -> dict[str, int] | None:
    """Read and write system calls of process ``pid`` so far (Linux ``/proc/PID/io``; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/io") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return {"read": int(fields["syscr"]), "write": int(fields["syscw"])}
    except (OSError, KeyError, ValueError):
        return None


def _pin(pid: int, cpu: int) -> bool:
    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        return False
    with contextlib.suppress(OSError):
        os.sched_setaffinity(pid, {cpu})
        return True
    return False


def _p(values: np.ndarray) -> dict[str, float] | None:
    pct = Percentiles.of(values) if len(values) else None
    return None if pct is None else {"count": pct.count, "p50": round(pct.p50, 2), "p99": round(pct.p99, 2), "max": round(pct.max, 2)}


def _pd(value: Percentiles | None) -> dict[str, float] | None:
    return None if value is None else {"count": value.count, "p50": round(value.p50, 1), "p99": round(value.p99, 1), "max": round(value.max, 1)}


async def run_target(config: StepsConfig, target: str, calls: int, workdir: str,
                     say: Callable[[str], None]) -> dict[str, Any]:
    host = "127.0.0.1"
    # Every phone calls from 127.0.0.1: one address's share of the relay's and the gateway's connections must hold
    # them all (gateway.server.connection_caps).
    env = dict(os.environ, LOG_LEVEL="warning", PYTHONUNBUFFERED="1", MAX_CONNECTIONS=str(max(1000, calls * 4)),
               MAX_CONNECTIONS_PER_ADDRESS=str(max(250, calls * 2)))
    scheme = "ws"
    model_args: list[str] = []
    if config.tls:
        cert, key = self_signed(workdir)
        model_args = ["--tls-cert", cert, "--tls-key", key]
        env["SSL_CERT_FILE"] = cert  # the gateway's (and the relay's) client trusts the run's own certificate
        scheme = "wss"
    report = os.path.join(workdir, f"arrivals-{target}-{calls}.json")
    model_port, server_port, metrics_port = free_port(host), free_port(host), free_port(host)
    children: list[Child] = []
    try:
        kind = "mirror" if target == "relay" else "realtime"
        model = Child("model", [sys.executable, "-m", "gateway.tooling.bench.models", kind, "--port", str(model_port),
                                "--report", report, *model_args], env)
        children.append(model)
        upstream = f"{scheme}://{host}:{model_port}" + ("" if target == "relay" else "/v1/realtime")
        if target == "relay":
            server = Child("relay", [sys.executable, "-m", "gateway.tooling.bench.relay", "--port", str(server_port),
                                     "--upstream", upstream], env)
        else:
            server_env = dict(env, REALTIME_URL=upstream, REALTIME_API_KEY="bench", AUDIO_FORMAT=target,
                              TWILIO_AUTH_TOKEN="", INSECURE_DEV_MODE="true", DRAIN_TIMEOUT_S="0",
                              MAX_CALLS=str(max(100, calls * 2)), RECORD_CALLS_DIR="",
                              METRICS_PORT=str(metrics_port))  # a real model's /metrics is off the public port
            server_env.pop("OPENAI_API_KEY", None)
            server_env.pop("AZURE_OPENAI_API_KEY", None)
            serve = ["serve", "--host", host, "--port", str(server_port)]
            if config.gateway_path:
                # Not `-m`: it puts the current folder (this checkout) first on sys.path, whatever PYTHONPATH says.
                launch = ["-c", f"import sys; sys.path.insert(0, {config.gateway_path!r}); "
                                f"from gateway.cli import main; sys.exit(main({serve!r}))"]
            else:
                launch = ["-m", "gateway.cli", *serve]
            server = Child("gateway", [sys.executable, *launch], server_env)
        children.append(server)
        _pin(server.pid, SERVER_CPU)
        _pin(model.pid, LOAD_CPU)
        await _wait_until(model, lambda: _port_open(host, model_port))
        if target == "relay":
            await _wait_until(server, lambda: _port_open(host, server_port))
        else:
            async def healthy() -> bool | None:
                status, _ = await _http_get(host, server_port, "/healthz")
                return True if status == 200 else None

            await _wait_until(server, healthy)
        await asyncio.sleep(0.5)
        base_rss = process_rss_mb(server.pid)

        audio = load_sample(SAMPLE)
        duration_ms = (config.ramp + config.seconds + 2 * MARGIN_S) * 1000.0
        counters = Counters()
        phones: list[StepPhone] = []
        url = f"ws://{host}:{server_port}/media-stream"

        async def one(i: int) -> CallReport:
            phone = StepPhone(barge_in_turns(duration_ms, audio), counters, duration_ms)
            phones.append(phone)
            return await call_with(phone, url)

        marks: dict[str, Any] = {}
        loop = asyncio.get_running_loop()

        async def sampler(t0: float) -> None:
            start_at = t0 + config.ramp + MARGIN_S
            await asyncio.sleep(max(0.0, start_at - loop.time()))
            counters.in_window = True
            marks["start"] = (time.monotonic(), process_cpu_times(server.pid), counters.live, dict(counters.sent))
            marks["io_start"] = process_syscalls(server.pid)
            if target != "relay":
                marks["own_start"] = await own_metrics(host, metrics_port, server_port)
            await asyncio.sleep(max(0.0, start_at + config.seconds - loop.time()))
            marks["end"] = (time.monotonic(), process_cpu_times(server.pid), counters.live, dict(counters.sent))
            marks["io_end"] = process_syscalls(server.pid)
            if target != "relay":
                marks["own_end"] = await own_metrics(host, metrics_port, server_port)
            marks["rss"] = process_rss_mb(server.pid)
            counters.in_window = False

        sampling = asyncio.create_task(sampler(loop.time()))
        try:
            load = await run_load(one, calls, ramp_s=config.ramp, progress=False)
        finally:
            if not sampling.done():
                sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
        if "end" not in marks:
            server.check_running()
            raise RuntimeError(f"{target}: the calls ended before the window did ({load.failed} of {calls} failed)")
    finally:
        stop_children(children)
    (t0, (u0, s0), live, sent0), (t1, (u1, s1), _, sent1) = marks["start"], marks["end"]
    window = (t0, t1)
    call_s = live * (t1 - t0)
    cpu_s = (u1 - u0) + (s1 - s0)
    arrivals = await asyncio.to_thread(_read_arrivals, report)  # off the loop: the file grows with the calls
    inbound, received_ms = inbound_delays(arrivals, window)
    outbound = outbound_delays(phones, window)
    sent_frames = sent1.get("media", 0) - sent0.get("media", 0)
    lags = np.asarray(counters.lags_ms, dtype=np.float64)
    lag = Percentiles.of(lags) if lags.size else None
    rss = marks.get("rss")
    io0, io1 = marks.get("io_start"), marks.get("io_end")
    syscalls = None if io0 is None or io1 is None or not call_s else {
        kind: round((io1[kind] - io0[kind]) / call_s, 1) for kind in io1 if kind in io0}
    return {
        "target": target,
        "calls": calls,
        "calls_up": live,
        "calls_failed": load.failed,
        "window_s": round(t1 - t0, 3),
        "cpu_s": round(cpu_s, 3),
        "cpu_ms_per_call_second": round(cpu_s * 1000.0 / call_s, 3) if call_s else None,
        "cpu_pct_of_one_core": round(cpu_s / (t1 - t0) * 100.0, 1),
        "cpu_user_ms_per_call_second": round((u1 - u0) * 1000.0 / call_s, 3) if call_s else None,
        "cpu_system_ms_per_call_second": round((s1 - s0) * 1000.0 / call_s, 3) if call_s else None,
        # read and write system calls per call-second (/proc/PID/io syscr, syscw): what "fewer messages" saves
        "syscalls_per_call_second": syscalls,
        # The gateway's own forwarding delay (its gateway_frame_forward_delay_seconds, read to write, the window's
        # frames only): what it adds to a frame, apart from the load side's lag in the figures above.
        "own_delay": own_delay(marks.get("own_start"), marks.get("own_end")),
        "inbound_delay_ms": _p(inbound),
        "outbound_delay_ms": _p(outbound),
        "frames_sent": sent_frames,
        "frames_lost": max(0, round(sent_frames - received_ms / FRAME_MS)),
        "frames_late": int((inbound > LATE_MS).sum()),
        "turn_latency_ms": _pd(load.metrics.get("turn_latency_ms")),
        "barge_in_stop_ms": _pd(load.metrics.get("barge_in_stop_ms")),
        "base_rss_mb": None if base_rss is None else round(base_rss, 1),
        "rss_mb": None if rss is None else round(rss, 1),
        "rss_per_call_mb": None if rss is None or base_rss is None or not live else round((rss - base_rss) / live, 3),
        "load_send_lag_ms": _pd(lag),
        "load_behind": bool(lag is not None and lag.p99 >= FRAME_MS),
    }


async def run_steps(config: StepsConfig, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    if not config.steps or min(config.steps) < 1:
        raise ValueError("--steps needs positive numbers of calls")
    unknown = set(config.targets) - set(TARGETS)
    if unknown:
        raise ValueError(f"unknown targets {sorted(unknown)}; expected some of {TARGETS}")
    # This process (the load generator) goes to its core for the run, and back to where it was after: a caller
    # that goes on (the test suite's worker) must not stay on one core.
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    pinned = _pin(0, LOAD_CPU)
    try:
        return await _run_rounds(config, say, pinned)
    finally:
        if pinned and affinity:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, affinity)


async def _run_rounds(config: StepsConfig, say: Callable[[str], None], pinned: bool) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    rounds = max(1, config.repeat)
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as workdir:
        for calls in config.steps:
            behind = 0  # rounds of this step where the load generator fell behind (for any target)
            for round_ in range(rounds):
                round_behind = False
                for target in config.targets:
                    say(f"bench: {calls} calls, {target}" + (f", round {round_ + 1} of {rounds}" if rounds > 1 else "")
                        + " ...")
                    row = await run_target(config, target, calls, workdir, say)
                    row["round"] = round_ + 1
                    results.append(row)
                    round_behind = round_behind or row["load_behind"]
                behind += round_behind
            # Rising stops where the load side cannot keep up: with one round, if it fell behind; with several, if
            # it did in at least half of them (one slow round on a shared machine is the machine).
            if behind and behind * 2 >= rounds:
                say(f"bench: the load generator fell behind at {calls} calls; not rising further")
                break
    for row in results:
        relay = next((r for r in results if r["target"] == "relay" and r["calls"] == row["calls"]
                      and r["round"] == row["round"]), None)
        mine, theirs = row["cpu_ms_per_call_second"], relay and relay["cpu_ms_per_call_second"]
        row["cpu_ratio_to_relay"] = round(mine / theirs, 3) if mine and theirs else None
    return {"command": config.command(), "machine": machine(), "pinned": pinned, "tls": config.tls,
            "seconds": config.seconds, "ramp_s": config.ramp, "repeat": rounds, "results": results,
            "summary": summarize(results)}


def _read_arrivals(report: str) -> dict[str, Any]:
    """The relay's or the gateway's ``--report`` file: its arrivals, or none when it is missing or not JSON."""
    with contextlib.suppress(OSError, ValueError):
        with open(report) as f:
            arrivals: dict[str, Any] = json.load(f)["arrivals"]
            return arrivals
    return {}


def _spread(rows: list[dict[str, Any]], key: str) -> dict[str, float] | None:
    """The median of ``key`` over the rounds that have it, and its min-max."""
    found = [r[key] for r in rows if r.get(key) is not None]
    return None if not found else {"median": round(float(np.median(found)), 3),
                                   "min": round(min(found), 3), "max": round(max(found), 3)}


def _worst(rows: list[dict[str, Any]], key: str) -> dict[str, float] | None:
    """Each percentile of ``key`` (a dict of them per round): its worst over the rounds."""
    found = [r[key] for r in rows if r.get(key)]
    return None if not found else {pct: max(d[pct] for d in found) for pct in found[0]}


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per step and target, over its rounds: the median CPU per call-second and ratio to the relay (the spread
    shown as min-max), the worst delays and losses, and whether any round had the load generator behind."""
    summary: list[dict[str, Any]] = []
    for calls, target in dict.fromkeys((r["calls"], r["target"]) for r in results):
        rows = [r for r in results if r["calls"] == calls and r["target"] == target]
        summary.append({
            "calls": calls, "target": target, "rounds": len(rows),
            "cpu_ms_per_call_second": _spread(rows, "cpu_ms_per_call_second"),
            "cpu_ratio_to_relay": _spread(rows, "cpu_ratio_to_relay"),
            "inbound_delay_ms": _worst(rows, "inbound_delay_ms"), "outbound_delay_ms": _worst(rows, "outbound_delay_ms"),
            "frames_lost": sum(r["frames_lost"] for r in rows), "frames_late": sum(r["frames_late"] for r in rows),
            "base_rss_mb": _spread(rows, "base_rss_mb"), "rss_per_call_mb": _spread(rows, "rss_per_call_mb"),
            "load_behind_rounds": sum(1 for r in rows if r["load_behind"]),
        })
    return summary


def format_table(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"command: {data['command']}",
        f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['implementation']} {m['python']}, loop {m['event_loop']}; "
        f"server pinned to CPU {SERVER_CPU}, load generator and model to CPU {LOAD_CPU}: {'yes' if data['pinned'] else 'no'}"
        f"{'; model socket over TLS' if data['tls'] else ''}",
        "",
        f"{'calls':>5} {'target':<6} {'CPU ms/call-s':>13} {'x relay':>7} {'in p50/p99/max ms':>19} "
        f"{'out p50/p99/max ms':>19} {'lost':>5} {'late':>5} {'turn p50':>8} {'barge p50':>9} "
        f"{'RSS base':>8} {'MB/call':>7}  note",
        "-" * 130,
    ]

    def trio(d: dict[str, float] | None) -> str:
        return "-" if not d else f"{d['p50']:.1f}/{d['p99']:.1f}/{d['max']:.0f}"

    def num(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    for r in data["results"]:
        note = "LOAD BEHIND" if r["load_behind"] else ""
        if r["calls_failed"]:
            note += f" {r['calls_failed']} failed"
        if r["calls_up"] != r["calls"]:
            note += f" {r['calls_up']} up"
        lines.append(
            f"{r['calls']:>5} {r['target']:<6} {num(r['cpu_ms_per_call_second'], '.2f'):>13} "
            f"{num(r['cpu_ratio_to_relay'], '.2f'):>7} {trio(r['inbound_delay_ms']):>19} {trio(r['outbound_delay_ms']):>19} "
            f"{r['frames_lost']:>5} {r['frames_late']:>5} "
            f"{num((r['turn_latency_ms'] or {}).get('p50'), '.0f'):>8} {num((r['barge_in_stop_ms'] or {}).get('p50'), '.0f'):>9} "
            f"{num(r['base_rss_mb'], '.0f'):>8} {num(r['rss_per_call_mb'], '.3f'):>7}  {note.strip()}"
        )
    own = [r for r in data["results"] if r.get("own_delay")]
    if own:
        lines += ["", "the gateway's own forwarding delay (its gateway_frame_forward_delay_seconds: a frame's read to the "
                      "write of what it became), window only:"]
        for r in own:
            parts = [f"{direction} p99 < {d['p99_under_ms']:g} ms, {d['within_1_ms'] * 100:.2f} % within 1 ms, "
                     f"{d['within_10_ms'] * 100:.3f} % within 10 ms ({d['frames']} frames)"
                     for direction, d in sorted(r["own_delay"].items())]
            lines.append(f"{r['calls']:>5} {r['target']:<6}" + (f" round {r['round']}" if data.get("repeat", 1) > 1 else "")
                         + ": " + "; ".join(parts))
    if data.get("repeat", 1) > 1:
        lines += ["", f"over {data['repeat']} rounds (each ratio is to the same round's relay): median [min-max]", ""]
        for s in data["summary"]:
            cpu, ratio = s["cpu_ms_per_call_second"], s["cpu_ratio_to_relay"]
            lines.append(
                f"{s['calls']:>5} {s['target']:<6} CPU {num(cpu and cpu['median'], '.2f')} ms/call-s "
                f"[{num(cpu and cpu['min'], '.2f')}-{num(cpu and cpu['max'], '.2f')}]   x relay "
                f"{num(ratio and ratio['median'], '.2f')} [{num(ratio and ratio['min'], '.2f')}-"
                f"{num(ratio and ratio['max'], '.2f')}]   worst p99 in/out {num((s['inbound_delay_ms'] or {}).get('p99'), '.1f')}"
                f"/{num((s['outbound_delay_ms'] or {}).get('p99'), '.1f')} ms   lost {s['frames_lost']}"
                + (f"   load behind in {s['load_behind_rounds']} of {s['rounds']}" if s["load_behind_rounds"] else ""))
    lines += ["", "in: phone -> model, out: model -> phone; per-frame delay beyond the call's fastest frame (see "
              "gateway/tooling/bench/steps.py). lost/late: caller frames, late = > 20 ms. turn/barge: the phones' p50 turn "
              "latency and barge-in stop time (ms)."]
    return "\n".join(lines)


def write_outputs(data: dict[str, Any], out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "bench.json")
    with open(json_path, "w") as f:
        json.dump(data, f, indent=2)
    written = [json_path]
    from .plot import plot_steps

    try:
        written.append(plot_steps(data, os.path.join(out_dir, "bench.png")))
    except ImportError as error:  # the plots extra is not installed: the figures are in the JSON all the same
        print(f"no plot: {error}", file=sys.stderr)
    return written


def main(config: StepsConfig, as_json: bool = False) -> int:
    try:
        data = run_command("bench", run_steps(config))
    except Stopped as stopped:
        return stopped.status
    print(json.dumps(data, indent=2) if as_json else format_table(data))
    if config.out_dir:
        for path in write_outputs(data, config.out_dir):
            print(f"bench: wrote {path}", file=sys.stderr)
    return 0 if all(not r["calls_failed"] for r in data["results"]) else 1
