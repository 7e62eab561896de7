"""Load mode: concurrent real calls against our gateway, the aggregation, failures, and the forwarding probe."""

from __future__ import annotations

import asyncio
import io
import json

from gateway.local import LocalRealtimeServer
from gateway.tooling.replay import CallerTurn, load_sample, run_call
from gateway.tooling.replay.load import METRICS, ForwardingProbe, LoadReport, Percentiles, run_load
from gateway.tooling.replay.report import CallReport, TurnReport

from .conftest import start_gateway


def consistent(p: Percentiles) -> bool:
    return p.count > 0 and p.p50 <= p.p95 <= p.p99 <= p.max


async def test_concurrent_real_calls_with_the_forwarding_probe():
    calls = 5
    async with start_gateway() as gateway:
        probe = ForwardingProbe().attach(gateway.local_server)
        assert gateway.local_server.probe is probe

        async def one(i: int) -> CallReport:
            turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300, name="hello")]
            return await run_call(gateway.ws_url, turns, timeout_s=30, hangup_after_ms=300)

        stderr = io.StringIO()
        report = await run_load(one, calls, ramp_s=1.0, forwarding=probe, progress_stream=stderr)
        probe.detach(gateway.local_server)
        assert gateway.local_server.probe is None

    assert report.succeeded == calls and report.failed == 0, report.failures
    # Every measurement that had values has ordered percentiles; those every call has are present.
    for key, _, _ in METRICS:
        p = report.metrics[key]
        if p is not None:
            assert consistent(p), (key, p)
    assert report.metrics["turn_latency_ms"].count == calls
    for key in ("violations", "marks_not_echoed", "underruns", "max_frame_lag_ms", "agent_heard_ms"):
        assert report.metrics[key].count == calls
    assert report.metrics["violations"].max == 0
    assert report.metrics["marks_not_echoed"].max == 0
    assert report.metrics["barge_in_stop_ms"] is None  # no barge-in in this scenario

    fw = report.forwarding
    assert fw is not None and fw.sessions == calls
    # Each call sends ~20 ms frames for its whole length, and each reaches the model as one append.
    frames_sent = sum(r.frames_sent for r in report.reports)
    assert fw.frames == fw.frames_sampled and abs(fw.frames - frames_sent) <= 2 * calls
    for p in (fw.interarrival_ms, fw.deviation_ms, fw.delay_variation_ms):
        assert p is not None and consistent(p)
    assert 10.0 <= fw.interarrival_ms.p50 <= 30.0  # the phone's 20 ms cadence, seen at the model
    assert fw.delay_variation_ms.p50 >= 0.0 and 0.0 <= fw.late_frame_pct <= 100.0

    data = json.loads(json.dumps(report.to_dict()))
    assert data["succeeded"] == calls and len(data["reports"]) == calls
    assert data["metrics"]["turn_latency_ms"]["p50"] <= data["metrics"]["turn_latency_ms"]["max"]
    assert data["forwarding"]["frames"] == fw.frames
    table = report.format()
    assert f"{calls} calls (ramp 1 s)" in table and f"{calls} completed, 0 failed" in table
    for label in ("turn latency (ms)", "harness frame lag (ms)", "append inter-arrival (ms)", "delay variation (ms)"):
        assert label in table
    assert f"started {calls}/{calls}  done {calls}  failed 0" in stderr.getvalue().splitlines()[-1]


def fake_report(latency: float, underruns: int = 0) -> CallReport:
    return CallReport(
        "MZ", "CA", "AC", "hangup", 5000.0,
        turns=[TurnReport(0, "t", False, 0.0, 1000.0, response_ms=latency)],
        underruns=underruns,
        max_frame_lag_ms=2.0,
    )


