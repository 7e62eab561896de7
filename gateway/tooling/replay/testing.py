"""Replay a scenario inside a test: three lines per check, with pytest (pytest-asyncio) or any asyncio runner.

    from gateway.tooling.replay.testing import replay_scenario

    async def test_caller_can_interrupt_the_agent():
        outcome = await replay_scenario("early-barge-in")  # a bundled scenario, or a path to your .toml
        outcome.assert_passed()  # AssertionError listing each failed expectation

With no ``url`` the scenario calls our gateway, started in-process for the call with the embedded model
(``audio_format="pcmu"`` for pass-through mode); give ``url="ws://host:port/media-stream"`` to test any
gateway that speaks Twilio Media Streams. ``outcome.report`` holds every measurement
(:class:`~gateway.tooling.replay.report.CallReport`), ``outcome.results`` each expectation's result.
To check transcript expectations against a gateway at a URL, pass ``transcripts``: a function from the
call's callSid to the assistant's transcripts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.config import Settings

from .expectations import ExpectationResult, all_passed, evaluate
from .report import CallReport
from .scenario import Scenario, load_scenario, run_scenario


@dataclass
class ReplayOutcome:
    scenario: Scenario
    report: CallReport
    results: list[ExpectationResult]
    transcripts: list[str] | None = None

    @property
    def passed(self) -> bool:
        return all_passed(self.results)

    @property
    def failures(self) -> list[ExpectationResult]:
        return [r for r in self.results if r.passed is False]

    def assert_passed(self) -> None:
        """Raise AssertionError listing every failed expectation (skipped ones do not fail)."""
        if self.failures:
            lines = [f"scenario {self.scenario.name!r} failed:"]
            lines += [f"  - {r.name}: {r.detail}" for r in self.failures]
            raise AssertionError("\n".join(lines))


async def replay_scenario(
    scenario: str | Path | Scenario,
    url: str | None = None,
    *,
    audio_format: str | None = None,
    settings: Settings | None = None,
    extra_headers: Mapping[str, str] | None = None,
    transcripts: Callable[[str], list[str]] | None = None,
) -> ReplayOutcome:
    """Load (if need be), play and evaluate one scenario; see the module docstring."""
    loaded = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    if url is None:
        from .target import local_gateway

        async with local_gateway(audio_format, settings) as target:
            report = await run_scenario(loaded, target.ws_url, extra_headers=extra_headers)
            said = target.transcripts(report.call_sid)
    else:
        report = await run_scenario(loaded, url, extra_headers=extra_headers)
        said = transcripts(report.call_sid) if transcripts is not None else None
    return ReplayOutcome(loaded, report, evaluate(loaded, report, said), said)
