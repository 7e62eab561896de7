"""``gateway soak``: many calls for a long time through one gateway process; does anything grow or leak?

A command, not a test (it runs for minutes). It starts ``gateway serve`` as its own process on 127.0.0.1 with the
embedded model, whose session limit is short (``--session-limit-s``) so calls roll over to new model sessions,
and keeps ``--calls`` replay phones calling for ``--minutes``: each call says hello, talks over the answer (a
barge-in), asks a question and hangs up; then the phone calls again. It reads the gateway's resident memory
(``/proc/<pid>/status``), open file descriptors (``/proc/<pid>/fd``) and asyncio tasks (``/healthz``):

* at rest before any call (the baseline for descriptors and tasks),
* after the warm-up (the first ``--warmup-s`` seconds: allocator pools, caches, imports),
* at the end of the soak, and at rest again after the last call.

It passes when every call was answered with no protocol violation, memory grew by less than ``--max-growth``
(5 %) from the warm-up to the end, and descriptors and tasks are back to the baseline at rest. Exit status 0 or 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

HOST = "127.0.0.1"


def _at_most(measured: int | None, limit: int) -> bool:
    """A count measured (None: it could not be) and within its limit."""
    return measured is not None and measured <= limit


@dataclass
class SoakResult:
    calls_ok: int = 0
    calls_failed: int = 0
    failures: list[str] = field(default_factory=list)
    turn_latency_ms: list[float] = field(default_factory=list)
    barge_in_stop_ms: list[float] = field(default_factory=list)
    rss_mb: dict[str, float | None] = field(default_factory=dict)
    fds: dict[str, int | None] = field(default_factory=dict)
    tasks: dict[str, int | None] = field(default_factory=dict)
    seconds: float = 0.0

    def checks(self, max_growth: float) -> list[tuple[bool, str]]:
        warm, end = self.rss_mb.get("warm"), self.rss_mb.get("end")
        growth = (end - warm) / warm if warm and end else None
        return [
            (self.calls_failed == 0 and self.calls_ok > 0, f"calls: {self.calls_ok} ok, {self.calls_failed} failed"),
            (growth is not None and growth < max_growth,
             f"RSS after warm-up {warm} MB -> end {end} MB ({growth * 100:+.1f} %, limit {max_growth * 100:.0f} %)"
             if growth is not None else "RSS not measured"),
            (_at_most(self.fds.get("rest"), (self.fds.get("baseline") or 0) + 2),
             f"open descriptors at rest: {self.fds.get('baseline')} before, {self.fds.get('rest')} after"),
            (_at_most(self.tasks.get("rest"), (self.tasks.get("baseline") or 0) + 2),
             f"asyncio tasks at rest: {self.tasks.get('baseline')} before, {self.tasks.get('rest')} after"),
        ]


def _rss(pid: int) -> float | None:
    from gateway.tooling.bench import process_rss_mb

    rss = process_rss_mb(pid)
    return round(rss, 1) if rss is not None else None


def _fds(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        return len(os.listdir(f"/proc/{pid}/fd"))
    return None


def _percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered):.0f} / p99 {p99:.0f} / max {ordered[-1]:.0f} ms"


async def _one_call(url: str, result: SoakResult) -> None:
    from gateway.tooling.replay import CallerTurn, load_sample, run_call

    turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300, name="hello"),
             CallerTurn(load_sample("caller_bargein"), after_agent_heard_ms=800, name="barge-in"),
             CallerTurn(load_sample("caller_question"), after_silence_ms=600, name="question")]
    try:
        report = await run_call(url, turns, timeout_s=90, hangup_after_ms=800)
    except Exception as error:  # noqa: BLE001 - a call that cannot even connect is a failed call
        result.calls_failed += 1
        result.failures.append(f"{type(error).__name__}: {error}"[:200])
        return
    answered = [t for t in report.turns if t.response_ms is not None]
    if report.violations or len(answered) < len(turns) or report.ended_by != "hangup":
        result.calls_failed += 1
        unanswered = ", ".join(f"{t.name} at {t.start_ms / 1000:.1f} s" for t in report.turns if t.response_ms is None)
        result.failures.append(f"{len(answered)}/{len(turns)} answered (not: {unanswered or '-'}), "
                               f"{len(report.violations)} violations, ended by {report.ended_by}")
        return
    result.calls_ok += 1
    result.turn_latency_ms.extend(t.response_ms for t in report.turns if t.response_ms is not None)
    result.barge_in_stop_ms.extend(t.stop_ms for t in report.turns if t.barge_in and t.stop_ms is not None)


async def run_soak(calls: int, minutes: float, session_limit_s: float, warmup_s: float) -> SoakResult:
    from gateway.tooling.bench import Child, _wait_until, stop_children
    from gateway.tooling.fuzz import _clean_env, _healthz, _settle
    from gateway.server.runner import free_port

    result = SoakResult()
    port, model_port = free_port(HOST), free_port(HOST)
    workdir = tempfile.TemporaryDirectory(prefix="gateway-soak-")
    # The model runs in its own process (the embedded server, standalone), so the gateway's memory and CPU are
    # its own: in one process with 50 calls' model sessions, the one core saturates and the model's
    # per-session bookkeeping shows in the gateway's RSS.
    model = Child("model", [sys.executable, "-m", "gateway.cli", "local-realtime", "--host", HOST, "--port",
                            str(model_port), "--session-limit-s", str(session_limit_s)], _clean_env())
    env = {**_clean_env(), "MAX_CALLS": str(max(100, calls * 2)), "MAX_CONNECTIONS": str(max(1000, calls * 4)),
           "MAX_CONNECTIONS_PER_ADDRESS": str(max(250, calls * 2)),  # every caller is on 127.0.0.1
           "REALTIME_URL": f"ws://{HOST}:{model_port}/v1/realtime",
           "REALTIME_API_KEY": "soak", "INSECURE_DEV_MODE": "true", "MODEL_SESSION_LIMIT_S": str(session_limit_s),
           "STORE_URL": f"sqlite:///{workdir.name}/records.db"}
    gateway = Child("gateway", [sys.executable, "-m", "gateway.cli", "serve", "--host", HOST, "--port", str(port)], env)
    t0 = time.monotonic()
    try:
        async def healthy() -> dict[str, Any] | None:
            status, body = await _healthz(port)
            return body if status == 200 else None

        await _wait_until(gateway, healthy)
        url = f"ws://{HOST}:{port}/media-stream"
        result.fds["baseline"], result.tasks["baseline"] = _fds(gateway.pid), (await healthy() or {}).get("tasks")
        end_at = time.monotonic() + minutes * 60

        async def phone() -> None:
            while time.monotonic() < end_at:
                await _one_call(url, result)

        async def sample() -> None:
            await asyncio.sleep(warmup_s)
            result.rss_mb["warm"] = _rss(gateway.pid)
            print(f"soak: warm-up done, RSS {result.rss_mb['warm']} MB", file=sys.stderr, flush=True)

        sampler = asyncio.create_task(sample())
        phones = [asyncio.create_task(phone()) for _ in range(calls)]
        await asyncio.sleep(max(0.0, end_at - time.monotonic()))
        result.rss_mb["end"] = _rss(gateway.pid)
        await asyncio.gather(*phones)  # the calls in progress finish
        sampler.cancel()
        await _settle(port, timeout_s=15)
        gateway.check_running()
        result.rss_mb["rest"] = _rss(gateway.pid)
        result.fds["rest"], result.tasks["rest"] = _fds(gateway.pid), (await healthy() or {}).get("tasks")
    finally:
        stop_children([gateway, model], timeout_s=2.0)
        workdir.cleanup()
        result.seconds = time.monotonic() - t0
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=50, help="concurrent callers (default 50)")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long they keep calling (default 10)")
    parser.add_argument("--session-limit-s", type=float, default=10.0,
                        help="the embedded model's session limit, so calls roll over (default 10 s: each call does)")
    parser.add_argument("--warmup-s", type=float, default=60.0, help="memory is compared from this point (default 60)")
    parser.add_argument("--max-growth", type=float, default=0.05, help="allowed RSS growth after warm-up (0.05)")


def command(args: argparse.Namespace, settings: Any = None) -> int:
    if args.calls < 1 or args.minutes <= 0 or args.warmup_s >= args.minutes * 60:
        print("gateway soak: --calls >= 1, --minutes > 0, and --warmup-s shorter than the soak", file=sys.stderr)
        return 2
    result = asyncio.run(run_soak(args.calls, args.minutes, args.session_limit_s, args.warmup_s))
    checks = result.checks(args.max_growth)
    print(f"gateway soak: {args.calls} callers for {args.minutes:g} min, session limit {args.session_limit_s:g} s "
          f"({result.seconds:.0f} s in all)")
    print(f"  turn latency:     {_percentiles(result.turn_latency_ms)}")
    print(f"  barge-in stop:    {_percentiles(result.barge_in_stop_ms)}")
    print(f"  RSS (MB):         warm {result.rss_mb.get('warm')}, end {result.rss_mb.get('end')}, "
          f"at rest {result.rss_mb.get('rest')}")
    for passed, text in checks:
        print(f"  {'PASS' if passed else 'FAIL'}  {text}")
    for failure in result.failures[:5]:
        print(f"  failed call: {failure}")
    return 0 if all(passed for passed, _ in checks) else 1
