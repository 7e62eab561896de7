"""The call-replay harness: a Twilio-faithful phone that calls a gateway and measures what a caller lives.

Scenarios (TOML: the caller's script and what must hold) are in :mod:`.scenario`, their checks in
:mod:`.expectations`, recorded calls in :mod:`.recording`, the pytest helper in :mod:`.testing`.
"""

from .dial import DialError, TwilioAccount
from .expectations import ExpectationResult, evaluate
from .phone import CallerTurn, Phone, run_call
from gateway.twilio.playback import ClearRecord, MarkRecord, PlaybackRun
from .report import CallReport, TurnReport, Violation
from .scenario import Scenario, ScenarioError, load_scenario, run_scenario
from gateway.audio.wavio import load_sample, read_wav, sample_names, to_mulaw_8k, write_wav

__all__ = [
    "CallReport",
    "CallerTurn",
    "ClearRecord",
    "DialError",
    "ExpectationResult",
    "MarkRecord",
    "Phone",
    "PlaybackRun",
    "Scenario",
    "ScenarioError",
    "TurnReport",
    "TwilioAccount",
    "Violation",
    "evaluate",
    "load_sample",
    "load_scenario",
    "read_wav",
    "run_call",
    "run_scenario",
    "sample_names",
    "to_mulaw_8k",
    "write_wav",
]
