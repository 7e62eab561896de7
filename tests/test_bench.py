"""``gateway bench``: it runs end to end, prints its figures, and leaves no process behind.

No timing assertions (benchmarks are programs that print figures): only that the figures are there,
and are the right kind of numbers.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from gateway.tooling import bench
from gateway.cli import main

SMALL = ["bench", "--calls", "2", "--seconds", "3", "--ramp", "0.5"]


def children_of(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (zombies included: a child not reaped is a stray too)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        if int(raw[raw.rindex(b")") + 2 :].split()[1]) == pid:
            out.append(int(entry))
    return out


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="the bench reads /proc (Linux)")


def test_bench_prints_its_table_and_leaves_no_process(capsys):
    before = set(children_of(os.getpid()))
    assert main(SMALL) == 0
    out, err = capsys.readouterr()
    assert set(children_of(os.getpid())) <= before

    assert "command: gateway bench --calls 2 --seconds 3 --audio-format pcm16 --ramp 0.5" in out
    assert "machine: " in out and " CPUs (" in out
    assert "with 2 calls up (2 at its end)" in out and "2 completed, 0 failed" in out
    for label in ("gateway", "model server", "load generator", "CPU ms / call-s", "% of one core",
                  "phone -> gateway", "gateway -> phone", "frame send lag in the window (ms)", "turn latency (ms)"):
        assert label in out, label
    # The subprocesses named on stderr are gone.
    line = next(line for line in err.splitlines() if line.startswith("bench: gateway pid "))
    pids = [int(pid) for pid in re.findall(r"pid (\d+)", line)]
    assert len(pids) == 2 and all(gone(pid) for pid in pids)


def test_bench_json_figures(capsys):
    before = set(children_of(os.getpid()))
    assert main(SMALL + ["--audio-format", "pcmu", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(children_of(os.getpid())) <= before
    assert gone(data["pids"]["gateway"]) and gone(data["pids"]["model_server"])

    assert data["command"] == "gateway bench --calls 2 --seconds 3 --audio-format pcmu --ramp 0.5"
    assert data["machine"]["nproc"] >= 1 and data["machine"]["python"]
    assert data["calls_up"] == {"window_start": 2, "window_end": 2}
    assert data["calls_completed"] == 2 and data["calls_failed"] == 0 and data["failures"] == []
    assert data["window_s"] > 0
    for name in ("gateway", "model_server", "load_generator"):
        figures = data["cpu"][name]
        assert figures["cpu_s"] > 0 and figures["ms_per_call_second"] > 0 and figures["pct_of_one_core"] > 0
    # Every call sends one media message per 20 ms frame; the echo agent answers with media and marks.
    to_gateway, from_gateway = data["messages_per_call_second"]["to_gateway"], data["messages_per_call_second"]["from_gateway"]
    assert to_gateway["media"] > 0 and to_gateway["total"] >= to_gateway["media"]
    assert from_gateway["total"] > 0
    assert data["frame_send_lag_ms"]["count"] > 0
    assert data["turn_latency_ms"]["count"] >= 2
    assert data["violations_per_call"]["max"] == 0


def test_bench_rejects_bad_arguments(capsys):
    assert main(["bench", "--calls", "0"]) == 2
    assert main(["bench", "--seconds", "0"]) == 2
    assert "gateway bench:" in capsys.readouterr().err


def test_cpu_time_of_a_process():
    assert bench.process_cpu_s(os.getpid()) > 0
    with pytest.raises(ProcessLookupError):
        bench.process_cpu_s(2**22 + 12345)


def test_the_caller_talks_for_the_whole_call():
    audio = bytes(8000)  # one second of mu-law
    turns = bench.caller_turns(10_000, audio)
    assert len(turns) >= 10  # even if the agent answered instantly, the caller has something to say
    assert all(t.kind == "speech" and t.after_silence_ms == bench.THINK_MS for t in turns)
