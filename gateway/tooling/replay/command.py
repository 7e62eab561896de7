"""``gateway replay``: play scenarios against a gateway, write what happened, print a verdict.

For each scenario: ``<out>/<name>.json`` (the report and the expectation results), ``<name>.wav``
(stereo: caller left, agent as heard right) and ``<name>.png`` (the timeline); with ``--calls N``,
N concurrent callers and ``<name>-load.json`` instead. Exit status: 0 when every expectation holds,
1 when one fails (or a call could not be made), 2 for a usage or scenario-file error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from gateway.config import Settings

from gateway.audio.convert import AUDIO_FORMATS

from .dial import DialError, TwilioAccount
from .expectations import ExpectationResult, all_passed, evaluate
from .report import CallReport
from .scenario import Scenario, ScenarioError, bundled_names, load_scenario, run_scenario
from .target import Target, local_gateway

USAGE_ERROR, FAILED, PASSED = 2, 1, 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help="a scenario file (.toml), or the name of a bundled scenario (see --list)")
    parser.add_argument("--list", action="store_true", help="list the bundled scenarios and exit")
    parser.add_argument("--url", help="the gateway's Media Stream URL, ws://host:port/media-stream "
                                      "(default: our gateway, in-process, with the embedded model)")
    parser.add_argument("--audio-format", choices=AUDIO_FORMATS, default=None,
                        help="the in-process gateway's mode (without --url)")
    parser.add_argument("--out", default="replay-out", help="output directory (default: replay-out/)")
    parser.add_argument("--calls", type=int, default=1, help="load mode: this many concurrent callers")
    parser.add_argument("--ramp", type=float, default=0.0, help="load mode: start the callers over this many s")
    parser.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                        help="an extra header on the WebSocket handshake (repeatable)")
    parser.add_argument("--auth-token", default=None, metavar="TOKEN",
                        help="sign like Twilio with this auth token: ring the gateway's /incoming-call webhook first, "
                             "then open the stream its TwiML gives (default: TWILIO_AUTH_TOKEN for the in-process "
                             "gateway; none for --url)")
    parser.add_argument("--public-url", default=None, metavar="URL",
                        help="with --auth-token: the https:// base the gateway is configured with (its PUBLIC_URL); "
                             "default: the address called")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON document")
    parser.add_argument("--strict", action="store_true",
                        help="a skipped expectation (e.g. agent_says with no transcripts at --url) fails the run")


def run(args: argparse.Namespace, settings: Settings | None = None) -> int:
    if args.list:
        return _list()
    problem = _usage_problem(args)
    if problem:
        print(f"gateway replay: {problem}", file=sys.stderr)
        return USAGE_ERROR
    try:
        scenarios = [load_scenario(ref) for ref in args.scenarios]
    except ScenarioError as error:
        print(f"scenario error: {error}", file=sys.stderr)
        return USAGE_ERROR
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    return asyncio.run(_run_all(scenarios, args, settings, headers))


def _usage_problem(args: argparse.Namespace) -> str:
    if not args.scenarios:
        return "give at least one SCENARIO (a .toml file or a bundled name; --list shows them)"
    if args.calls < 1:
        return "--calls must be at least 1"
    if args.ramp < 0:
        return "--ramp must be >= 0"
    if args.url and not re.match(r"^wss?://", args.url):
        return f"--url must be a ws:// or wss:// URL, got {args.url!r}"
    if args.url and args.audio_format:
        return "--audio-format sets the in-process gateway's mode; a gateway at --url has its own"
    bad = [h for h in args.header if ":" not in h or not h.split(":", 1)[0].strip()]
    if bad:
        return f"--header must be NAME:VALUE, got {bad[0]!r}"
    return ""


def _list() -> int:
    for name in bundled_names():
        scenario = load_scenario(name)
        print(f"{name:<26} {scenario.description}")
    return PASSED


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "scenario"


@contextlib.asynccontextmanager
async def _target(args: argparse.Namespace, settings: Settings | None) -> AsyncIterator[Target]:
    if args.url:
        target = Target(args.url)
        if args.auth_token:
            target.twilio = TwilioAccount(args.auth_token, args.public_url or "")
        yield target
    else:
        async with local_gateway(args.audio_format, settings) as local:
            if args.auth_token:
                local.twilio = TwilioAccount(args.auth_token, args.public_url or "")
            yield local


async def _run_all(scenarios: list[Scenario], args: argparse.Namespace, settings: Settings | None,
                   headers: dict[str, str]) -> int:
    out = Path(args.out)
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    documents: list[dict[str, Any]] = []
    stems: set[str] = set()
    async with _target(args, settings) as target:
        for scenario in scenarios:
            stem = _file_stem(scenario.name)
            while stem in stems:
                stem += "-again"
            stems.add(stem)
            if args.calls > 1:
                documents.append(await _load(scenario, target, args, out / stem, headers))
            else:
                documents.append(await _one(scenario, target, args, out / stem, headers))
    passed = all(d["passed"] for d in documents)
    if args.json:
        print(json.dumps({"passed": passed, "scenarios": documents}, indent=2))
    elif len(documents) > 1:
        failed = [d["scenario"]["name"] for d in documents if not d["passed"]]
        print(f"\n{len(documents) - len(failed)} of {len(documents)} scenarios passed"
              + (f"; failed: {', '.join(failed)}" if failed else ""))
    return PASSED if passed else FAILED


def _describe(scenario: Scenario, target: Target) -> dict[str, Any]:
    notes = []
    hint = scenario.call.audio_format
    if hint and target.in_process and hint != target.audio_format:
        notes.append(f"the scenario is meant for {hint} mode; the gateway ran in {target.audio_format}")
    return {
        "name": scenario.name,
        "description": scenario.description,
        "path": str(scenario.path) if scenario.path else None,
        "recording": str(scenario.recording.path) if scenario.recording else None,
        "target": {"url": target.ws_url, "in_process": target.in_process, "audio_format": target.audio_format},
        "notes": notes,
    }


async def _one(scenario: Scenario, target: Target, args: argparse.Namespace, base: Path,
               headers: dict[str, str]) -> dict[str, Any]:
    info = _describe(scenario, target)
    from websockets.exceptions import WebSocketException

    try:
        report = await run_scenario(scenario, target.ws_url, extra_headers=headers, twilio=target.twilio)
    except (OSError, TimeoutError, WebSocketException, DialError) as error:  # no call: a failed run
        message = f"could not call {target.ws_url}: {type(error).__name__}: {error}"
        if not args.json:
            print(f"\nscenario {scenario.name}: ERROR: {message}")
        return {"scenario": info, "passed": False, "error": message, "expectations": [], "files": {}}
    transcripts = target.transcripts(report.call_sid)
    results = evaluate(scenario, report, transcripts)
    passed = all_passed(results, strict=getattr(args, "strict", False))
    files = {"json": str(base.with_suffix(".json")), "wav": str(base.with_suffix(".wav"))}
    report.write_wav(files["wav"])
    png_note = _write_png(report, base.with_suffix(".png"), scenario.name)
    if png_note is None:
        files["png"] = str(base.with_suffix(".png"))
    else:
        info["notes"].append(png_note)
    document = {"scenario": info, "passed": passed, "expectations": [r.to_dict() for r in results],
                "transcripts": transcripts, "files": files, "report": report.to_dict()}
    await asyncio.to_thread(Path(files["json"]).write_text, json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if not args.json:
        print(_summary(scenario, report, results, passed, files, info["notes"]))
    document.pop("report")  # in the file; the --json document stays small
    return document


def _write_png(report: CallReport, path: Path, title: str) -> str | None:
    """Draw the timeline; a note instead when the plot module is missing or fails (the run still counts)."""
    try:
        from .plot import write_timeline_png
    except ImportError as error:
        return f"no timeline plot: gateway.tooling.replay.plot is not available ({error})"
    try:
        write_timeline_png(report, path, title=title)
    except ImportError as error:  # matplotlib is the plots extra: the note names it
        return f"no timeline plot: {error}"
    except Exception as error:  # noqa: BLE001 - a plotting problem must not hide the verdict
        return f"no timeline plot: {type(error).__name__}: {error}"
    return None


def _summary(scenario: Scenario, report: CallReport, results: list[ExpectationResult], passed: bool,
             files: dict[str, str], notes: list[str]) -> str:
    head = f"\nscenario {scenario.name}: {'PASSED' if passed else 'FAILED'}"
    try:
        from .summary import format_summary
    except ImportError:
        body = _plain_summary(report, results)
    else:
        body = format_summary(report, results)
    tail = [f"  note: {n}" for n in notes] + [f"  wrote {', '.join(files.values())}"]
    return "\n".join([head, body, *tail])


def _plain_summary(report: CallReport, results: list[ExpectationResult]) -> str:
    lines = [f"  call {report.call_sid}: {report.duration_ms / 1000:.1f} s, ended by {report.ended_by}"]
    for t in report.turns:
        answer = "no answer heard" if t.response_ms is None else f"answered after {t.response_ms:.0f} ms"
        stop = f"; agent stopped after {t.stop_ms:.0f} ms ({t.stopped_by})" if t.stop_ms is not None else ""
        lines.append(f"  turn {t.name!r} ({t.kind}): {answer}{stop}")
    for r in results:
        mark = {True: "PASS", False: "FAIL", None: "SKIP"}[r.passed]
        lines.append(f"  {mark} {r.name}: {r.detail}")
    return "\n".join(lines)


async def _load(scenario: Scenario, target: Target, args: argparse.Namespace, base: Path,
                headers: dict[str, str]) -> dict[str, Any]:
    info = _describe(scenario, target)
    try:
        from .load import ForwardingProbe, run_load
    except ImportError as error:
        message = f"load mode is not available: {error}"
        print(message, file=sys.stderr)
        return {"scenario": info, "passed": False, "error": message, "expectations": [], "files": {}}
    failures: list[str] = []
    evaluated = 0

    async def run_one(index: int) -> CallReport:
        nonlocal evaluated
        report = await run_scenario(scenario, target.ws_url, extra_headers=headers, fresh_sids=True,
                                    twilio=target.twilio)
        evaluated += 1
        for result in evaluate(scenario, report, target.transcripts(report.call_sid)):
            if result.passed is False:
                failures.append(f"call {index}: {result.name}: {result.detail}")
        return report

    probe = None
    server = target.local_server
    if server is not None:
        probe = ForwardingProbe().attach(server)
    try:
        load = await run_load(run_one, args.calls, args.ramp, progress=not args.json, forwarding=probe)
    finally:
        if probe is not None:
            probe.detach(server)
    passed = load.failed == 0 and not failures
    path = base.parent / f"{base.name}-load.json"
    expectations = {"calls_evaluated": evaluated, "calls_failed": len({f.split(':')[0] for f in failures}),
                    "failures": failures[:50]}
    document = {"scenario": info, "passed": passed, "expectations": expectations, "files": {"load": str(path)}}
    path.write_text(json.dumps({**document, "load": load.to_dict()}, indent=2) + "\n", encoding="utf-8")
    if not args.json:
        print(f"\nscenario {scenario.name} x {args.calls} calls: {'PASSED' if passed else 'FAILED'}")
        print(load.format())
        for failure in failures[:10]:
            print(f"  FAIL {failure}")
        if len(failures) > 10:
            print(f"  ... {len(failures) - 10} more in {path}")
        print(f"  wrote {path}")
    return document