async def test_a_call_that_raises_counts_as_failed():
    async def one(i: int) -> CallReport:
        await asyncio.sleep(0.01 * i)
        if i == 2:
            raise ConnectionRefusedError("no gateway there")
        return fake_report(100.0 * (i + 1), underruns=i)

    stderr = io.StringIO()
    report = await run_load(one, 4, ramp_s=0.1, progress_stream=stderr)
    assert report.succeeded == 3 and report.failed == 1
    (failure,) = report.failures
    assert failure.index == 2 and failure.error == "ConnectionRefusedError: no gateway there"
    latency = report.metrics["turn_latency_ms"]
    assert latency.count == 3 and latency.p50 == 200.0 and latency.max == 400.0 and consistent(latency)
    assert report.metrics["underruns"].max == 3
    assert report.forwarding is None
    assert "failed: call 2" in report.format() and "no gateway there" in report.format()
    assert json.loads(json.dumps(report.to_dict()))["failures"][0]["index"] == 2
    assert report.to_dict(include_reports=False)["reports"] == []
    assert "done 3  failed 1" in stderr.getvalue().splitlines()[-1]


async def test_no_progress_bar_when_disabled_and_ramp_spreads_the_starts():
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    started: list[float] = []

    async def one(i: int) -> CallReport:
        started.append(loop.time() - t0)
        return fake_report(10.0)

    stderr = io.StringIO()
    report = await run_load(one, 4, ramp_s=0.4, progress=False, progress_stream=stderr)
    assert stderr.getvalue() == "" and report.succeeded == 4
    assert started == sorted(started) and started[-1] >= 0.29  # the 4th starts at 3 * 0.4 / 4 = 0.3 s
    empty = await run_load(one, 0, progress=False)
    assert empty.succeeded == 0 and all(p is None for p in empty.metrics.values())
    assert isinstance(empty, LoadReport) and "0 calls" in empty.format()


# ---------------------------------------------------------------------- the probe on its own


def feed(probe: ForwardingProbe, session: str, arrivals_and_ends: list[tuple[float, float]]) -> None:
    for arrived, end in arrivals_and_ends:
        probe.audio_appended(session, arrived, end)


def test_probe_measures_jitter_and_delay_variation_against_the_audio_clock():
    probe = ForwardingProbe()
    base = 1_000_000.0
    frames = [(base + 20.0 * k + 3.0, 20.0 * k) for k in range(1, 101)]  # steady: 3 ms after each frame's end
    frames[49] = (frames[49][0] + 30.0, frames[49][1])  # one frame held up 30 ms
    del frames[70]  # a lost packet: the gateway sends 40 ms of audio (silence-filled) with the next frame
    feed(probe, "s1", frames)
    fig = probe.figures()
    assert fig.sessions == 1 and fig.frames == 99
    assert fig.delay_variation_ms.max == 30.0 and fig.delay_variation_ms.p50 == 0.0
    assert fig.interarrival_ms.max == 50.0  # 20 + 30 for the held-up frame (a lost packet's 40 ms is no jitter)
    assert fig.deviation_ms.max == 30.0 and fig.deviation_ms.p50 == 0.0
    assert abs(fig.late_frame_pct - 100 / 99) < 1e-9  # one frame in 99 was later than one frame

    probe.session_closed("s1")  # folded into the closed reservoir: same figures
    assert probe.figures().delay_variation_ms == fig.delay_variation_ms
    probe.session_closed("unknown")  # a session the probe never saw: ignored
    probe.reset()
    assert probe.figures().frames == 0 and probe.figures().delay_variation_ms is None


def test_probe_stays_bounded():
    probe = ForwardingProbe(frames_per_session=50, max_samples=120, max_live_sessions=3)
    for s in range(5):
        feed(probe, f"s{s}", [(20.0 * k, 20.0 * k) for k in range(1, 1001)])
    fig = probe.figures()
    assert fig.sessions == 3 and fig.frames == 3000 and fig.frames_sampled == 150  # 2 sessions over the cap
    for s in range(3):
        probe.session_closed(f"s{s}")
    fig = probe.figures()
    assert fig.sessions == 3 and fig.frames == 3000 and fig.frames_sampled == 120
    assert fig.interarrival_ms.p50 == 20.0 and fig.delay_variation_ms.max == 0.0
    assert all(track is None for track in [probe._live.get(f"s{s}") for s in range(5)])


async def test_probe_attaches_to_and_detaches_from_the_embedded_server():
    async with LocalRealtimeServer() as server:
        assert server.probe is None
        probe = ForwardingProbe().attach(server)
        assert server.probe is probe
        probe.detach(server)
        ForwardingProbe().detach(server)  # another probe's detach leaves it alone
        assert server.probe is None
