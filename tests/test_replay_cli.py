"""``gateway replay``: exit status (0 pass, 1 fail, 2 usage/scenario error), the files it writes, --json,
a gateway at --url (the real entry point, in a subprocess), load mode, and its fallbacks."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.tooling.replay import command
from gateway.tooling.replay.expectations import ExpectationResult
from gateway.tooling.replay.report import CallReport, TurnReport
from gateway.tooling.replay.scenario import bundled_names
from gateway.audio.wavio import parse_wav

from .conftest import start_gateway

SHORT = """
description = "one short question"
[call]
hangup_after_ms = 300
timeout_s = 30
[[turns]]
name = "bye"
say = "caller_goodbye"
after_silence_ms = 200
[expect]
max_turn_latency_ms = {latency}
all_marks_echoed = true
agent_says = ["echo of"]
"""


def scenario_file(tmp_path: Path, name: str, latency: int = 2500) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(SHORT.format(latency=latency))
    return path


def test_list_shows_the_bundled_scenarios(capsys) -> None:
    assert main(["replay", "--list"]) == 0
    out = capsys.readouterr().out
    for name in bundled_names():
        assert name in out
    assert "hang" in out and "barge" in out


def test_usage_and_scenario_errors_exit_2_before_any_call(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[turns]]\nsay = 'caller_helo'\n")
    ok = scenario_file(tmp_path, "ok")
    cases = [
        (["replay"], "give at least one SCENARIO"),
        (["replay", str(bad)], f"scenario error: {bad}: turns[0].say: no bundled phrase 'caller_helo'"),
        (["replay", "no-such-scenario"], "no-such-scenario: no such scenario file"),
        (["replay", str(ok), "--calls", "0"], "--calls must be at least 1"),
        (["replay", str(ok), "--ramp", "-1"], "--ramp must be >= 0"),
        (["replay", str(ok), "--url", "http://127.0.0.1/media-stream"], "--url must be a ws:// or wss:// URL"),
        (["replay", str(ok), "--url", "ws://h/m", "--audio-format", "pcmu"], "--audio-format sets the in-process"),
        (["replay", str(ok), "--header", "novalue"], "--header must be NAME:VALUE"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    with pytest.raises(SystemExit) as caught:
        main(["replay", str(ok), "--audio-format", "opus"])
    assert caught.value.code == 2
    assert not (Path.cwd() / "replay-out" / "ok.json").exists()


def test_a_failing_expectation_fails_the_run_and_every_output_is_written(tmp_path, capsys) -> None:
    ok, impossible = scenario_file(tmp_path, "ok"), scenario_file(tmp_path, "impossible", latency=1)
    out = tmp_path / "out"
    assert main(["replay", str(ok), str(impossible), "--out", str(out)]) == 1  # in-process gateway, embedded model
    text = capsys.readouterr().out
    assert "scenario ok: PASSED" in text and "scenario impossible: FAILED" in text
    assert "1 of 2 scenarios passed; failed: impossible" in text

    passed, failed = (json.loads((out / f"{n}.json").read_text()) for n in ("ok", "impossible"))
    assert passed["passed"] is True and failed["passed"] is False
    verdicts = {r["name"]: r["passed"] for r in failed["expectations"]}
    assert verdicts["max_turn_latency_ms"] is False and verdicts["no_violations"] is True
    assert {r["name"]: r["passed"] for r in passed["expectations"]}["agent_says"] is True  # in-process: transcripts
    assert passed["transcripts"] and passed["scenario"]["target"]["in_process"] is True
    report = passed["report"]
    assert report["ended_by"] == "hangup" and report["turns"][0]["response_ms"] > 0
    fmt, data = parse_wav(out / "ok.wav")
    assert (fmt.channels, fmt.rate, fmt.format_tag) == (2, 8000, 7)  # caller left, heard agent right
    assert abs(len(data) / 16 - report["audio_ms"]) <= 1
    assert (out / "ok.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_against_a_gateway_at_a_url_with_json_output(tmp_path) -> None:
    """The installed entry point, in its own process, against our gateway (pcmu mode) served by this test."""
    ok = scenario_file(tmp_path, "ok")
    async with start_gateway(audio_format="pcmu") as gateway:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "replay", str(ok), "--url", gateway.ws_url, "--out", str(tmp_path / "o"),
            "--json", "--header", "X-Test: 1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    document = json.loads(stdout)
    assert document["passed"] is True
    (result,) = document["scenarios"]
    assert result["scenario"]["target"] == {"url": gateway.ws_url, "in_process": False, "audio_format": None}
    verdicts = {r["name"]: r for r in result["expectations"]}
    assert verdicts["max_turn_latency_ms"]["passed"] is True
    assert verdicts["agent_says"] == {"name": "agent_says", "passed": None, "detail": "skipped: no transcripts"}
    assert Path(result["files"]["json"]).is_file() and Path(result["files"]["wav"]).is_file()


def test_no_gateway_at_the_url_fails_the_run(tmp_path, capsys) -> None:
    ok = scenario_file(tmp_path, "ok")
    assert main(["replay", str(ok), "--url", "ws://127.0.0.1:9/media-stream", "--out", str(tmp_path)]) == 1
    assert "could not call ws://127.0.0.1:9/media-stream" in capsys.readouterr().out


def test_load_mode(tmp_path, capsys) -> None:
    ok = scenario_file(tmp_path, "ok")
    assert main(["replay", str(ok), "--calls", "3", "--ramp", "0.3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "scenario ok x 3 calls: PASSED" in out and "load: 3 calls" in out
    document = json.loads((tmp_path / "ok-load.json").read_text())
    assert document["passed"] is True and document["expectations"]["calls_evaluated"] == 3
    load = document["load"]
    assert (load["calls"], load["succeeded"], load["failed"]) == (3, 3, 0)
    assert len({r["call_sid"] for r in load["reports"]}) == 3
    assert load["forwarding"] is not None  # the in-process gateway's embedded server was probed


def test_without_the_plot_and_summary_modules_the_run_still_reports(tmp_path, monkeypatch) -> None:
    report = CallReport("MZ1", "CA1", "AC1", "hangup", 3000.0,
                        turns=[TurnReport(0, "hello", False, 0.0, 1000.0, response_ms=600.0)])
    monkeypatch.setitem(sys.modules, "gateway.tooling.replay.plot", None)  # import fails
    monkeypatch.setitem(sys.modules, "gateway.tooling.replay.summary", None)
    note = command._write_png(report, tmp_path / "x.png", "x")
    assert note is not None and note.startswith("no timeline plot") and not (tmp_path / "x.png").exists()
    from gateway.tooling.replay.scenario import Scenario

    text = command._summary(Scenario("x"), report, [ExpectationResult("max_turn_latency_ms", True, "fine")], True,
                            {"json": "x.json"}, [note])
    assert "scenario x: PASSED" in text and "turn 'hello' (speech): answered after 600 ms" in text
    assert "PASS max_turn_latency_ms: fine" in text and "note: no timeline plot" in text
