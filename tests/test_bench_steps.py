"""``gateway bench --steps`` (gateway beside a null relay) and ``--micro``: shapes and sanity, never timings."""

from __future__ import annotations

import json
import os

import pytest

from gateway.tooling.bench import micro
from gateway.tooling.bench.models import inbound_delays
from gateway.tooling.bench.steps import StepPhone, outbound_delays
from gateway.cli import main

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="the bench reads /proc (Linux)")


def test_steps_run_the_relay_and_the_gateway_over_tls(capsys, tmp_path):
    argv = ["bench", "--steps", "2", "--seconds", "2", "--ramp", "0.5", "--targets", "relay,pcmu", "--tls",
            "--json", "--out", str(tmp_path)]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["command"] == "gateway bench --steps 2 --seconds 2 --ramp 0.5 --targets relay,pcmu --tls"
    assert data["tls"] is True and data["machine"]["nproc"] >= 1
    rows = {r["target"]: r for r in data["results"]}
    assert set(rows) == {"relay", "pcmu"}
    for row in rows.values():
        assert row["calls"] == 2 and row["calls_up"] == 2 and row["calls_failed"] == 0
        assert row["cpu_ms_per_call_second"] > 0 and row["base_rss_mb"] > 0
        assert row["frames_sent"] > 0 and row["frames_lost"] >= 0 and row["frames_late"] >= 0
        for key in ("inbound_delay_ms", "outbound_delay_ms"):
            if row[key] is not None:
                assert 0 <= row[key]["p50"] <= row[key]["p99"] <= row[key]["max"]
        assert isinstance(row["load_behind"], bool)
    assert rows["relay"]["cpu_ratio_to_relay"] == 1.0 and rows["pcmu"]["cpu_ratio_to_relay"] > 0
    assert rows["relay"]["inbound_delay_ms"] is not None, "the mirror saw no caller frame through the relay"
    assert rows["pcmu"]["inbound_delay_ms"] is not None, "the model saw no caller frame through the gateway"
    own = rows["pcmu"]["own_delay"]  # the gateway's own read-to-write delay, from its /metrics, window only
    assert own["to_model"]["frames"] > 0 and 0 <= own["to_model"]["within_1_ms"] <= own["to_model"]["within_10_ms"] <= 1
    assert rows["relay"]["own_delay"] is None
    assert (tmp_path / "bench.json").exists() and (tmp_path / "bench.png").stat().st_size > 1000


def test_repeated_rounds_take_each_ratio_against_the_same_rounds_relay(capsys):
    argv = ["bench", "--steps", "2", "--seconds", "1.5", "--ramp", "0.3", "--targets", "relay,pcmu", "--repeat", "2",
            "--json"]
    cores = os.sched_getaffinity(0)
    assert main(argv) == 0
    assert os.sched_getaffinity(0) == cores  # the load generator's pinning ends with the run
    data = json.loads(capsys.readouterr().out)
    assert data["command"].endswith("--repeat 2") and data["repeat"] == 2
    assert [(r["round"], r["target"]) for r in data["results"]] == [(1, "relay"), (1, "pcmu"), (2, "relay"), (2, "pcmu")]
    for row in data["results"]:
        relay = next(r for r in data["results"] if r["target"] == "relay" and r["round"] == row["round"])
        assert row["cpu_ratio_to_relay"] == pytest.approx(row["cpu_ms_per_call_second"] / relay["cpu_ms_per_call_second"],
                                                          abs=0.002)
    summary = {s["target"]: s for s in data["summary"]}
    assert summary["relay"]["rounds"] == 2 and summary["relay"]["cpu_ratio_to_relay"]["median"] == 1.0
    ratios = sorted(r["cpu_ratio_to_relay"] for r in data["results"] if r["target"] == "pcmu")
    assert summary["pcmu"]["cpu_ratio_to_relay"] == {"median": pytest.approx(sum(ratios) / 2, abs=0.002),
                                                     "min": ratios[0], "max": ratios[1]}


def test_delays_are_measured_beyond_each_calls_best_frame():
    # Frames of 20 ms sent on schedule from t = 100 s; the third arrives 7 ms later than the rest.
    rows = [[100.0 + 0.02 * k + (0.007 if k == 2 else 0.0), 20.0 * (k + 1)] for k in range(5)]
    delays, audio_ms = inbound_delays({"s": rows}, (0.0, 1e9))
    assert list(delays.round(3)) == [0.0, 0.0, 7.0, 0.0, 0.0] and audio_ms == 100.0
    phone = StepPhone.__new__(StepPhone)
    phone.arrivals = [(10.0, 1), (10.1, 1), (10.205, 1), (11.0, 2)]
    assert list(outbound_delays([phone], (0.0, 1e9)).round(3)) == [0.0, 0.0, 5.0]


def test_micro_prints_every_operation(capsys, monkeypatch):
    monkeypatch.setattr(micro, "_us", lambda fn, target_s=0.05: (fn(), 1.0)[1])
    monkeypatch.setattr(micro, "_us_after_idle", lambda fn: (fn(), 2.0)[1])
    assert main(["bench", "--micro"]) == 0
    out = capsys.readouterr().out
    for label in ("upsample 8k->24k, 20 ms frame", "downsample 24k->8k, 100 ms chunk", "parse twilio media",
                  "parse model audio delta, pcmu 100 ms", "encode twilio media, pcmu pass-through", "encode twilio mark",
                  "inbound pcm16 convert, 20 ms frame, after 0.5 ms idle", "parse twilio media, after 0.5 ms idle"):
        assert label in out, label
